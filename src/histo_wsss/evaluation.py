"""Evaluation of the segmentation network against pseudo-masks and, when present, ground truth.

:func:`evaluate_images` scores every image on its own (one table row per image);
:func:`summarize` aggregates that table per split into a JSON-ready dict, which
:func:`summary_lines` puts into words for the log.

Per image (``evaluate_images``)
-------------------------------
* prediction: ``prob >= threshold`` (default 0.5) on the saved probability map (float16
  ``.npy``, computed in float32); ``pred_area`` = number of predicted pixels, ``n_pixels`` = image
  size, ``pred_area_fraction = pred_area / n_pixels``, ``any_positive_pixel = pred_area > 0``;
* for each reference ``pseudo`` (the pseudo-mask) and, when the row has one, ``truth`` (the
  ground-truth mask): the pixel counts ``<ref>_tp``, ``<ref>_fp``, ``<ref>_fn``, ``<ref>_tn`` and
  the scores ``<ref>_iou``, ``<ref>_dice``, ``<ref>_precision``, ``<ref>_recall``,
  ``<ref>_pixel_accuracy`` of :mod:`histo_wsss.metrics`, with its empty-case convention
  (a ratio whose denominator is 0 is 1.0: e.g. an empty prediction on a positive image's empty
  reference has IoU 1); a negative image's ``iou``, ``dice``, ``precision`` and ``recall`` are
  NaN (empty cells: on its empty reference they are only 1 or 0, by whether anything was
  predicted, which ``negative_images_with_positive_pixels`` counts per split);
* ``head_prob``: the segmentation head's image-level probability, as given.

``truth_*`` columns exist only when at least one row has a ground-truth mask; rows without one
then hold NaN there.

Per split (``summarize``)
-------------------------
Images are *positive* when their image label is 1, *negative* when it is 0.

* ``n_images``, ``n_positive``, ``n_negative``;
* ``head_accuracy``: share of images whose ``head_prob >= 0.5`` agrees with the label;
  ``head_auc``: ROC AUC of ``head_prob`` against the label (:func:`sklearn.metrics.roc_auc_score`),
  ``None`` when the split has one class only; images with a NaN ``head_prob`` are left out of both
  (``None`` when none is left);
* ``negative_images_with_positive_pixels``: share of negative images with at least one
  predicted positive pixel (a share of images, not of pixels); ``negative_mean_area_fraction``:
  mean over negative images of ``pred_area_fraction``; ``positive_mean_area_fraction``: the
  same over positives; all ``None`` when there is no image of that class;
* for each reference ``<ref>`` (``pseudo``; ``truth`` only when the split has ground truth), a dict
  with

  - ``n_images``: images of the split with that reference (all of them for ``pseudo``);
  - ``positive_mean``: the mean of the per-image scores over the POSITIVE images only,
    ``n_positive`` of them. This follows the reference paper's code, which skips negative (HP)
    images when it averages its validation IoU (its ``train_segmentation`` skips every image
    whose reference mask is empty within the tissue; that is the same set as long as every
    positive image has a non-empty reference). ``n_positive_empty_reference`` counts positives
    whose reference mask is empty anyway (their IoU is 1 for an empty prediction and 0
    otherwise). Unlike the paper's code there is no tissue mask, no small-region removal and no
    ``1e-6`` in the IoU denominator here. ``None`` values when the split has no positive image;
  - ``all_positive_baseline``: the ``iou`` and ``dice`` that predicting every pixel of every
    positive image positive would score as ``positive_mean`` (per image: the reference's share
    of the image, and 2 share / (1 + share)). A network must beat it to have learned where the
    class is, not only that it is there;
  - ``pooled``: scores over ALL images of the split (positives and negatives) from the
    summed counts ``tp``, ``fp``, ``fn``, ``tn`` (also given), via
    :func:`histo_wsss.metrics.scores_from_counts`. Negatives add their false positives to the
    denominators, so a network that marks negative images is penalised here but not in
    ``positive_mean``. Also ``background_iou`` (tn / (tn + fp + fn)) and ``miou``, the mean of
    the two classes' IoU: the field's mIoU (e.g. GlaS gland vs background).

Every number is a plain Python ``int``/``float``; NaN becomes ``None``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from histo_wsss.io import read_mask
from histo_wsss.metrics import METRICS, confusion, image_scores, scores_from_counts

__all__ = [
    "COUNTS",
    "REFERENCES",
    "ROW_FIELDS",
    "evaluate_images",
    "has_path",
    "predicted_mask",
    "summarize",
    "summary_lines",
    "val_iou_columns",
]

REFERENCES = ("pseudo", "truth")
COUNTS = ("tp", "fp", "fn", "tn")
ROW_FIELDS = ("name", "split", "label", "prob_path", "head_prob", "pseudo_path", "truth_path")
HEAD_THRESHOLD = 0.5


def _field(row: object, key: str, default: object = ...) -> object:
    if isinstance(row, Mapping):
        if key in row:
            return row[key]
    elif hasattr(row, key):
        return getattr(row, key)
    if default is ...:
        raise KeyError(f"evaluation row has no {key!r}: {row!r}")
    return default


def has_path(value: object) -> bool:
    """True for a non-empty path; ``''``, ``None`` and NaN (an empty CSV cell) mean "none"."""
    if value is None:
        return False
    if isinstance(value, float) and math.isnan(value):
        return False
    return str(value) != ""


def predicted_mask(prob: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Boolean prediction ``prob >= threshold`` (computed in float32; NaN is an error)."""
    prob = np.asarray(prob, dtype=np.float32)
    if np.isnan(prob).any():
        raise ValueError("probability map contains NaN")
    return prob >= np.float32(threshold)


def _reference_columns(ref: str, pred: np.ndarray, path: str | os.PathLike, positive: bool) -> dict:
    target = read_mask(path)
    if target.shape != pred.shape:
        raise ValueError(f"{path}: mask shape {target.shape} != probability map {pred.shape}")
    counts = confusion(pred, target)
    out = {f"{ref}_{c}": n for c, n in zip(COUNTS, counts, strict=True)}
    out.update({f"{ref}_{m}": v for m, v in image_scores(counts, positive).items()})
    return out


def evaluate_images(rows: Iterable, threshold: float = 0.5) -> pd.DataFrame:
    """Score every image's prediction against its pseudo-mask and ground truth (if any).

    ``rows``: dicts or objects (e.g. named tuples, or a DataFrame, taken row by row) with
    ``name, split, label, prob_path, head_prob, pseudo_path, truth_path`` (``truth_path`` may be
    missing, ``''``, ``None`` or NaN: no ground truth). Returns one row per image, in input order,
    with the columns described in the module docstring.
    """
    if isinstance(rows, pd.DataFrame):
        rows = rows.to_dict("records")
    records = []
    for row in rows:
        name = str(_field(row, "name"))
        label = _field(row, "label")
        if label not in (0, 1):
            raise ValueError(f"{name}: label must be 0 or 1, got {label!r}")
        prob_path = _field(row, "prob_path")
        prob = np.load(prob_path)
        if prob.ndim != 2:
            raise ValueError(f"{prob_path}: expected an HxW probability map, got {prob.shape}")
        pred = predicted_mask(prob, threshold)
        area = int(np.count_nonzero(pred))
        record = {
            "name": name,
            "split": str(_field(row, "split")),
            "label": int(label),
            "head_prob": float(_field(row, "head_prob")),
            "n_pixels": int(pred.size),
            "pred_area": area,
            "pred_area_fraction": area / pred.size,
            "any_positive_pixel": area > 0,
        }
        record.update(_reference_columns("pseudo", pred, _field(row, "pseudo_path"), label == 1))
        truth_path = _field(row, "truth_path", "")
        if has_path(truth_path):
            record.update(_reference_columns("truth", pred, truth_path, label == 1))
        records.append(record)
    columns = ["name", "split", "label", "head_prob", "n_pixels", "pred_area"]
    columns += ["pred_area_fraction", "any_positive_pixel"]
    for ref in REFERENCES:
        if any(f"{ref}_tp" in r for r in records):
            columns += [f"{ref}_{c}" for c in (*COUNTS, *METRICS)]
    return pd.DataFrame.from_records(records, columns=columns)


def _plain(value: object) -> object:
    """JSON-ready copy: numpy scalars to Python numbers, NaN to ``None``."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, bool | np.bool_):
        return bool(value)
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        return None if math.isnan(value) else float(value)
    return value


def _mean(values: pd.Series) -> float:
    return float(values.astype(np.float64).mean()) if len(values) else math.nan


def _head(part: pd.DataFrame) -> dict:
    ok = part[np.isfinite(part["head_prob"].astype(np.float64))]
    y = ok["label"].to_numpy(dtype=int)
    p = ok["head_prob"].to_numpy(dtype=np.float64)
    if y.size == 0:
        return {"head_accuracy": math.nan, "head_auc": math.nan}
    both = bool((y == 1).any() and (y == 0).any())
    return {
        "head_accuracy": float(np.mean((p >= HEAD_THRESHOLD) == (y == 1))),
        "head_auc": float(roc_auc_score(y, p)) if both else math.nan,
    }


def _reference_summary(part: pd.DataFrame, ref: str) -> dict:
    part = part[part[f"{ref}_tp"].notna()]
    pos = part[part["label"] == 1]
    totals = {c: int(part[f"{ref}_{c}"].sum()) for c in COUNTS}
    tp, fp, fn, tn = totals.values()
    background_iou = tn / (tn + fp + fn) if tn + fp + fn else 1.0
    pooled = scores_from_counts(tp, fp, fn, tn)
    share = (pos[f"{ref}_tp"] + pos[f"{ref}_fn"]) / pos["n_pixels"]
    return {
        "n_images": len(part),
        "n_positive": len(pos),
        "n_positive_empty_reference": int(((pos[f"{ref}_tp"] + pos[f"{ref}_fn"]) == 0).sum()),
        "positive_mean": {m: _mean(pos[f"{ref}_{m}"]) for m in METRICS},
        "all_positive_baseline": {"iou": _mean(share), "dice": _mean(2 * share / (1 + share))},
        "pooled": {
            **pooled,
            "background_iou": background_iou,
            "miou": (pooled["iou"] + background_iou) / 2,
            **totals,
        },
    }


def summarize(table: pd.DataFrame) -> dict:
    """Per-split summary of an :func:`evaluate_images` table: ``{split: {...}}``, JSON-ready.

    See the module docstring for every definition. Splits appear in order of first appearance.
    """
    out = {}
    for split in pd.unique(table["split"]):
        part = table[table["split"] == split]
        pos, neg = part[part["label"] == 1], part[part["label"] == 0]
        entry = {
            "n_images": len(part),
            "n_positive": len(pos),
            "n_negative": len(neg),
            **_head(part),
            "negative_images_with_positive_pixels": _mean(neg["any_positive_pixel"]),
            "negative_mean_area_fraction": _mean(neg["pred_area_fraction"]),
            "positive_mean_area_fraction": _mean(pos["pred_area_fraction"]),
        }
        for ref in REFERENCES:
            if f"{ref}_tp" in part.columns and part[f"{ref}_tp"].notna().any():
                entry[ref] = _reference_summary(part, ref)
        out[str(split)] = entry
    return _plain(out)


def _number(value: float | None) -> str:
    return "undefined" if value is None else f"{value:.4f}"


def summary_lines(summary: Mapping) -> list[str]:
    """A :func:`summarize` dict in words, for the log: per split, its images, the head's scores
    and the negatives marked, then one line of IoU and Dice against each reference."""
    lines = []
    for split, entry in summary.items():
        lines.append(
            f"{split}: {entry['n_images']} images ({entry['n_positive']} positive); head "
            f"accuracy {_number(entry['head_accuracy'])}, ROC AUC {_number(entry['head_auc'])}; "
            f"negative images with positive pixels "
            f"{_number(entry['negative_images_with_positive_pixels'])} of {entry['n_negative']}"
        )
        for ref in REFERENCES:
            if ref in entry:
                mean, pooled = entry[ref]["positive_mean"], entry[ref]["pooled"]
                baseline = entry[ref]["all_positive_baseline"]
                lines.append(
                    f"{split} vs {ref}: IoU positive mean {_number(mean['iou'])} (all-positive "
                    f"baseline {_number(baseline['iou'])}), pooled {_number(pooled['iou'])}, "
                    f"mIoU pooled {_number(pooled['miou'])}; Dice positive mean "
                    f"{_number(mean['dice'])}, pooled {_number(pooled['dice'])}"
                )
    return lines


def val_iou_columns(reference: str) -> tuple[str, str]:
    """Names of the segmentation's per-epoch validation IoUs against ``reference`` (``pseudo``
    or ``truth``: the masks it trains on), pooled over all val images (the checkpoint's
    selection score) and mean over the positive ones: a name says what it was measured on."""
    return f"val_iou_vs_{reference}_pooled", f"val_iou_vs_{reference}_positive_mean"
