"""Evaluation of the segmentation network against pseudo-masks and, when present, ground truth.

:func:`evaluate_images` scores every image on its own (one table row per image);
:func:`summarize` aggregates that table per split into a JSON-ready dict, which
:func:`summary_lines` puts into words for the log.

Per image (``evaluate_images``)
-------------------------------
* prediction: the label map of the saved probability maps (float16 ``.npy`` of shape
  ``(K, H, W)``, one map per foreground class; an ``(H, W)`` map is the K = 1 case), computed in
  float32 by :func:`predicted_labels`: background 0 where no class reaches ``threshold``
  (default 0.5), else ``1 +`` the most probable class (K = 1: ``prob >= threshold``, the
  positive class). ``pred_area`` = number of pixels predicted as any class, ``n_pixels`` = image
  size, ``pred_area_fraction = pred_area / n_pixels``, ``any_positive_pixel = pred_area > 0``;
* for each reference ``pseudo`` (the pseudo-mask) and, when the row has one, ``truth`` (the
  ground-truth mask at the working scale), both label maps read with
  :meth:`histo_wsss.classes.LabelSpace.read_labels`: the confusion matrix of labels
  ``0..K`` (:func:`histo_wsss.metrics.label_confusion`; the reference's unlabelled pixels left
  out), one long-table row per non-zero cell (the second table: ``name``, ``split``,
  ``reference``, ``truth_label``, ``pred_label``, ``pixels``), and its **foreground** counts
  (any class against background: the positive class's when K = 1)
  ``<ref>_tp``, ``<ref>_fp``, ``<ref>_fn``, ``<ref>_tn`` and
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
    a positive image is one with a tag (for K classes: any class against background);
  - ``all_positive_baseline``: the ``iou`` and ``dice`` that predicting every pixel of every
    positive image positive would score as ``positive_mean`` (per image: the reference's share
    of the image, and 2 share / (1 + share)). A network must beat it to have learned where the
    class is, not only that it is there;
  - ``pooled``: scores over ALL images of the split (positives and negatives) from the
    summed counts ``tp``, ``fp``, ``fn``, ``tn`` (also given), via
    :func:`histo_wsss.metrics.scores_from_counts`. Negatives add their false positives to the
    denominators, so a network that marks negative images is penalised here but not in
    ``positive_mean``. Also ``background_iou`` (tn / (tn + fp + fn)) and ``miou``, the mean of
    the two classes' IoU: the field's mIoU (e.g. GlaS gland vs background);
  - given the per-image confusion table, the K-class scores from the matrix pooled over the
    split (:mod:`histo_wsss.metrics`): ``miou`` (mean IoU over the labels the reference holds,
    background included where it does; for K = 1 ``pooled.miou`` whenever the split's reference
    holds both labels), ``fwiou`` (each label's IoU weighted by its share of the reference's
    pixels), ``classes`` (``{"background" or class: {iou, dice, precision, recall,
    reference_pixels}}``, one label against the rest) and ``confusion`` (``{"labels":
    ["background", *classes], "matrix": [[...]]}``, rows the reference, columns the prediction);
  - given the baselines' confusion tables (:func:`baseline_confusions`), ``baselines``:
    ``{name: {miou, fwiou, classes: {label name: iou}}}`` for the field's two trivial baselines:

    - ``majority_class``: every labelled pixel predicted as the foreground class with the most
      pixels in the train split's masks of the same reference (the real masks of the train
      images for ``truth``, their pseudo-masks for ``pseudo``);
    - ``most_frequent_tag``: every pixel of an image predicted as its tag that the most train
      images hold (ties: the first in ``dataset.classes``), an image without tags as background.
      For K = 1 it predicts every pixel of a positive image positive and every pixel of a
      negative image background: ``all_positive_baseline`` is its mean over the positives.

Every number is a plain Python ``int``/``float``; NaN becomes ``None``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from histo_wsss.classes import LabelSpace
from histo_wsss.metrics import (
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

__all__ = [
    "BASELINES",
    "CONFUSION_COLUMNS",
    "COUNTS",
    "REFERENCES",
    "ROW_FIELDS",
    "evaluate_images",
    "has_path",
    "baseline_confusions",
    "label_pixels",
    "label_scores",
    "predicted_labels",
    "predicted_mask",
    "summarize",
    "summary_lines",
    "val_iou_columns",
]

REFERENCES = ("pseudo", "truth")
COUNTS = ("tp", "fp", "fn", "tn")
ROW_FIELDS = ("name", "split", "label", "prob_path", "head_prob", "pseudo_path", "truth_path")
HEAD_THRESHOLD = 0.5
CONFUSION_COLUMNS = ("name", "split", "reference", "truth_label", "pred_label", "pixels")
BASELINES = ("majority_class", "most_frequent_tag")
#: The label space of a binary dataset when none is given: one foreground class.
BINARY = LabelSpace(("positive",))


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


def predicted_labels(probs: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """uint8 label map of class probability maps ``probs`` ``(K, H, W)`` (an ``(H, W)`` map: one
    class): 0 where the highest probability is below ``threshold``, else 1 + the index of the
    most probable class (ties: the first). For K = 1 that is :func:`predicted_mask`. Computed in
    float32; NaN is an error."""
    probs = np.asarray(probs, dtype=np.float32)
    if probs.ndim == 2:
        probs = probs[None]
    if probs.ndim != 3 or probs.shape[0] < 1:
        raise ValueError(f"expected (K, H, W) probability maps, got shape {probs.shape}")
    if np.isnan(probs).any():
        raise ValueError("probability map contains NaN")
    best = probs.argmax(axis=0)
    above = np.take_along_axis(probs, best[None], axis=0)[0] >= np.float32(threshold)
    return np.where(above, best + 1, 0).astype(np.uint8)


def _reference(
    ref: str, pred: np.ndarray, path: str | os.PathLike, positive: bool, space: LabelSpace
) -> tuple[dict, np.ndarray]:
    """The per-image columns against one reference and its label confusion matrix."""
    target = space.read_labels(path)
    if target.shape != pred.shape:
        raise ValueError(f"{path}: mask shape {target.shape} != probability map {pred.shape}")
    try:
        cm = label_confusion(pred, target, space.k + 1)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None
    counts = foreground_counts(cm)
    out = {f"{ref}_{c}": n for c, n in zip(COUNTS, counts, strict=True)}
    out.update({f"{ref}_{m}": v for m, v in image_scores(counts, positive).items()})
    return out, cm


def evaluate_images(
    rows: Iterable, threshold: float = 0.5, space: LabelSpace = BINARY
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Score every image's prediction against its pseudo-mask and ground truth (if any).

    ``rows``: dicts or objects (e.g. named tuples, or a DataFrame, taken row by row) with
    ``name, split, label, prob_path, head_prob, pseudo_path, truth_path`` (``label``: 1 for an
    image with a tag, else 0; ``truth_path`` may be missing, ``''``, ``None`` or NaN: no ground
    truth). ``space``: the dataset's K classes (the label maps' reader). Returns the per-image
    table (one row per image, in input order, the columns of the module docstring) and the
    long table of the per-image confusion matrices (:data:`CONFUSION_COLUMNS`).
    """
    if isinstance(rows, pd.DataFrame):
        rows = rows.to_dict("records")
    records, cells = [], []
    for row in rows:
        name = str(_field(row, "name"))
        label = _field(row, "label")
        if label not in (0, 1):
            raise ValueError(f"{name}: label must be 0 or 1, got {label!r}")
        prob_path = _field(row, "prob_path")
        prob = np.load(prob_path)
        if prob.ndim not in (2, 3) or (prob.ndim == 3 and prob.shape[0] != space.k):
            raise ValueError(
                f"{prob_path}: expected {space.k} HxW probability map(s), got shape {prob.shape}"
            )
        pred = predicted_labels(prob, threshold)
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
        references = {"pseudo": _field(row, "pseudo_path"), "truth": _field(row, "truth_path", "")}
        for ref, path in references.items():
            if has_path(path):
                columns, cm = _reference(ref, pred, path, label == 1, space)
                record.update(columns)
                cells += confusion_rows(cm, name=name, split=record["split"], reference=ref)
        records.append(record)
    columns = ["name", "split", "label", "head_prob", "n_pixels", "pred_area"]
    columns += ["pred_area_fraction", "any_positive_pixel"]
    for ref in REFERENCES:
        if any(f"{ref}_tp" in r for r in records):
            columns += [f"{ref}_{c}" for c in (*COUNTS, *METRICS)]
    table = pd.DataFrame.from_records(records, columns=columns)
    return table, pd.DataFrame(cells, columns=list(CONFUSION_COLUMNS))


def label_pixels(paths: Iterable[str | os.PathLike], space: LabelSpace) -> np.ndarray:
    """int64 ``(K + 1,)``: the pixels of each label ``0..K`` in the label maps at ``paths``
    (unlabelled pixels not counted)."""
    counts = np.zeros(space.k + 1, dtype=np.int64)
    for path in paths:
        values = np.bincount(space.read_labels(path).ravel(), minlength=256)
        counts += values[: space.k + 1]
    return counts


def baseline_confusions(
    confusion: pd.DataFrame,
    tags: Mapping[str, str],
    train_pixels: Mapping[str, np.ndarray],
    train_tags: Iterable[str],
    space: LabelSpace,
) -> dict[str, pd.DataFrame]:
    """The confusion tables (:data:`CONFUSION_COLUMNS`) of the :data:`BASELINES` (module
    docstring) on the images of ``confusion`` (an :func:`evaluate_images` table: a baseline
    predicts one label per image, so its matrix is the reference's pixels per label put in that
    label's column).

    ``tags``: each image's ``;``-joined tags; ``train_pixels``: per reference, the
    :func:`label_pixels` of the train split's masks; ``train_tags``: the tags of the train
    images (the classes' frequencies, ties to the first class).
    """
    frequency = np.zeros(space.k, dtype=np.int64)
    for joined in train_tags:
        frequency += space.tag_vector(joined).astype(np.int64)
    order = sorted(range(space.k), key=lambda c: (-frequency[c], c))
    majority = {ref: 1 + int(np.argmax(np.asarray(n)[1:])) for ref, n in train_pixels.items()}

    def top_tag(name: str) -> int:
        present = space.tag_vector(tags[name])
        return next((1 + c for c in order if present[c]), 0)

    support = confusion.groupby(["name", "split", "reference", "truth_label"], sort=False)
    support = support["pixels"].sum().reset_index()
    predictions = {
        "majority_class": support["reference"].map(majority),
        "most_frequent_tag": support["name"].map(top_tag),
    }
    out = {}
    for baseline, pred in predictions.items():
        if pred.isna().any():
            refs = sorted(set(support.loc[pred.isna(), "reference"]))
            raise ValueError(f"{baseline}: no train masks counted for reference(s) {refs}")
        out[baseline] = support.assign(pred_label=pred.astype(int))[list(CONFUSION_COLUMNS)]
    return out


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


def label_scores(cm: np.ndarray, classes: Sequence[str]) -> dict:
    """``miou``, ``fwiou``, ``classes`` (per label: ``iou``, ``dice``, ``precision``,
    ``recall``, ``reference_pixels``) and ``confusion`` of a pooled label confusion matrix
    ``cm`` over ``background`` and the K ``classes``. A ratio with nothing to count is NaN (None
    in JSON), e.g. the IoU of a class that neither the reference nor the prediction holds: not
    a perfect score (as in ``pseudo_masks/class_scores.csv``; no mIoU counts such a label)."""
    names = ["background", *classes]
    scores = scores_from_counts(*label_counts(cm), zero_division=math.nan)
    support = cm.sum(axis=1)
    per_label = {
        label: {
            **{m: scores[m][i] for m in ("iou", "dice", "precision", "recall")},
            "reference_pixels": int(support[i]),
        }
        for i, label in enumerate(names)
    }
    return {
        "miou": mean_iou(cm),
        "fwiou": frequency_weighted_iou(cm),
        "classes": per_label,
        "confusion": {"labels": names, "matrix": cm.tolist()},
    }


def _pooled(confusion: pd.DataFrame, split: str, ref: str, k: int) -> np.ndarray:
    rows = confusion[(confusion["split"] == split) & (confusion["reference"] == ref)]
    return pooled_confusion(rows, k + 1)


def summarize(
    table: pd.DataFrame,
    confusion: pd.DataFrame | None = None,
    classes: Sequence[str] = BINARY.classes,
    baselines: Mapping[str, pd.DataFrame] | None = None,
) -> dict:
    """Per-split summary of an :func:`evaluate_images` table: ``{split: {...}}``, JSON-ready.

    ``confusion``: its per-image confusion table, which adds the K-class scores of each
    reference (over ``background`` and the K ``classes``); ``baselines``: the confusion tables
    of :func:`baseline_confusions`, which add ``baselines``. See the module docstring for every
    definition. Splits appear in order of first appearance.
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
                if confusion is not None:
                    cm = _pooled(confusion, split, ref, len(classes))
                    entry[ref].update(label_scores(cm, classes))
                for baseline, cells in (baselines or {}).items():
                    scores = label_scores(_pooled(cells, split, ref, len(classes)), classes)
                    entry[ref].setdefault("baselines", {})[baseline] = {
                        "miou": scores["miou"],
                        "fwiou": scores["fwiou"],
                        "classes": {c: v["iou"] for c, v in scores["classes"].items()},
                    }
        out[str(split)] = entry
    return _plain(out)


def _number(value: float | None) -> str:
    return "undefined" if value is None else f"{value:.4f}"


def _label_line(where: str, scores: Mapping) -> str:
    per_class = ", ".join(f"{c} {_number(v['iou'])}" for c, v in scores["classes"].items())
    baselines = "".join(
        f"; {name} baseline mIoU {_number(b['miou'])}, fwIoU {_number(b['fwiou'])}"
        for name, b in scores.get("baselines", {}).items()
    )
    return (
        f"{where}: mIoU {_number(scores['miou'])}, fwIoU {_number(scores['fwiou'])}; IoU per "
        f"label: {per_class}{baselines}"
    )


def summary_lines(summary: Mapping) -> list[str]:
    """A :func:`summarize` dict in words, for the log: per split, its images, the head's scores
    and the negatives marked, then a line of IoU and Dice against each reference and, with the
    K-class scores, a line of mIoU, fwIoU, IoU per label and the baselines' mIoU and fwIoU."""
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
                if "miou" in entry[ref]:
                    lines.append(_label_line(f"{split} vs {ref}", entry[ref]))
    return lines


def val_iou_columns(reference: str, k: int = 1) -> tuple[str, str]:
    """Names of the segmentation's per-epoch validation IoUs against ``reference`` (``pseudo``
    or ``truth``: the masks it trains on), pooled over all val images (the checkpoint's
    selection score) and mean over the positive ones: a name says what it was measured on. For
    ``k`` > 1 classes they are means over the classes of each class's IoU, and say so."""
    what = "iou" if k == 1 else "mean_class_iou"
    return f"val_{what}_vs_{reference}_pooled", f"val_{what}_vs_{reference}_positive_mean"
