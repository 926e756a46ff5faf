"""Seed 004's tables for a K-class preset: stage 1 (pseudo-masks) and stage 2 (segmentation).

Runs the real Snakefile on a preset to its final outputs (results in the preset's own folder),
then its supervised upper bound in a copy of that folder (``<results>_upper``: the same run
with ``segmentation.targets: ground_truth``, only the segmentation and what follows rerun), and
prints, per class, the IoU against the real masks on the test split, then the fwIoU and mIoU,
pooled over the whole test images:

- stage 1: the trivial baselines (``segmentation/evaluation.json``, ``test.truth.baselines``)
  and the pseudo-masks at the preset's ``pseudo_masks.final_step``
  (``pseudo_masks/class_scores.csv`` and ``quality_summary.csv``, split ``test``);
- stage 2: the baselines, the segmentation on the pseudo-masks and the upper bound
  (``test.truth`` of each run's ``evaluation.json``).

Usage: python benchmarks/k_class_tables.py CONFIG [CONFIG ...] [--cores N] [--tables-only]
  e.g. config/wsss4luad.yaml, or config/config.yaml config/demo_multiclass.yaml (in order, as
  snakemake's --configfile takes them). ``--tables-only`` reads finished runs, running nothing.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd
import yaml

from common import REPO, copy_once, merge, report, run_variant

UPPER = {"segmentation": {"targets": "ground_truth"}}


def merged(configs: list[Path]) -> dict:
    """The config files merged in order, as snakemake's --configfile merges them."""
    config: dict = {}
    for path in configs:
        config = merge(config, yaml.safe_load(path.read_text()))
    return config


def run(folder: Path, configs: list[Path], overrides: dict, cores: int, copy_of=None) -> float:
    """One run to the final outputs (a copy of ``copy_of`` rerunning the segmentation)."""
    forcerun = ()
    if copy_of is not None:
        copy_once(copy_of, folder)
        forcerun = ("train_segmentation",)
    return run_variant(
        folder, configs, overrides, cores, forcerun=forcerun, log_name="k_class_tables.log"
    )


def _row(stage: str, method: str, ious: dict, classes: list[str], scores: dict) -> dict:
    return {"stage": stage, "method": method, **{c: ious[c] for c in classes}} | {
        "fwIoU": scores["fwiou"],
        "mIoU": scores["miou"],
    }


def stage_rows(folder: Path, upper: Path, classes: list[str], final_step: str) -> list[dict]:
    """The rows of both stages' tables (test split, vs the real masks)."""

    def test_truth(run_folder: Path) -> dict:
        summary = json.loads((run_folder / "segmentation" / "evaluation.json").read_text())
        return summary["test"]["truth"]

    baselines = [
        (name.replace("_", " "), scores["classes"], scores)
        for name, scores in test_truth(folder)["baselines"].items()
    ]
    pseudo = pd.read_csv(folder / "pseudo_masks" / "class_scores.csv")
    pseudo = pseudo[(pseudo["split"] == "test") & (pseudo["step"] == final_step)]
    quality = pd.read_csv(folder / "pseudo_masks" / "quality_summary.csv")
    quality = quality[(quality["split"] == "test") & (quality["step"] == final_step)]
    stage1 = [
        *baselines,
        (
            f"CAM pseudo-masks ({final_step})",
            dict(zip(pseudo["class"], pseudo["iou"], strict=True)),
            quality.iloc[0].to_dict(),
        ),
    ]
    stage2 = [*baselines]
    for run_folder, method in (
        (folder, "segmentation on the pseudo-masks"),
        (upper, "supervised upper bound (real masks)"),
    ):
        truth = test_truth(run_folder)
        stage2.append((method, {c: truth["classes"][c]["iou"] for c in classes}, truth))
    return [
        _row(stage, method, ious, classes, scores)
        for stage, methods in (("1 pseudo-masks", stage1), ("2 segmentation", stage2))
        for method, ious, scores in methods
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("configs", nargs="+", type=Path)
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--tables-only", action="store_true")
    args = parser.parse_args()
    configs = [p.resolve() for p in args.configs]
    config = merged(configs)
    folder = REPO / config["results"]
    upper = folder.with_name(f"{folder.name}_upper")
    seconds = {}
    if not args.tables_only:
        seconds["run_s"] = round(run(folder, configs, {}, args.cores), 1)
        seconds["upper_bound_s"] = round(run(upper, configs, UPPER, args.cores, folder), 1)
    classes = config["dataset"]["classes"]
    rows = stage_rows(folder, upper, classes, config["pseudo_masks"]["final_step"])
    name = f"k_class_tables_{folder.name}"
    report(name, rows, {"configs": [str(p.relative_to(REPO)) for p in configs], **seconds})


if __name__ == "__main__":
    main()
