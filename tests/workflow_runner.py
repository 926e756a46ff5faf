"""Run the real Snakefile with snakemake in a scratch folder (shared by the workflow tests)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = Path(sys.executable).with_name("snakemake")
TINY = {
    "demo": {"n_images": 24, "size": 96},
    "stain": {"shards": 2},
    "classifier": {"epochs": 2, "batch_size": 8},
    "cam": {"n_samples": 2, "shards": 2},
    "pseudo_masks": {"shards": 3},
    "segmentation": {
        "epochs": 2,
        "batch_size": 4,
        "positive_only_epochs": 1,
        "negative_ramp_epochs": 2,
    },
}


def unprivileged() -> list[str]:
    """A command prefix under which folder permissions apply: root (whom none stops otherwise)
    loses the capability to override them (util-linux's setpriv); nothing for other users."""
    if os.geteuid() != 0:
        return []
    return ["setpriv", "--bounding-set", "-dac_override", "--inh-caps", "-dac_override"]


def snakemake(
    workdir: Path,
    *args: str,
    config: dict | None = None,
    check: bool = True,
    base: Path | Sequence[Path] = REPO / "config" / "config.yaml",
    repo: Path = REPO,
    prefix: Sequence[str] = (),
):
    """Run snakemake on the Snakefile of ``repo`` (this checkout by default) in ``workdir`` with
    the ``base`` config file(s) (the demo's by default) + ``config``, under the command
    ``prefix``."""
    workdir.mkdir(parents=True, exist_ok=True)
    override = workdir / "test_config.yaml"
    override.write_text(yaml.safe_dump(config if config is not None else TINY))
    cmd = [
        *prefix,
        str(SNAKEMAKE),
        "--snakefile",
        str(repo / "Snakefile"),
        "--configfile",
        *map(str, [base] if isinstance(base, Path) else base),
        str(override),
        *args,
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "NO_ALBUMENTATIONS_UPDATE": "1"}
    result = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(
            f"snakemake {' '.join(args)} failed ({result.returncode}):\n"
            f"{result.stdout[-4000:]}\n{result.stderr[-8000:]}"
        )
    return result


def planned_jobs(workdir: Path, config: dict | None = None, *targets: str) -> dict[str, int]:
    """``{rule: job count}`` that ``snakemake -n [targets]`` plans in ``workdir`` (``{}``:
    nothing to do)."""
    result = snakemake(workdir, "-n", *targets, config=config)
    out = result.stdout + result.stderr
    if "Nothing to be done" in out:
        return {}
    jobs = {}
    for line in out.split("Job stats:", 1)[1].splitlines()[3:]:
        rule, count = line.split()
        if rule == "total":
            return jobs
        jobs[rule] = int(count)
    raise AssertionError(f"no job table in:\n{out[-4000:]}")
