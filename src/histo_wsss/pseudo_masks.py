"""Pseudo-masks for a shard of images, and how good they are against real masks.

Pseudo-mask files are PNGs with 255 = positive class, 0 = background, at the image's own size
(the CAMs have it); negative-class images get all-zero masks. The pseudo-mask (``masks/``) is
the mask after the ``final_step`` of the refinement; with ``save_steps`` the mask after every
step is kept too (``steps/<step>/<name>.png``), for figures.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from histo_wsss.io import read_mask, read_rgb, write_png
from histo_wsss.logs import progress
from histo_wsss.metrics import METRICS, confusion, image_scores, scores_from_counts
from histo_wsss.refine import STEPS, RefineParams, refine
from histo_wsss.splits import SPLITS

COUNTS = ("tp", "fp", "fn", "tn")


@dataclass(frozen=True)
class Item:
    """One image's inputs to the refinement (``truth`` is empty without a ground-truth mask)."""

    name: str
    image: str
    tissue: str
    cam: str
    positive: bool
    truth: str = ""


def load_cam(path: str | Path, shape: tuple[int, int]) -> np.ndarray:
    """Read a saved CAM (float16 ``.npy``) and check it matches the image's size."""
    cam = np.load(path).astype(np.float32)
    if cam.shape != shape:
        raise ValueError(
            f"{path}: CAM is {cam.shape[1]}x{cam.shape[0]}, image is {shape[1]}x{shape[0]}"
        )
    return cam


def refine_images(
    items: Iterable[Item], params: RefineParams, out_dir: str | Path, save_steps: bool
):
    """Refine every item's CAM; write masks; return per-image rows (and quality when known).

    Each row has the name, whether the image is positive, the mask's area fraction after each
    step, the CRF time, and, for images with a ground-truth mask, ``<step>_<count>`` pixel counts
    and ``<step>_<metric>`` scores (:func:`histo_wsss.metrics.image_scores`: a negative image's
    ratios left empty).
    """
    out_dir = Path(out_dir)
    rows = []
    for item in progress(list(items), "pseudo-masks", "img"):
        rgb = read_rgb(item.image)
        cam = load_cam(item.cam, rgb.shape[:2])
        start = time.perf_counter()
        steps = refine(rgb, cam, params, read_mask(item.tissue), item.positive)
        row = {"name": item.name, "positive": int(item.positive)}
        row["seconds"] = round(time.perf_counter() - start, 4)
        write_png(out_dir / "masks" / f"{item.name}.png", steps[params.final_step])
        for step in STEPS:
            row[f"{step}_area"] = round(float(steps[step].mean()), 6)
            if save_steps:
                write_png(out_dir / "steps" / step / f"{item.name}.png", steps[step])
        if item.truth:
            truth = read_mask(item.truth)
            for step in STEPS:
                counts = dict(zip(COUNTS, confusion(steps[step], truth), strict=True))
                row.update({f"{step}_{k}": v for k, v in counts.items()})
                quality = image_scores(counts.values(), item.positive)
                row.update({f"{step}_{m}": round(float(v), 6) for m, v in quality.items()})
        rows.append(row)
    # an empty shard (more shards than images) still gets a table with a header
    return pd.DataFrame(rows, columns=None if rows else ["name", "positive", "seconds"])


def quality_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Per split (``train``, ``val``, ``test``, then ``all`` of them) and refinement step: the
    mean of the per-image scores and the pooled scores (from summed pixel counts), positive
    images only.

    Negative images are left out: their pseudo-masks are empty by construction, so they would
    only add perfect scores. Returns one row per split and step with ``n_images`` and, per
    metric, ``<metric>_mean`` and ``<metric>_pooled``.
    """
    positives = table[table["positive"] == 1]
    parts = [(s, positives[positives["split"] == s]) for s in SPLITS]
    rows = []
    for split, part in [*((s, p) for s, p in parts if len(p)), ("all", positives)]:
        for step in STEPS:
            if f"{step}_iou" not in part:
                continue
            row = {"split": split, "step": step, "n_images": len(part)}
            pooled = scores_from_counts(*(part[f"{step}_{k}"].sum() for k in COUNTS))
            for metric in METRICS:
                row[f"{metric}_mean"] = round(float(part[f"{step}_{metric}"].mean()), 6)
                row[f"{metric}_pooled"] = round(float(pooled[metric]), 6)
            rows.append(row)
    return pd.DataFrame(rows)
