"""Shared by the benchmark scripts: synthetic datasets, snakemake runs, timing, result files."""

from __future__ import annotations

import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import yaml

os.environ.setdefault("TQDM_DISABLE", "1")  # before tqdm is imported: no progress bars here
from histo_wsss.demo import COLUMNS, DemoSpec, generate

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = Path(sys.executable).with_name("snakemake")
WORK = Path(os.environ.get("HISTO_WSSS_BENCH_DIR", "/tmp/histo_wsss_bench"))
RESULTS = REPO / "benchmarks" / "results"
MHIST_SIZE = 3152
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "NO_ALBUMENTATIONS_UPDATE": "1", "MPLBACKEND": "Agg"}


def machine() -> dict:
    """What the figures were measured on."""
    import torch

    return {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "load_average_at_start": round(os.getloadavg()[0], 2),
    }


def dataset(n_images: int, distinct: int = MHIST_SIZE, size: int = 224) -> Path:
    """A folder dataset (MHIST's label format) of ``n_images`` demo images of ``size`` px, made
    once under :data:`WORK`. Past ``distinct`` rendered images the files are hard links to the
    rendered ones (new names, same pixels): enough for what only counts files."""
    root = WORK / f"data_{n_images}_{size}"
    if (root / "labels.csv").is_file():
        return root
    rendered = WORK / f"data_{min(n_images, distinct)}_{size}"
    if not (rendered / "labels.csv").is_file():
        print(f"rendering {min(n_images, distinct)} demo images of {size} px ...", flush=True)
        generate(DemoSpec(n_images=min(n_images, distinct), size=size, seed=0), rendered)
    if rendered != root:
        table = pd.read_csv(rendered / "labels.csv")
        rows = []
        for i in range(n_images):
            row = table.iloc[i % len(table)].copy()
            name = row[COLUMNS[0]] if i < len(table) else f"copy_{i:06d}.png"
            for kind in ("images", "masks"):
                target = root / kind / name
                target.parent.mkdir(parents=True, exist_ok=True)
                os.link(rendered / kind / row[COLUMNS[0]], target)
            row[COLUMNS[0]] = name
            rows.append(row)
        pd.DataFrame(rows).to_csv(root / "labels.csv", index=False)
    return root


def folder_config(data: Path, **sections: dict) -> dict:
    """Config overrides for a folder dataset at ``data``, plus ``sections`` (merged per key)."""
    config = {
        "dataset": {
            "source": "folder",
            "images": str(data / "images"),
            "labels": str(data / "labels.csv"),
            "masks": str(data / "masks"),
        }
    }
    for section, values in sections.items():
        config[section] = {**config.get(section, {}), **values}
    return config


def snakemake(workdir: Path, config: dict, *args: str, repo: Path = REPO) -> tuple[float, str]:
    """Run the Snakefile of ``repo`` (this checkout by default) in ``workdir`` with its demo
    config + ``config``, its jobs importing its own library; return the wall time in seconds and
    the combined output. Raises on failure."""
    workdir.mkdir(parents=True, exist_ok=True)
    override = workdir / "bench_config.yaml"
    override.write_text(yaml.safe_dump(config))
    cmd = [str(SNAKEMAKE), "--snakefile", str(repo / "Snakefile"), "--configfile"]
    cmd += [str(repo / "config" / "config.yaml"), str(override), *args]
    # a job of another checkout would otherwise import this checkout's installed library
    env = {
        **ENV,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(repo / "src"), ENV.get("PYTHONPATH")])),
    }
    start = time.perf_counter()
    result = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    out = result.stdout + result.stderr
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({result.returncode}):\n{out[-6000:]}")
    return seconds, out


def merge(base: dict, over: dict) -> dict:
    """``base`` updated by ``over``, nested sections merged key by key (as snakemake merges
    its config files)."""
    out = dict(base)
    for key, value in over.items():
        out[key] = merge(base.get(key, {}), value) if isinstance(value, dict) else value
    return out


def copy_once(source: Path, folder: Path) -> None:
    """Copy the results folder ``source`` to ``folder`` unless it is there, through a partial
    folder renamed at the end: an interrupted copy is never used.

    Every file of the copy gets one modification time, now: the dataset's files may have been
    touched since ``source`` was made (a fresh copy of ``../shared``), and on modification times
    alone that would rerun the whole copy instead of the rules a variant forces."""
    if folder.exists():
        return
    partial = folder.with_name(f"{folder.name}.copying")
    shutil.rmtree(partial, ignore_errors=True)
    shutil.copytree(source, partial, symlinks=True)
    now = time.time()
    for path in partial.rglob("*"):
        if not path.is_symlink():
            os.utime(path, (now, now))
    partial.rename(folder)


def run_variant(
    folder: Path,
    presets: Sequence[Path],
    overrides: dict,
    cores: int,
    targets: Sequence[str] = (),
    forcerun: Sequence[str] = (),
    log_name: str = "run.log",
) -> float:
    """Run the repo's Snakefile on ``presets`` (config files, in order) + ``overrides`` with its
    results in ``folder``
    (under the repo) to ``targets`` (relative to ``folder``; none: the final outputs); seconds.

    ``forcerun``: rules to rerun in a copied results folder, which has no run records of this
    checkout (everything else then reruns on modification times only). Its output goes to
    ``folder / log_name``; it runs in its own process group, so that an interrupted benchmark
    takes its jobs with it."""
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "variant.yaml"
    config.write_text(yaml.safe_dump({**overrides, "results": str(folder.relative_to(REPO))}))
    cmd = [str(SNAKEMAKE), *(str((folder / t).relative_to(REPO)) for t in targets)]
    cmd += ["--cores", str(cores), "--configfile", *map(str, presets), str(config)]
    if forcerun:
        cmd += ["--rerun-triggers", "mtime", "--forcerun", *forcerun]
    start = time.perf_counter()
    with open(folder / log_name, "a") as log:
        proc = subprocess.Popen(
            cmd, cwd=REPO, env=ENV, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            code = proc.wait()
        except BaseException:
            os.killpg(proc.pid, signal.SIGKILL)
            raise
    if code:
        raise RuntimeError(f"snakemake failed ({code}): {folder / log_name}")
    return time.perf_counter() - start


def job_count(output: str) -> int:
    """The total of snakemake's job-stats table (0 when nothing is to be done)."""
    if "Nothing to be done" in output:
        return 0
    for line in output.split("Job stats:", 1)[1].splitlines():
        if line.startswith("total"):
            return int(line.split()[1])
    raise ValueError(f"no job table in:\n{output[-3000:]}")


def report(name: str, rows: Sequence[dict], notes: dict | None = None) -> None:
    """Print ``rows`` as a table and write them, the machine and ``notes`` to
    ``benchmarks/results/<name>.json``."""
    table = pd.DataFrame(rows)
    print(table.to_markdown(index=False, floatfmt=".3g"))
    RESULTS.mkdir(parents=True, exist_ok=True)
    payload = {"benchmark": name, "machine": machine(), "rows": rows, **(notes or {})}
    (RESULTS / f"{name}.json").write_text(json.dumps(payload, indent=2, default=str) + "\n")
    print(f"-> {RESULTS / f'{name}.json'}")
