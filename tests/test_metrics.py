"""Tests of the segmentation metrics (binary and K-class), with hand-counted values."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from histo_wsss.metrics import (
    CONFUSION_COLUMNS,
    METRICS,
    confusion,
    confusion_rows,
    foreground_counts,
    frequency_weighted_iou,
    label_confusion,
    label_counts,
    mean_iou,
    pooled_confusion,
    scores,
    scores_from_counts,
)


def grid(rows: list[str]) -> np.ndarray:
    return np.array([[c == "1" for c in r] for r in rows])


PRED = grid(["1100", "1100", "0000", "0000"])
TARGET = grid(["0110", "0110", "0000", "0000"])


def test_confusion_by_hand():
    # tp: (0,1),(1,1); fp: (0,0),(1,0); fn: (0,2),(1,2); tn: the other 10
    counts = confusion(PRED, TARGET)
    assert counts == (2, 2, 2, 10)
    assert all(type(c) is int for c in counts)


def test_scores_by_hand():
    s = scores(PRED, TARGET)
    assert set(s) == set(METRICS)
    assert s["iou"] == pytest.approx(2 / 6)
    assert s["dice"] == pytest.approx(4 / 8)
    assert s["precision"] == pytest.approx(0.5)
    assert s["recall"] == pytest.approx(0.5)
    assert s["pixel_accuracy"] == pytest.approx(12 / 16)


def test_scores_by_hand_asymmetric():
    pred = grid(["1111", "1111", "0000", "0000"])
    target = grid(["1100", "0000", "0000", "0000"])
    assert confusion(pred, target) == (2, 6, 0, 8)
    s = scores(pred, target)
    assert s == pytest.approx(
        {"iou": 0.25, "dice": 0.4, "precision": 0.25, "recall": 1.0, "pixel_accuracy": 0.625}
    )
    # swapping pred and target swaps precision and recall only
    t = scores(target, pred)
    assert (t["precision"], t["recall"], t["iou"], t["dice"]) == pytest.approx(
        (1.0, 0.25, 0.25, 0.4)
    )


EMPTY = np.zeros((4, 4), dtype=bool)


def test_both_empty():
    assert scores(EMPTY, EMPTY) == {
        "iou": 1.0,
        "dice": 1.0,
        "precision": 1.0,
        "recall": 1.0,
        "pixel_accuracy": 1.0,
    }


def test_target_empty_pred_not():
    s = scores(PRED, EMPTY)
    assert (s["iou"], s["dice"], s["precision"], s["recall"]) == (0.0, 0.0, 0.0, 1.0)
    assert s["pixel_accuracy"] == pytest.approx(12 / 16)


def test_pred_empty_target_not():
    s = scores(EMPTY, TARGET)
    assert (s["iou"], s["dice"], s["precision"], s["recall"]) == (0.0, 0.0, 1.0, 0.0)
    assert s["pixel_accuracy"] == pytest.approx(12 / 16)


def test_zero_division_nan():
    s = scores(EMPTY, TARGET, zero_division=math.nan)
    assert math.isnan(s["precision"]) and s["recall"] == 0.0 and s["iou"] == 0.0
    s = scores(EMPTY, EMPTY, zero_division=math.nan)
    assert all(math.isnan(s[k]) for k in ("iou", "dice", "precision", "recall"))
    assert s["pixel_accuracy"] == 1.0


def test_vectorised_per_image_and_pooled():
    preds = np.stack([PRED, EMPTY, PRED, EMPTY])
    targets = np.stack([TARGET, TARGET, EMPTY, EMPTY])
    tp, fp, fn, tn = confusion(preds, targets, axis=(1, 2))
    np.testing.assert_array_equal(tp, [2, 0, 0, 0])
    np.testing.assert_array_equal(fp, [2, 0, 4, 0])
    np.testing.assert_array_equal(fn, [2, 4, 0, 0])
    np.testing.assert_array_equal(tn, [10, 12, 12, 16])
    per_image = scores(preds, targets, axis=(1, 2))
    for i in range(4):
        single = scores(preds[i], targets[i])
        for k in METRICS:
            assert per_image[k][i] == pytest.approx(single[k])
    pooled = scores_from_counts(tp.sum(), fp.sum(), fn.sum(), tn.sum())
    assert pooled == pytest.approx(scores(preds, targets))
    assert pooled["iou"] == pytest.approx(2 / 14)
    assert pooled["precision"] == pytest.approx(2 / 8)
    assert pooled["recall"] == pytest.approx(2 / 8)


def test_input_validation():
    with pytest.raises(TypeError):
        scores(PRED.astype(np.uint8), TARGET)
    with pytest.raises(ValueError):
        scores(PRED, TARGET[:3])
    with pytest.raises(ValueError):
        scores_from_counts(-1, 0, 0, 0)


def test_scores_from_counts_scalars_and_conventions():
    s = scores_from_counts(0, 0, 0, 5)
    assert s == {k: 1.0 for k in METRICS} and all(type(v) is float for v in s.values())
    assert scores_from_counts(0, 3, 0, 5)["precision"] == 0.0  # target empty, pred not
    assert scores_from_counts(0, 3, 0, 5)["recall"] == 1.0
    assert scores_from_counts(0, 0, 3, 5)["precision"] == 1.0  # pred empty, target not
    assert scores_from_counts(0, 0, 3, 5)["recall"] == 0.0
    arr = scores_from_counts(
        np.array([0, 2]), np.array([0, 2]), np.array([0, 2]), np.array([5, 10])
    )
    np.testing.assert_allclose(arr["iou"], [1.0, 1 / 3])


# Label maps: 0 background, 1..K classes, 255 unlabelled (reference only).
LABELS_TRUTH = np.array([[0, 0, 1, 1], [0, 2, 2, 1], [255, 2, 2, 0]], np.uint8)
LABELS_PRED = np.array([[0, 1, 1, 1], [0, 2, 1, 1], [2, 2, 0, 0]], np.uint8)


def test_label_confusion_by_hand_leaves_unlabelled_pixels_out():
    cm = label_confusion(LABELS_PRED, LABELS_TRUTH, 3)
    # truth 0 at (0,0) (0,1) (1,0) (2,3): predicted 0, 1, 0, 0
    # truth 1 at (0,2) (0,3) (1,3): all predicted 1
    # truth 2 at (1,1) (1,2) (2,1) (2,2): predicted 2, 1, 2, 0; (2,0) is unlabelled
    assert cm.tolist() == [[3, 1, 0], [0, 3, 0], [1, 1, 2]]
    tp, fp, fn, tn = label_counts(cm)
    assert tp.tolist() == [3, 3, 2] and fp.tolist() == [1, 2, 0] and fn.tolist() == [1, 0, 2]
    assert (tp + fp + fn + tn).tolist() == [11, 11, 11]
    # foreground = labels 1 and 2: tp 6 (a class-2 pixel taken for class 1 still counts)
    assert foreground_counts(cm) == (6, 1, 1, 3)


def test_mean_and_frequency_weighted_iou_by_hand():
    cm = label_confusion(LABELS_PRED, LABELS_TRUTH, 3)
    iou = [3 / 5, 3 / 5, 2 / 4]
    assert mean_iou(cm) == pytest.approx(np.mean(iou))
    assert frequency_weighted_iou(cm) == pytest.approx((4 * iou[0] + 3 * iou[1] + 4 * iou[2]) / 11)
    # a label the reference lacks is left out of the mean: no background in the reference
    no_bg = label_confusion(np.array([[1, 2]]), np.array([[1, 2]]), 3)
    assert mean_iou(no_bg) == 1.0
    assert math.isnan(mean_iou(np.zeros((2, 2), int)))


def test_binary_label_maps_score_as_boolean_masks():
    cm = label_confusion(PRED.astype(np.uint8), TARGET.astype(np.uint8), 2)
    assert foreground_counts(cm) == confusion(PRED, TARGET)
    assert scores_from_counts(*foreground_counts(cm)) == scores(PRED, TARGET)


def test_confusion_rows_pool_back_to_the_summed_matrix():
    a = label_confusion(LABELS_PRED, LABELS_TRUTH, 3)
    b = label_confusion(LABELS_TRUTH.clip(0, 2), LABELS_TRUTH, 3)
    rows = pd.DataFrame(confusion_rows(a, name="a") + confusion_rows(b, name="b"))
    assert list(rows.columns) == ["name", *CONFUSION_COLUMNS]
    assert (pooled_confusion(rows, 3) == a + b).all()
    assert (pooled_confusion(rows[rows["name"] == "b"], 3) == b).all()


def test_label_confusion_rejects_labels_out_of_range():
    with pytest.raises(ValueError, match=r"pred holds label\(s\) \[3\] outside 0..2"):
        label_confusion(np.array([[3]]), np.array([[0]]), 3)
    with pytest.raises(ValueError, match="shape mismatch"):
        label_confusion(np.zeros((2, 2)), np.zeros((2, 3)), 2)
