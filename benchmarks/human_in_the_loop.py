"""The gain of review rounds on GlaS: corrections chosen by the review queue vs at random.

GlaS's real masks stand in for the pathologist. From a finished run of ``config/glas.yaml``
(its pseudo-masks, classifier and review queue), each *arm* runs review rounds the way a user
does (README, "Review round"): the round's images get their real mask as a PNG correction in
the arm's ``corrections.folder``, and the real Snakefile reruns the segmentation and what
follows (the classifier, CAMs and pseudo-masks are not rerun). Rounds grow the corrected share
of the train images to each of ``--shares`` (10, 25, 50 %):

* ``queue``: a round corrects the first uncorrected images of the review queue of the arm's
  latest model (``review/queue.csv``; corrected images are ranked last there);
* ``random``: a round corrects images drawn at random (seeded) from the uncorrected ones;
* ``automated``: no corrections, the segmentation retrained with the same settings (0 %);
* ``supervised``: every train image on its real mask (``targets: ground_truth``, 100 %).

Every retraining starts from the same initialisation as the preset's (the encoder from the
classifier) with ``--epochs`` epochs (the preset trains 60; fewer here so that a round costs
minutes on 2 CPU cores: the automated arm is retrained with the same number, so every row is
comparable). Scores: IoU and Dice against the real masks on the test split's positive images
(``segmentation/evaluation.json``: ``test.truth.positive_mean``), the benchmark's purpose being
the curve on held-out images (seed 002's table); nothing here tunes a setting.

    python benchmarks/human_in_the_loop.py --base results/glas_ablation_classifier \
        [--epochs 20] [--seeds 0 1 2] [--cores 2]

Each arm works in its own copy of ``--base`` under ``results/hitl/``; the table goes to
``benchmarks/results/human_in_the_loop.json`` and the plot to
``docs/figures/human_in_the_loop.png`` (``--plot-only`` redraws it from the saved table).
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from common import REPO, RESULTS, report, run_variant

PRESET = REPO / "config" / "glas.yaml"
MASKS = REPO.parent / "shared" / "data" / "glas-train" / "masks"
TARGETS = ("segmentation/evaluation.json", "review/queue.csv")
ARMS = ("automated", "queue", "random", "supervised")
FIGURE = REPO / "docs" / "figures" / "human_in_the_loop.png"


def round_sizes(n_train: int, shares: list[float]) -> list[int]:
    """The corrected count after each round: ``round(share * n_train)``, at least one more than
    the round before."""
    sizes, last = [], 0
    for share in shares:
        last = max(last + 1, round(share * n_train))
        sizes.append(min(last, n_train))
    return sizes


def retrain(folder: Path, overrides: dict, cores: int) -> float:
    """Rerun the segmentation of ``folder`` (and what follows) with ``overrides``; seconds.
    The corrections' targets are forced too: the folder's digest is what changed."""
    forcerun = ("corrections", "train_segmentation")
    return run_variant(folder, [PRESET], overrides, cores, TARGETS, forcerun, "hitl.log")


def test_scores(folder: Path) -> dict:
    """IoU and Dice vs the real masks, test positives (means)."""
    summary = json.loads((folder / "segmentation" / "evaluation.json").read_text())
    test = summary["test"]["truth"]["positive_mean"]
    return {"test_iou_vs_truth": test["iou"], "test_dice_vs_truth": test["dice"]}


def pick(folder: Path, arm: str, k: int, corrected: set[str], train: list[str], rng) -> list[str]:
    """The ``k`` images an arm corrects next."""
    if arm == "queue":
        queue = pd.read_csv(folder / "review" / "queue.csv", dtype={"name": str})
        return [n for n in queue["name"] if n not in corrected][:k]
    rest = sorted(set(train) - corrected)
    return sorted(rng.choice(rest, size=k, replace=False).tolist())


def arm_folder(arm: str, seed: int) -> Path:
    return REPO / "results" / "hitl" / f"{arm}_seed{seed}"


def run_arm(arm: str, seed: int, args, sizes: list[int], train: list[str]) -> list[dict]:
    """One arm's rounds, each a row of the table. ``automated`` and ``supervised`` start from a
    copy of ``--base``; ``queue`` and ``random`` from a copy of the automated arm's folder (its
    model gives the first round's queue)."""
    folder = arm_folder(arm, seed)
    source = arm_folder("automated", seed) if arm in ("queue", "random") else args.base
    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(source, folder, symlinks=True)
    corrections = folder / "corrections_in"
    shutil.rmtree(corrections, ignore_errors=True)
    corrections.mkdir()
    segmentation = {"epochs": args.epochs, "seed": seed}
    if arm == "supervised":
        segmentation["targets"] = "ground_truth"
    overrides = {"segmentation": segmentation, "corrections": {"folder": str(corrections)}}
    plan = {"automated": [0], "supervised": [len(train)]}.get(arm, sizes)
    rows, corrected = [], set()
    rng = np.random.default_rng(seed)
    for size in plan:
        if arm in ("queue", "random"):
            for name in pick(folder, arm, size - len(corrected), corrected, train, rng):
                shutil.copyfile(MASKS / f"{name}.png", corrections / f"{name}.png")
                corrected.add(name)
        seconds = retrain(folder, overrides, args.cores)
        row = {"arm": arm, "seed": seed, "corrected": size, "share": size / len(train)}
        rows.append({**row, **test_scores(folder), "seconds": round(seconds)})
        print(rows[-1], flush=True)
    return rows


def plot(table: pd.DataFrame, path: Path) -> None:
    """Test IoU vs the corrected share: queue and random (mean and spread over seeds), with the
    automated (0 %) and supervised (100 %) runs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    auto = table[table["arm"] == "automated"]["test_iou_vs_truth"].mean()
    for arm, color in (("queue", "tab:blue"), ("random", "tab:orange")):
        part = table[table["arm"] == arm].groupby("share")["test_iou_vs_truth"]
        mean, low, high = part.mean(), part.min(), part.max()
        shares = [0.0, *mean.index]
        ax.plot([100 * s for s in shares], [auto, *mean], "o-", color=color, label=arm)
        ax.fill_between([100 * s for s in mean.index], low, high, color=color, alpha=0.2)
    sup = table[table["arm"] == "supervised"]["test_iou_vs_truth"].mean()
    ax.axhline(sup, color="k", ls="--", lw=1, label="supervised (100 %)")
    ax.axhline(auto, color="grey", ls=":", lw=1, label="automated (0 %)")
    ax.set_xlabel("train images corrected (%)")
    ax.set_ylabel("test IoU vs real masks (positives, mean)")
    seeds, epochs = table["seed"].nunique(), table.attrs.get("epochs", "?")
    ax.set_title(
        f"GlaS review rounds: queue vs random ({seeds} seed(s), {epochs} epochs a retraining)",
        fontsize=9,
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", type=Path, help="a finished glas.yaml run (required to run)")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--shares", type=float, nargs="+", default=[0.1, 0.25, 0.5])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS)
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument(
        "--plot-only", action="store_true", help="redraw the plot from the saved results"
    )
    args = parser.parse_args()
    saved = RESULTS / "human_in_the_loop.json"
    if args.plot_only:
        payload = json.loads(saved.read_text())
        table = pd.DataFrame(payload["rows"])
        table.attrs["epochs"] = payload["epochs"]
        plot(table, FIGURE)
        print(table.to_markdown(index=False, floatfmt=".3f"))
        return
    if args.base is None:
        parser.error("--base is required to run the rounds")
    args.base = args.base.resolve()
    split = pd.read_csv(args.base / "split" / "split.csv", dtype={"name": str})
    train = sorted(split.loc[split["split"] == "train", "name"])
    sizes = round_sizes(len(train), args.shares)
    rows = []
    for seed in args.seeds:
        for arm in sorted(args.arms, key=ARMS.index):  # automated first: the others copy it
            rows.extend(run_arm(arm, seed, args, sizes, train))
    table = pd.DataFrame(rows)
    table.attrs["epochs"] = args.epochs
    plot(table, FIGURE)
    notes = {"base": str(args.base), "epochs": args.epochs, "train_images": len(train)}
    report("human_in_the_loop", rows, notes)


if __name__ == "__main__":
    main()
