"""The whole workflow at MHIST's size: each stage's wall time, peak memory and throughput.

3,152 demo images of 224 px as a folder dataset (MHIST's label format), run end to end with
`snakemake --cores 2`, every stage at MHIST's image count but with one epoch per network and
one noisy copy per CAM (the per-image and per-step costs are the paper's; only the repeat
counts are cut to fit a CPU). Reads Snakemake's own `benchmark:` files (wall time, peak RSS of
each job) and the training logs (images/s, share of the loop spent waiting for data), then
times `snakemake -n` and a no-op `snakemake` on the complete results.
Usage: python benchmarks/mhist_scale.py [N]   (default 3152)
"""

from __future__ import annotations

import re
import shutil
import sys

import pandas as pd

from common import MHIST_SIZE, WORK, dataset, folder_config, job_count, report, snakemake

CUT = {
    "classifier": {"epochs": 1},
    "cam": {"n_samples": 1},
    "segmentation": {"epochs": 1, "positive_only_epochs": 0, "negative_ramp_epochs": 1},
}
CLOCK = re.compile(r"train ([\d.]+) images/s, ([\d.]+) % waiting for data")


def stage_table(results) -> list[dict]:
    """Per rule: jobs, summed and longest wall time, peak RSS (MB) over its jobs."""
    rows = []
    for tsv in sorted((results / "benchmarks").rglob("*.tsv")):
        rule = tsv.parent.name if tsv.parent.name != "benchmarks" else tsv.stem
        bench = pd.read_csv(tsv, sep="\t").iloc[0]
        rows.append({"rule": rule, "s": float(bench["s"]), "max_rss_mb": float(bench["max_rss"])})
    table = pd.DataFrame(rows).groupby("rule", sort=False)
    out = table.agg(jobs=("s", "size"), job_s_sum=("s", "sum"), job_s_max=("s", "max"))
    out["peak_rss_mb"] = table["max_rss_mb"].max()
    return out.round(1).reset_index().to_dict("records")


def training_clock(results, rule: str) -> dict:
    text = (results / "logs" / f"{rule}.log").read_text()
    rate, wait = CLOCK.findall(text)[-1]
    return {"train_images_per_s": float(rate), "data_wait_percent": float(wait)}


def main(n_images: int) -> None:
    data = dataset(n_images)
    workdir = WORK / f"mhist_scale_{n_images}"
    shutil.rmtree(workdir, ignore_errors=True)
    config = folder_config(data, **CUT)
    total_s, out = snakemake(workdir, config, "--cores", "2")
    results = workdir / "results"
    rows = stage_table(results)
    for row in rows:
        if row["rule"] in ("train_classifier", "train_segmentation"):
            row |= training_clock(results, row["rule"])
    dry_s, dry = snakemake(workdir, config, "-n")
    noop_s, noop = snakemake(workdir, config, "--cores", "2")
    if job_count(dry) or job_count(noop):
        raise RuntimeError(f"the rerun was not a no-op:\n{noop[-3000:]}")
    notes = {
        "images": n_images,
        "settings": CUT,
        "end_to_end_s": round(total_s, 1),
        "noop_dry_run_s": round(dry_s, 2),
        "noop_run_s": round(noop_s, 2),
    }
    report("mhist_scale", rows, notes)
    print(notes)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else MHIST_SIZE)
