"""Pseudo-masks for a shard of images, and how good they are against real masks.

Pseudo-mask files are label maps (:meth:`histo_wsss.classes.LabelSpace.write_labels`: K = 1
as 0/255 PNGs, 128 where unlabelled) at the image's own size (the CAMs have it); images without
tags get all-background masks. The pseudo-mask (``masks/``) is the map after the ``final_step``
of the refinement; with ``save_steps`` the map after every step is kept too
(``steps/<step>/<name>.png``), for figures.

Quality against the real masks (label maps at the working scale; pixels unlabelled in either
map left out, so that with ``background_quantile`` the scores are those of the labelled pixels,
and ``<step>_unlabelled`` says what share of the image that leaves out): each image's confusion
matrix over the labels 0..K per step
(:func:`histo_wsss.metrics.label_confusion`), stored as long rows (``confusion.csv``); the
per-image table keeps the foreground-vs-background counts and scores of the binary case
(:func:`histo_wsss.metrics.foreground_counts`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from histo_wsss.classes import IGNORE, LabelSpace
from histo_wsss.io import read_mask, read_rgb
from histo_wsss.logs import progress
from histo_wsss.metrics import (
    CONFUSION_COLUMNS,
    METRICS,
    confusion_rows,
    foreground_counts,
    frequency_weighted_iou,
    image_scores,
    label_confusion,
    label_counts,
    mean_iou,
    pooled_confusion,
    scores_from_counts,
)
from histo_wsss.refine import STEPS, RefineParams, empty_steps, refine
from histo_wsss.splits import SPLITS

COUNTS = ("tp", "fp", "fn", "tn")
WORKFLOW_KEYS = ("save_steps", "shards", "negative_patches_background")
"""Keys of the ``pseudo_masks`` config section that the workflow reads, not the refinement."""
CLASS_SCORES = ("iou", "dice", "precision", "recall")


@dataclass(frozen=True)
class Item:
    """One image's inputs to the refinement: ``tags`` are the indices of its classes (empty:
    no CAM is read, the masks are background); ``truth`` is empty without a real mask;
    ``background`` holds ``(y, x, height, width)`` boxes known to hold no class (its patches
    without a tag, :func:`negative_patch_boxes`): the refinement's ``known_background``."""

    name: str
    image: str
    tissue: str
    cam: str
    tags: tuple[int, ...]
    truth: str = ""
    background: tuple[tuple[int, int, int, int], ...] = ()


def negative_patch_boxes(
    patches: pd.DataFrame, size: int
) -> dict[str, tuple[tuple[int, int, int, int], ...]]:
    """``{source image: boxes}`` of the patches without a tag in a patch table
    (:data:`histo_wsss.patches.COLUMNS`) of ``size`` px patches. With tags from the real masks
    (``patches.tags: mask``) such a patch holds less than ``min_share`` of any class: the
    protocol's own supervision says it is background (``negative_patches_background``)."""
    negative = patches[patches["positive"] == 0]
    return {
        source: tuple((int(y), int(x), size, size) for y, x in rows[["y", "x"]].to_numpy())
        for source, rows in negative.groupby("source", sort=False)
    }


def box_mask(shape: tuple[int, int], boxes: Iterable[tuple[int, int, int, int]]) -> np.ndarray:
    """Boolean ``shape`` mask, True inside every ``(y, x, height, width)`` box."""
    mask = np.zeros(shape, dtype=bool)
    for y, x, height, width in boxes:
        mask[y : y + height, x : x + width] = True
    return mask


def refine_params(section: Mapping) -> RefineParams:
    """The refinement parameters of a ``pseudo_masks`` config section: its keys but
    :data:`WORKFLOW_KEYS`; an unknown or contradicting value is a ``ValueError`` naming it."""
    return RefineParams.from_config({k: v for k, v in section.items() if k not in WORKFLOW_KEYS})


def load_cams(path: str | Path, shape: tuple[int, int], k: int) -> np.ndarray:
    """Read saved CAMs (float16 ``(K, H, W)`` ``.npy``) and check them against the image's size
    and the number of classes."""
    cams = np.load(path).astype(np.float32)
    if cams.ndim != 3 or len(cams) != k:
        raise ValueError(f"{path}: CAMs of shape {cams.shape}, expected ({k}, height, width)")
    if cams.shape[1:] != shape:
        raise ValueError(
            f"{path}: CAM is {cams.shape[2]}x{cams.shape[1]}, image is {shape[1]}x{shape[0]}"
        )
    return cams


def refine_images(
    items: Iterable[Item],
    params: RefineParams,
    out_dir: str | Path,
    save_steps: bool,
    space: LabelSpace,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Refine every item's CAMs; write label maps; return per-image rows and confusion rows.

    Each row has the name, whether the image is positive (has a tag), the foreground's area
    fraction and the unlabelled share after each step, the refinement time, and, for images
    with a real mask, ``<step>_<count>`` foreground pixel counts and ``<step>_<metric>`` scores
    (:func:`histo_wsss.metrics.image_scores`: a negative image's ratios left empty). The
    confusion rows are ``name, step, truth_label, pred_label, pixels``.
    """
    out_dir = Path(out_dir)
    rows, matrices = [], []
    for item in progress(list(items), "pseudo-masks", "img"):
        rgb = read_rgb(item.image)
        start = time.perf_counter()
        if item.tags:
            cams = load_cams(item.cam, rgb.shape[:2], space.k)
            known = box_mask(rgb.shape[:2], item.background)
            steps = refine(rgb, cams, item.tags, params, read_mask(item.tissue), known)
        else:
            steps = empty_steps(rgb.shape[:2])
        row = {"name": item.name, "positive": int(bool(item.tags))}
        row["seconds"] = round(time.perf_counter() - start, 4)
        space.write_labels(out_dir / "masks" / f"{item.name}.png", steps[params.final_step])
        for step in STEPS:
            unlabelled = steps[step] == IGNORE
            row[f"{step}_area"] = round(float(((steps[step] > 0) & ~unlabelled).mean()), 6)
            row[f"{step}_unlabelled"] = round(float(unlabelled.mean()), 6)
            if save_steps:
                space.write_labels(out_dir / "steps" / step / f"{item.name}.png", steps[step])
        if item.truth:
            truth = space.read_labels(item.truth)
            for step in STEPS:
                scored = np.where(steps[step] == IGNORE, IGNORE, truth)
                cm = label_confusion(steps[step], scored, space.k + 1)
                matrices += confusion_rows(cm, name=item.name, step=step)
                counts = dict(zip(COUNTS, foreground_counts(cm), strict=True))
                row.update({f"{step}_{k}": v for k, v in counts.items()})
                quality = image_scores(counts.values(), bool(item.tags))
                row.update({f"{step}_{m}": round(float(v), 6) for m, v in quality.items()})
        rows.append(row)
    # an empty shard (more shards than images) still gets tables with a header
    table = pd.DataFrame(rows, columns=None if rows else ["name", "positive", "seconds"])
    return table, pd.DataFrame(matrices, columns=["name", "step", *CONFUSION_COLUMNS])


def _parts(table: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """The positive images of each split present (``train``, ``val``, ``test``), then ``all``."""
    positives = table[table["positive"] == 1]
    parts = [(s, positives[positives["split"] == s]) for s in SPLITS]
    return [*((s, p) for s, p in parts if len(p)), ("all", positives)]


def quality_summary(table: pd.DataFrame, confusion: pd.DataFrame, n_labels: int) -> pd.DataFrame:
    """Per split (``train``, ``val``, ``test``, then ``all`` of them) and refinement step: the
    mean of the per-image scores and the pooled scores (from summed pixel counts), positive
    images only, and the pooled matrix's ``miou`` and ``fwiou`` over the labels 0..
    ``n_labels - 1`` (:func:`histo_wsss.metrics.mean_iou`, :func:`frequency_weighted_iou`).

    Negative images are left out: their pseudo-masks are empty by construction, so they would
    only add perfect scores. Returns one row per split and step with ``n_images`` and, per
    metric, ``<metric>_mean`` and ``<metric>_pooled``, then ``miou`` and ``fwiou``.
    """
    rows = []
    for split, part in _parts(table):
        for step in STEPS:
            if f"{step}_iou" not in part:
                continue
            row = {"split": split, "step": step, "n_images": len(part)}
            pooled = scores_from_counts(*(part[f"{step}_{k}"].sum() for k in COUNTS))
            for metric in METRICS:
                row[f"{metric}_mean"] = round(float(part[f"{step}_{metric}"].mean()), 6)
                row[f"{metric}_pooled"] = round(float(pooled[metric]), 6)
            cm = _pooled(confusion, part, step, n_labels)
            row["miou"] = round(mean_iou(cm), 6)
            row["fwiou"] = round(frequency_weighted_iou(cm), 6)
            rows.append(row)
    return pd.DataFrame(rows)


def _pooled(confusion: pd.DataFrame, part: pd.DataFrame, step: str, n_labels: int) -> np.ndarray:
    rows = confusion[(confusion["step"] == step) & confusion["name"].isin(part["name"])]
    return pooled_confusion(rows, n_labels)


def class_scores(
    table: pd.DataFrame, confusion: pd.DataFrame, classes: Sequence[str]
) -> pd.DataFrame:
    """Per split (as :func:`quality_summary`, positive images), step and label (``background``,
    then each of ``classes``): the label's pixels in the real masks and its one-vs-rest IoU,
    Dice, precision and recall from the pooled confusion matrix
    (:func:`histo_wsss.metrics.label_counts`; a ratio with nothing to count is empty, e.g. the
    recall of a label that no real mask holds)."""
    names = ["background", *classes]
    rows = []
    for split, part in _parts(table):
        for step in STEPS:
            if f"{step}_iou" not in part:
                continue
            cm = _pooled(confusion, part, step, len(names))
            tp, fp, fn, tn = label_counts(cm)
            scores = scores_from_counts(tp, fp, fn, tn, zero_division=math.nan)
            for i, name in enumerate(names):
                row = {"split": split, "step": step, "class": name}
                row["reference_pixels"] = int(cm[i].sum())
                row.update({m: round(float(scores[m][i]), 6) for m in CLASS_SCORES})
                rows.append(row)
    columns = ["split", "step", "class", "reference_pixels", *CLASS_SCORES]
    return pd.DataFrame(rows, columns=columns)
