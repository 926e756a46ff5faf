"""The GlaS ablations of docs/results.md: encoder initialisation, weak vs supervised targets.

Runs the real Snakefile on a GlaS preset and variants of it, each in its own results folder,
then prints one markdown table per stage (classifier, pseudo-masks, segmentation) with the
all-positive baseline and the supervised upper bound beside the weakly supervised scores.

``--preset glas`` (``config/glas.yaml``, malignant glands; folders ``results/glas_ablation_*``):
  classifier  the preset: classifier from random weights, segmentation encoder from it
  random      segmentation encoder from random weights (classifier, CAMs, masks as the preset)
  long        the preset's segmentation trained up to 100 epochs instead of 60
  lumens_background  the tissue mask of sessions 6-10 (``tissue_hole_px: 64``): gland lumens
              are non-tissue, hence background in the pseudo-masks
  band        lumens_background with an unlabelled band (``background_quantile: 0.1``): the
              CAMs' middle band and the lumens left out of the loss instead
  pretrained  SimCLR on the dataset's train+val images, then classifier and encoder from it
  windows     window CAMs (``cam.window_size: 128``, the patch size; Grad-CAM++)
``--preset glas_glands`` (``config/glas_glands.yaml``, every gland, the field's protocol;
folders ``results/glas_glands_ablation_*``):
  classifier  the preset: patches every 32 px, window CAMs outside the untagged patches
  seed1       the preset with classifier and segmentation seed 1 (another classifier run)
  epochs6     6 classifier epochs instead of 15: about the steps of stride 64 (936, not 855)
  mining      the masks' loss a per-pixel BCE weighted by online easy example mining
  stride64    the preset of sessions 13-14: patches side by side (stride 64); the variants
              of sessions 12-14 below are made from it, so that their rows stay reproducible
  whole_images  stride64 before session 13: whole-image Smooth Grad-CAM++ (``layer3``), the
              untagged patches' CAMs kept; lumens, unet, windows, negatives are made from it
  lumens      gland lumens in the tissue (``tissue_hole_px: 16384``, as config/glas.yaml)
  unet        smp's U-Net instead of DeepLabV3+ (encoder from the classifier alike)
  windows     window CAMs (``cam.window_size: 64``, the patch size; Grad-CAM++)
  negatives   the untagged patches background (``negative_patches_background: true``)
  quantile04  stride64's pseudo-masks cut at the 0.4 quantile instead of 0.5
  band        an unlabelled band: ``background_quantile: 0.25``
  layer2      window CAMs from ``layer2`` instead of ``layer3``
  pixel_bce   the masks' loss a per-pixel BCE alone (no Dice, no Lovasz)
  oeem        that BCE weighted by online easy example mining (``easy_example_mining``)
  oeem_seed1  oeem with another segmentation seed
  oeem_dice_lovasz  stride64's Dice and Lovasz plus that mined BCE
Each variant also trains the segmentation network on the real masks (``<variant>_upper``,
``targets: ground_truth``): the supervised upper bound with the same initialisation. Variants
that share everything upstream of the segmentation copy the finished folder and force only the
CAMs, pseudo-masks, ``train_segmentation`` and what follows them, instead of retraining the
classifier.

Figures come from train and val only, unless ``--split test`` (look at the test split once, at
the end: docs/results.md).

    python benchmarks/glas_ablation.py [--preset glas] [--runs classifier random_upper ...] \
        [--split val]

``--runs`` with no names only tabulates the finished runs.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from common import REPO, copy_once, merge, report, run_variant

# Window CAMs of the classifier's patch size (Grad-CAM++: the noise of Smooth Grad-CAM++ costs
# twice as much per window) and the untagged patches as background (docs/pseudo_masks.md).
WINDOWS = {"method": "gradcam++", "window_stride": None}
NEGATIVES = {"pseudo_masks": {"negative_patches_background": True}}
# config/glas_glands.yaml of sessions 13-14: patches side by side; the variants of sessions 12-14
# are made from it
STRIDE64 = {"patches": {"stride": 64}}
# stride64 before session 13: whole-image Smooth Grad-CAM++, no untagged patches; its variants
# of sessions 12-13 are made from it, so that their rows stay reproducible
WHOLE_IMAGES = STRIDE64 | {
    "cam": {"method": "smoothgradcam++", "window_size": None, "layers": ["layer3"]},
    "pseudo_masks": {"negative_patches_background": False},
}
# the masks' loss a per-pixel BCE alone, plain or weighted by online easy example mining
PIXEL_BCE = {"pixel_bce_weight": 1.0, "dice_weight": 0.0, "lovasz_weight": 0.0}
OEEM = PIXEL_BCE | {"easy_example_mining": True}
# preset -> variant -> (variant it copies its upstream from, or None; overrides of the preset)
VARIANTS = {
    "glas": {
        "classifier": (None, {}),
        "random": ("classifier", {"segmentation": {"encoder_weights": None}}),
        "long": ("classifier", {"segmentation": {"epochs": 100}}),
        "lumens_background": (None, {"stain": {"tissue_hole_px": 64}}),
        "band": (
            "lumens_background",
            {"stain": {"tissue_hole_px": 64}, "pseudo_masks": {"background_quantile": 0.1}},
        ),
        "pretrained": (
            None,
            {
                "classifier": {"weights": "pretrained"},
                "segmentation": {"encoder_weights": "pretrained"},
            },
        ),
        "windows": ("classifier", {"cam": WINDOWS | {"window_size": 128}}),
    },
    "glas_glands": {
        "classifier": (None, {}),
        "seed1": (None, {"classifier": {"seed": 1}, "segmentation": {"seed": 1}}),
        "epochs6": (None, {"classifier": {"epochs": 6}}),
        "mining": ("classifier", {"segmentation": OEEM}),
        "stride64": (None, STRIDE64),
        "whole_images": ("stride64", WHOLE_IMAGES),
        "lumens": (None, merge(WHOLE_IMAGES, {"stain": {"tissue_hole_px": 16384}})),
        "unet": ("stride64", merge(WHOLE_IMAGES, {"segmentation": {"arch": "Unet"}})),
        "windows": ("stride64", merge(WHOLE_IMAGES, {"cam": WINDOWS | {"window_size": 64}})),
        "negatives": ("stride64", merge(WHOLE_IMAGES, NEGATIVES)),
        "quantile04": ("stride64", STRIDE64 | {"pseudo_masks": {"quantile": 0.4}}),
        "band": ("stride64", STRIDE64 | {"pseudo_masks": {"background_quantile": 0.25}}),
        "layer2": ("stride64", STRIDE64 | {"cam": {"layers": ["layer2"]}}),
        "pixel_bce": ("stride64", STRIDE64 | {"segmentation": PIXEL_BCE}),
        "oeem": ("stride64", STRIDE64 | {"segmentation": OEEM}),
        "oeem_seed1": ("stride64", STRIDE64 | {"segmentation": OEEM | {"seed": 1}}),
        "oeem_dice_lovasz": (
            "stride64",
            STRIDE64 | {"segmentation": {"pixel_bce_weight": 1.0, "easy_example_mining": True}},
        ),
    },
}
UPPER = {"segmentation": {"targets": "ground_truth"}}
STEPS = ("threshold", "morphology", "small_objects", "crf")


def folder(preset: str, name: str) -> Path:
    return REPO / "results" / f"{preset}_ablation_{name}"


def run(preset: str, name: str, copy_from: str | None, overrides: dict, cores: int) -> float:
    """Run one variant to the end; return its wall time in seconds."""
    out = folder(preset, name)
    forcerun = ()
    if copy_from is not None:
        copy_once(folder(preset, copy_from), out)
        # a copy reruns the CAMs and pseudo-masks (a minute or two; a folder made by older code
        # may hold their files in an older form) and the segmentation, not the classifier
        forcerun = ("cams", "pseudo_masks", "train_segmentation")
    config = REPO / "config" / f"{preset}.yaml"
    return run_variant(out, [config], overrides, cores, forcerun=forcerun, log_name="ablation.log")


def read(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def stage_rows(preset: str, name: str, split: str) -> dict:
    """This variant's figures on ``split`` (positives' means unless pooled; docs/results.md)."""
    out, upper = folder(preset, name), folder(preset, f"{name}_upper")
    clf = read(out / "classifier" / "evaluation.json").get(split, {})
    cam = read(out / "cam" / "summary.json").get("peak_in_mask", {}).get(split) or {}
    curve = pd.read_csv(out / "classifier" / "metrics.csv")
    quality = pd.read_csv(out / "pseudo_masks" / "quality.csv")
    quality = quality[(quality["positive"] == 1) & (quality["split"] == split)]
    seg = read(out / "segmentation" / "evaluation.json").get(split, {})
    truth = seg.get("truth", {})
    sup = read(upper / "segmentation" / "evaluation.json").get(split, {}).get("truth", {})
    return {
        "classifier": {
            "accuracy": clf.get("accuracy"),
            "AUC": clf.get("auc"),
            # the presets select the epoch by this AUC, on the val crops or patches
            "training's val AUC, selected epoch": curve["val_auc"].max(),
            "CAM peak in mask": cam.get("share"),
        },
        "pseudo-masks": {f"IoU {s}": quality[f"{s}_iou"].mean() for s in STEPS},
        "segmentation": {
            "IoU vs real masks": truth.get("positive_mean", {}).get("iou"),
            "Dice vs real masks": truth.get("positive_mean", {}).get("dice"),
            "mIoU vs real masks, pooled": truth.get("pooled", {}).get("miou"),
            "negatives with positive pixels": seg.get("negative_images_with_positive_pixels"),
            "all-positive IoU": truth.get("all_positive_baseline", {}).get("iou"),
            "upper bound IoU": sup.get("positive_mean", {}).get("iou"),
            "upper bound Dice": sup.get("positive_mean", {}).get("dice"),
            "upper bound mIoU, pooled": sup.get("pooled", {}).get("miou"),
        },
    }


def runs(preset: str) -> list[str]:
    """A preset's runs: its variants, then their supervised upper bounds."""
    return [*VARIANTS[preset], *(f"{name}_upper" for name in VARIANTS[preset])]


def plan(preset: str, name: str) -> tuple[str | None, dict]:
    """(variant it copies from, overrides) of a run: a variant, or ``<variant>_upper``, its
    supervised upper bound (a copy of the variant's folder, segmentation on the real masks)."""
    if name.endswith("_upper"):
        variant = name.removesuffix("_upper")
        return variant, merge(VARIANTS[preset][variant][1], UPPER)
    return VARIANTS[preset][name]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="glas", choices=tuple(VARIANTS))
    parser.add_argument("--runs", nargs="*", default=None, help="runs to run (default: all)")
    parser.add_argument("--split", default="val", choices=("train", "val", "test"))
    parser.add_argument("--cores", type=int, default=2)
    args = parser.parse_args()
    chosen = runs(args.preset) if args.runs is None else args.runs
    unknown = sorted(set(chosen) - set(runs(args.preset)))
    if unknown:
        parser.error(f"--runs {unknown}: not runs of --preset {args.preset}: {runs(args.preset)}")
    for name in chosen:
        seconds = run(args.preset, name, *plan(args.preset, name), args.cores)
        print(f"{name}: {seconds / 60:.1f} min", flush=True)
    variants = VARIANTS[args.preset]
    names = [
        n for n in variants if (folder(args.preset, n) / "segmentation/evaluation.json").is_file()
    ]
    rows = {name: stage_rows(args.preset, name, args.split) for name in names}
    for stage in ("classifier", "pseudo-masks", "segmentation"):
        print(f"\n{stage} ({args.split} positives; {args.preset})\n")
        table = [{"variant": name, **rows[name][stage]} for name in names]
        config = f"config/{args.preset}.yaml"
        report(f"{args.preset}_ablation_{args.split}_{stage}", table, {"preset": config})


if __name__ == "__main__":
    main()
