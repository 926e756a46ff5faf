"""Binary segmentation metrics on boolean masks.

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
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np

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
