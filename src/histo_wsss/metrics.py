"""Segmentation metrics: binary ones on boolean masks, and K-class ones on label maps.

Definitions (``tp``, ``fp``, ``fn``, ``tn`` are pixel counts, foreground = ``True``)::

    iou            = tp / (tp + fp + fn)
    dice           = 2 tp / (2 tp + fp + fn)
    precision      = tp / (tp + fp)
    recall         = tp / (tp + fn)
    pixel_accuracy = (tp + tn) / (tp + fp + fn + tn)

Empty-case convention: every ratio whose denominator is 0 takes the value ``zero_division``
(default 1.0). A zero denominator means no error of that kind was possible, so the score is
perfect:

========================  =====  =====  =========  ======
case                      iou    dice   precision  recall
========================  =====  =====  =========  ======
pred and target empty     1      1      1          1
target empty, pred not    0      0      0          1
pred empty, target not    0      0      1          0
========================  =====  =====  =========  ======

(precision = 1 for an empty prediction: it made no false-positive claim; the miss shows in
recall, IoU and Dice.) Pass ``zero_division=float("nan")`` to mark undefined ratios instead and
aggregate with ``np.nanmean``. For dataset-level ("pooled") scores, sum the counts over images
and call :func:`scores_from_counts`. :func:`image_scores` leaves the ratios of a negative image
(empty reference by its label) undefined.

Label maps (:mod:`histo_wsss.classes`: 0 background, ``c`` in 1..K a class, 255 unlabelled) are
scored through a **confusion matrix** over the labels 0..K (:func:`label_confusion`: rows the
reference, columns the prediction; unlabelled reference pixels left out). Per label, its
one-vs-rest counts give the metrics above (:func:`label_counts`); the **foreground** counts
(:func:`foreground_counts`: any class vs background, the positive class when K = 1) give the
binary scores of a label map. :func:`mean_iou` is the mean IoU over the labels the reference
holds (background included where it does: GlaS's gland + background; WSSS4LUAD's unlabelled
non-tissue is no label) and :func:`frequency_weighted_iou` weighs each by its pixel share of the
reference. Pool matrices (sum them) before scoring a dataset; :func:`confusion_rows` and
:func:`pooled_confusion` store them in a long table and sum them back.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import pandas as pd

from histo_wsss.classes import IGNORE

METRICS = ("iou", "dice", "precision", "recall", "pixel_accuracy")
#: Ratios that are only 1 or 0 on a negative image (its reference is empty): they say whether
#: anything was predicted there, which a split's share of negative images with positive pixels
#: counts; a mean of them means nothing.
UNDEFINED_ON_NEGATIVES = ("iou", "dice", "precision", "recall")


def _check(pred: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred, target = np.asarray(pred), np.asarray(target)
    if pred.dtype != bool or target.dtype != bool:
        raise TypeError(f"masks must be boolean, got {pred.dtype} and {target.dtype}")
    if pred.shape != target.shape:
        raise ValueError(f"shape mismatch: pred {pred.shape} vs target {target.shape}")
    return pred, target


def confusion(
    pred: np.ndarray, target: np.ndarray, axis: int | tuple[int, ...] | None = None
) -> tuple[int, int, int, int] | tuple[np.ndarray, ...]:
    """Return ``(tp, fp, fn, tn)``: Python ints, or int64 arrays when summing over ``axis``.

    E.g. for stacked masks of shape ``(N, H, W)``, ``axis=(1, 2)`` gives per-image counts.
    """
    pred, target = _check(pred, target)
    tp = np.count_nonzero(pred & target, axis=axis)
    fp = np.count_nonzero(pred & ~target, axis=axis)
    fn = np.count_nonzero(~pred & target, axis=axis)
    tn = np.count_nonzero(~pred & ~target, axis=axis)
    if axis is None:
        return int(tp), int(fp), int(fn), int(tn)
    return tuple(np.asarray(c, dtype=np.int64) for c in (tp, fp, fn, tn))


def _ratio(num: np.ndarray, den: np.ndarray, zero_division: float) -> np.ndarray:
    out = np.full(np.shape(den), zero_division, dtype=np.float64)
    np.divide(num, den, out=out, where=den != 0)
    return out


def scores_from_counts(tp, fp, fn, tn, *, zero_division: float = 1.0) -> dict:
    """Metrics from counts (scalars or equal-shape arrays); floats for scalar input.

    See the module docstring for definitions and the ``zero_division`` convention.
    """
    tp, fp, fn, tn = (np.asarray(c, dtype=np.float64) for c in (tp, fp, fn, tn))
    if np.any(tp < 0) or np.any(fp < 0) or np.any(fn < 0) or np.any(tn < 0):
        raise ValueError("counts must be non-negative")
    out = {
        "iou": _ratio(tp, tp + fp + fn, zero_division),
        "dice": _ratio(2 * tp, 2 * tp + fp + fn, zero_division),
        "precision": _ratio(tp, tp + fp, zero_division),
        "recall": _ratio(tp, tp + fn, zero_division),
        "pixel_accuracy": _ratio(tp + tn, tp + fp + fn + tn, zero_division),
    }
    if np.ndim(out["iou"]) == 0:
        return {k: float(v) for k, v in out.items()}
    return out


def scores(
    pred: np.ndarray,
    target: np.ndarray,
    axis: int | tuple[int, ...] | None = None,
    *,
    zero_division: float = 1.0,
) -> dict:
    """``iou``, ``dice``, ``precision``, ``recall``, ``pixel_accuracy`` of ``pred`` vs ``target``.

    With ``axis`` the counts are taken along it (e.g. per image) and the values are arrays.
    """
    return scores_from_counts(*confusion(pred, target, axis), zero_division=zero_division)


def image_scores(counts: Iterable[int], positive: bool) -> dict:
    """:func:`scores_from_counts` of one image's ``(tp, fp, fn, tn)``; NaN (an empty CSV cell)
    for the :data:`UNDEFINED_ON_NEGATIVES` ratios of a negative (not ``positive``) image."""
    out = scores_from_counts(*counts)
    if not positive:
        out.update(dict.fromkeys(UNDEFINED_ON_NEGATIVES, math.nan))
    return out


def label_confusion(pred: np.ndarray, target: np.ndarray, n_labels: int) -> np.ndarray:
    """int64 ``(n_labels, n_labels)`` matrix: ``[t, p]`` counts pixels of reference label ``t``
    predicted as ``p``; reference pixels of :data:`IGNORE` are left out. Both maps hold labels
    ``0 .. n_labels - 1`` (``target`` may hold :data:`IGNORE` too); anything else is an error."""
    pred, target = np.asarray(pred), np.asarray(target)
    if pred.shape != target.shape:
        raise ValueError(f"shape mismatch: pred {pred.shape} vs target {target.shape}")
    pred, target = pred.astype(np.int64).ravel(), target.astype(np.int64).ravel()
    keep = target != IGNORE
    pred, target = pred[keep], target[keep]
    for what, values in (("pred", pred), ("target", target)):
        if values.size and (values.min() < 0 or values.max() >= n_labels):
            bad = sorted(int(v) for v in set(np.unique(values)) - set(range(n_labels)))
            raise ValueError(f"{what} holds label(s) {bad} outside 0..{n_labels - 1}")
    flat = np.bincount(target * n_labels + pred, minlength=n_labels * n_labels)
    return flat.reshape(n_labels, n_labels).astype(np.int64)


def label_counts(cm: np.ndarray) -> tuple[np.ndarray, ...]:
    """``(tp, fp, fn, tn)``, int64 arrays with one entry per label: label ``l`` against the
    rest (``tp`` the diagonal, ``fp`` the rest of its column, ``fn`` the rest of its row)."""
    cm = np.asarray(cm, dtype=np.int64)
    tp = np.diag(cm)
    fp = cm.sum(axis=0) - tp
    fn = cm.sum(axis=1) - tp
    tn = cm.sum() - tp - fp - fn
    return tp, fp, fn, tn


def foreground_counts(cm: np.ndarray) -> tuple[int, int, int, int]:
    """``(tp, fp, fn, tn)`` of foreground (any label > 0) against background (label 0): the
    positive class's counts when there is one class."""
    cm = np.asarray(cm, dtype=np.int64)
    tp, fp, fn, tn = cm[1:, 1:].sum(), cm[0, 1:].sum(), cm[1:, 0].sum(), cm[0, 0]
    return int(tp), int(fp), int(fn), int(tn)


def _present_iou(cm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    tp, fp, fn, _ = label_counts(cm)
    support = np.asarray(cm).sum(axis=1)
    iou = _ratio(tp, tp + fp + fn, 1.0)
    return iou, support


def mean_iou(cm: np.ndarray) -> float:
    """Mean IoU over the labels that the reference holds (NaN when it holds none)."""
    iou, support = _present_iou(cm)
    return float(iou[support > 0].mean()) if (support > 0).any() else math.nan


def frequency_weighted_iou(cm: np.ndarray) -> float:
    """IoU of each label weighted by its share of the reference's pixels (NaN when empty)."""
    iou, support = _present_iou(cm)
    total = support.sum()
    return float((iou * support).sum() / total) if total else math.nan


CONFUSION_COLUMNS = ("truth_label", "pred_label", "pixels")


def confusion_rows(cm: np.ndarray, **keys: object) -> list[dict]:
    """The non-zero cells of ``cm`` as rows ``{**keys, truth_label, pred_label, pixels}``."""
    cm = np.asarray(cm)
    return [
        {**keys, "truth_label": int(t), "pred_label": int(p), "pixels": int(cm[t, p])}
        for t, p in zip(*np.nonzero(cm), strict=True)
    ]


def pooled_confusion(rows: pd.DataFrame, n_labels: int) -> np.ndarray:
    """The sum of the matrices stored as :func:`confusion_rows` in ``rows``."""
    cm = np.zeros((n_labels, n_labels), dtype=np.int64)
    if len(rows):
        np.add.at(
            cm,
            (rows["truth_label"].to_numpy(int), rows["pred_label"].to_numpy(int)),
            rows["pixels"].to_numpy(np.int64),
        )
    return cm
