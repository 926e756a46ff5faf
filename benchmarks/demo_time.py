"""The demo's run time against an earlier commit's, measured side by side on this machine.

A run time said in the README holds for the machine it was measured on: this benchmark tells a
slower machine from a slower workflow. Each checkout (this one and ``REV``, the latter a
detached git worktree under the benchmark folder) runs its own demo (its config/config.yaml +
the same overrides) in a fresh folder, one after the other, with its own library on the
PYTHONPATH (a job of an older commit would otherwise import this checkout's installed
library). Then per rule the summed job wall times (``benchmarks/*.tsv``), per training the mean
epoch time (the ``seconds`` column of ``metrics.csv``), and the whole run, side by side.

Usage: python benchmarks/demo_time.py REV [--n-images N] [--classifier-epochs E]
       [--segmentation-epochs E] [--cores C]   (defaults: the demo's own settings, 2 cores)
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
from pathlib import Path

import pandas as pd

from common import REPO, WORK, report, snakemake

TRAININGS = ("classifier", "segmentation")


def checkout(rev: str) -> Path:
    """A detached worktree of ``rev`` (made once)."""
    sha = subprocess.run(
        ["git", "rev-parse", "--short", rev], cwd=REPO, check=True, capture_output=True, text=True
    ).stdout.strip()
    path = WORK / f"demo_time_{sha}"
    if not (path / "Snakefile").is_file():
        subprocess.run(
            ["git", "worktree", "add", "--detach", "--force", str(path), sha], cwd=REPO, check=True
        )
    return path


def run_demo(repo: Path, workdir: Path, overrides: dict, cores: int) -> float:
    """``repo``'s demo in a fresh ``workdir`` with its own library; wall seconds (its output in
    ``workdir / snakemake.log``)."""
    shutil.rmtree(workdir, ignore_errors=True)
    seconds, out = snakemake(workdir, overrides, "--cores", str(cores), repo=repo)
    (workdir / "snakemake.log").write_text(out)
    return seconds


def job_seconds(results: Path) -> dict[str, float]:
    """Summed wall seconds of each rule's jobs (their benchmark files)."""
    totals: dict[str, float] = {}
    for tsv in (results / "benchmarks").rglob("*.tsv"):
        rule = tsv.relative_to(results / "benchmarks").parts[0].removesuffix(".tsv")
        totals[rule] = totals.get(rule, 0.0) + float(pd.read_csv(tsv, sep="\t")["s"].iloc[0])
    return totals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("rev")
    parser.add_argument("--n-images", type=int)
    parser.add_argument("--classifier-epochs", type=int)
    parser.add_argument("--segmentation-epochs", type=int)
    parser.add_argument("--cores", type=int, default=2)
    args = parser.parse_args()
    overrides: dict = {}
    if args.n_images:
        overrides["demo"] = {"n_images": args.n_images}
    for section, epochs in zip(
        TRAININGS, (args.classifier_epochs, args.segmentation_epochs), strict=True
    ):
        if epochs:
            overrides[section] = {"epochs": epochs}
    runs = {args.rev: checkout(args.rev), "this checkout": REPO}
    walls, jobs, epochs = {}, {}, {}
    for label, repo in runs.items():
        workdir = WORK / "demo_time" / ("rev" if repo != REPO else "head")
        print(f"{label}: the demo in {workdir} ...", flush=True)
        walls[label] = run_demo(repo, workdir, overrides, args.cores)
        jobs[label] = job_seconds(workdir / "results")
        epochs[label] = {
            t: pd.read_csv(workdir / "results" / t / "metrics.csv")["seconds"].mean()
            for t in TRAININGS
        }
    old, new = runs
    rows = [
        {"what": f"{t} epoch, mean s", old: epochs[old][t], new: epochs[new][t]} for t in TRAININGS
    ]
    for rule in sorted(set(jobs[old]) | set(jobs[new]), key=lambda r: -jobs[new].get(r, 0)):
        rows.append({"what": f"{rule} jobs, s", old: jobs[old].get(rule), new: jobs[new].get(rule)})
    rows.append({"what": "whole demo, wall s", old: walls[old], new: walls[new]})
    for row in rows:
        row["ratio"] = row[new] / row[old] if row[old] and row[new] else None
    report("demo_time", rows, {"rev": args.rev, "overrides": overrides, "cores": args.cores})


if __name__ == "__main__":
    main()
