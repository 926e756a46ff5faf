"""DAG scale: `snakemake -n` and a no-op rerun at MHIST's size (3,152 images) and at 30,000.

For each size, on a folder dataset of 224 px demo images (past 3,152 the files are hard links
to rendered ones; the DAG only stats them):
  1. `snakemake -n` with nothing built: the wall time and the job count;
  2. the dataset manifest made for real (a no-op rerun validates only the files that changed
     since it), every other output made to exist and marked up to date with `snakemake
     --touch` (empty placeholders: nothing is computed), then `snakemake -n` and `snakemake
     --cores 2`, which must both find nothing to do: their wall times.
Usage: python benchmarks/dag_scale.py [N ...]   (default: 3152 30000)
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from common import MHIST_SIZE, WORK, dataset, folder_config, job_count, report, snakemake


def placeholders(workdir: Path, config: dict) -> int:
    """Create every planned output (folders for `directory()` outputs, which have no suffix)."""
    _, out = snakemake(workdir, config, "-n", "--summary")
    made = 0
    for line in out.splitlines()[1:]:
        path = line.split("\t")[0]
        if not path.startswith("results/"):
            continue
        target = workdir / path
        if target.exists():
            pass
        elif Path(path).suffix:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.touch()
        else:
            target.mkdir(parents=True, exist_ok=True)
        made += 1
    return made


def measure(n_images: int) -> dict:
    data = dataset(n_images)
    workdir = WORK / f"dag_{n_images}"
    shutil.rmtree(workdir, ignore_errors=True)
    config = folder_config(data)
    dry, out = snakemake(workdir, config, "-n")
    jobs = job_count(out)
    snakemake(workdir, config, "--cores", "1", "results/data/manifest.csv")
    made = placeholders(workdir, config)
    snakemake(workdir, config, "--touch", "--cores", "1")
    noop_dry, out_dry = snakemake(workdir, config, "-n")
    noop, out_run = snakemake(workdir, config, "--cores", "2")
    for out in (out_dry, out_run):
        if job_count(out) != 0:
            raise RuntimeError(f"the rerun was not a no-op:\n{out[-3000:]}")
    return {
        "images": n_images,
        "jobs": jobs,
        "outputs": made,
        "dry_run_s": round(dry, 2),
        "noop_dry_run_s": round(noop_dry, 2),
        "noop_run_s": round(noop, 2),
    }


def main(sizes: list[int]) -> None:
    rows = [measure(n) for n in sizes]
    base = rows[0]
    for row in rows:
        row["images_ratio"] = round(row["images"] / base["images"], 2)
        row["dry_run_ratio"] = round(row["dry_run_s"] / base["dry_run_s"], 2)
        row["noop_run_ratio"] = round(row["noop_run_s"] / base["noop_run_s"], 2)
    report("dag_scale", rows, {"goal": "a few seconds, growing no worse than linearly"})


if __name__ == "__main__":
    main([int(n) for n in sys.argv[1:]] or [MHIST_SIZE, 30_000])
