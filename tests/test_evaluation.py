"""Tests of per-image evaluation and its per-split summary, on hand-counted 4x4 masks."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from histo_wsss.evaluation import (
    evaluate_images,
    has_path,
    predicted_mask,
    summarize,
    summary_lines,
)
from histo_wsss.io import write_png
from histo_wsss.metrics import METRICS


def grid(rows: list[str]) -> np.ndarray:
    return np.array([[c == "1" for c in r] for r in rows])


EMPTY = grid(["0000"] * 4)
# Image A (positive). Prediction p >= 0.5: 1100/1100/0000/0000 (0.5 itself counts, 0.4 not).
PROB_A = np.array(
    [[0.9, 0.8, 0.1, 0.0], [0.6, 0.5, 0.4, 0.0], [0.0] * 4, [0.0] * 4], dtype=np.float16
)
PSEUDO_A = grid(["0110", "0110", "0000", "0000"])  # tp 2, fp 2, fn 2, tn 10
TRUTH_A = grid(["1000", "1000", "1000", "0000"])  # tp 2, fp 2, fn 1, tn 11
# Image B (negative): two predicted pixels, empty pseudo-mask -> tp 0, fp 2, fn 0, tn 14.
PROB_B = np.where(grid(["0000", "0011", "0000", "0000"]), 0.7, 0.2).astype(np.float16)
# Image C (negative): nothing predicted -> tn 16.
PROB_C = np.full((4, 4), 0.3, dtype=np.float16)
# Image D (positive): nothing predicted, one pseudo-mask pixel -> fn 1, tn 15.
PSEUDO_D = grid(["0000", "0000", "0100", "0000"])


def write_image(tmp_path, name, split, label, head_prob, prob, pseudo, truth=None) -> dict:
    np.save(tmp_path / f"{name}.npy", prob)
    write_png(tmp_path / f"{name}_pseudo.png", pseudo)
    row = {
        "name": name,
        "split": split,
        "label": label,
        "prob_path": str(tmp_path / f"{name}.npy"),
        "head_prob": head_prob,
        "pseudo_path": str(tmp_path / f"{name}_pseudo.png"),
        "truth_path": "",
    }
    if truth is not None:
        write_png(tmp_path / f"{name}_truth.png", truth)
        row["truth_path"] = str(tmp_path / f"{name}_truth.png")
    return row


@pytest.fixture
def rows(tmp_path) -> list[dict]:
    return [
        write_image(tmp_path, "A", "val", 1, 0.9, PROB_A, PSEUDO_A, TRUTH_A),
        write_image(tmp_path, "B", "val", 0, 0.6, PROB_B, EMPTY),
        write_image(tmp_path, "C", "val", 0, 0.1, PROB_C, EMPTY),
        write_image(tmp_path, "D", "val", 1, 0.4, np.zeros((4, 4), np.float16), PSEUDO_D),
        # a test split with one positive image only, head probability exactly at 0.5
        write_image(tmp_path, "E", "test", 1, 0.5, PROB_A, PSEUDO_A),
    ]


def test_predicted_mask_threshold_is_inclusive():
    assert predicted_mask(PROB_A).tolist() == grid(["1100", "1100", "0000", "0000"]).tolist()
    assert np.count_nonzero(predicted_mask(PROB_A, 0.55)) == 3
    with pytest.raises(ValueError, match="NaN"):
        predicted_mask(np.array([[np.nan]]))


def test_has_path():
    assert has_path("a.png")
    assert not has_path("")
    assert not has_path(None)
    assert not has_path(math.nan)


def test_per_image_counts_and_scores_by_hand(rows):
    table = evaluate_images(rows)[0].set_index("name")
    a = table.loc["A"]
    assert (a.pseudo_tp, a.pseudo_fp, a.pseudo_fn, a.pseudo_tn) == (2, 2, 2, 10)
    assert a.pseudo_iou == pytest.approx(2 / 6)
    assert a.pseudo_dice == pytest.approx(4 / 8)
    assert a.pseudo_precision == pytest.approx(2 / 4)
    assert a.pseudo_recall == pytest.approx(2 / 4)
    assert a.pseudo_pixel_accuracy == pytest.approx(12 / 16)
    assert (a.truth_tp, a.truth_fp, a.truth_fn, a.truth_tn) == (2, 2, 1, 11)
    assert a.truth_iou == pytest.approx(2 / 5)
    assert a.truth_dice == pytest.approx(4 / 7)
    assert a.truth_precision == pytest.approx(2 / 4)
    assert a.truth_recall == pytest.approx(2 / 3)
    assert a.truth_pixel_accuracy == pytest.approx(13 / 16)
    assert a.pred_area == 4 and a.n_pixels == 16 and a.pred_area_fraction == 0.25
    assert bool(a.any_positive_pixel) and a.head_prob == 0.9 and a.label == 1
    b = table.loc["B"]
    assert (b.pseudo_tp, b.pseudo_fp, b.pseudo_fn, b.pseudo_tn) == (0, 2, 0, 14)
    assert b.pseudo_pixel_accuracy == pytest.approx(14 / 16)
    assert math.isnan(b.truth_iou)  # B has no ground truth
    c = table.loc["C"]
    assert not c.any_positive_pixel and c.pred_area == 0
    d = table.loc["D"]
    assert (d.pseudo_tp, d.pseudo_fp, d.pseudo_fn, d.pseudo_tn) == (0, 0, 1, 15)
    assert d.pseudo_iou == 0.0 and d.pseudo_precision == 1.0 and d.pseudo_recall == 0.0
    assert list(table.index) == ["A", "B", "C", "D", "E"]
    assert list(table["split"]) == ["val"] * 4 + ["test"]


def test_threshold_argument(rows):
    table, _ = evaluate_images(rows[:1], threshold=0.55)
    assert table.loc[0, "pred_area"] == 3
    assert (table.loc[0, "pseudo_tp"], table.loc[0, "pseudo_fp"]) == (1, 2)


def test_positive_mean_differs_from_pooled(rows):
    val = summarize(*evaluate_images(rows))["val"]
    pos, pooled = val["pseudo"]["positive_mean"], val["pseudo"]["pooled"]
    # positive images A (iou 1/3) and D (iou 0); negatives B and C are skipped
    assert pos["iou"] == pytest.approx((2 / 6 + 0) / 2)
    assert pos["dice"] == pytest.approx((4 / 8 + 0) / 2)
    assert pos["precision"] == pytest.approx((0.5 + 1.0) / 2)
    assert pos["recall"] == pytest.approx((0.5 + 0.0) / 2)
    assert pos["pixel_accuracy"] == pytest.approx((12 / 16 + 15 / 16) / 2)
    assert val["pseudo"]["n_positive"] == 2 and val["pseudo"]["n_images"] == 4
    assert val["pseudo"]["n_positive_empty_reference"] == 0
    # pooled over A, B, C, D: tp 2, fp 4, fn 3, tn 55
    assert {k: pooled[k] for k in ("tp", "fp", "fn", "tn")} == {
        "tp": 2,
        "fp": 4,
        "fn": 3,
        "tn": 55,
    }
    assert pooled["iou"] == pytest.approx(2 / 9)
    assert pooled["dice"] == pytest.approx(4 / 11)
    assert pooled["precision"] == pytest.approx(2 / 6)
    assert pooled["recall"] == pytest.approx(2 / 5)
    assert pooled["pixel_accuracy"] == pytest.approx(57 / 64)
    assert pos["iou"] != pytest.approx(pooled["iou"])


def test_all_positive_baseline_and_two_class_miou(rows):
    val = summarize(*evaluate_images(rows))["val"]
    # every pixel of A (pseudo-mask 4 of 16 px) and D (1 of 16) predicted positive
    baseline = val["pseudo"]["all_positive_baseline"]
    assert baseline["iou"] == pytest.approx((4 / 16 + 1 / 16) / 2)
    assert baseline["dice"] == pytest.approx((2 * 4 / 20 + 2 * 1 / 17) / 2)
    # pooled tp 2, fp 4, fn 3, tn 55: background IoU 55 / 62, mIoU over the two classes
    pooled = val["pseudo"]["pooled"]
    assert pooled["background_iou"] == pytest.approx(55 / 62)
    assert pooled["miou"] == pytest.approx((2 / 9 + 55 / 62) / 2)


def test_a_negative_image_gets_no_iou_dice_precision_or_recall(rows, tmp_path):
    # on its empty reference they would be 1 (C: nothing predicted) or 0 (B): no score to average
    table, _ = evaluate_images([rows[0], *rows[1:3], {**rows[0], "name": "N", "label": 0}])
    negatives = table[table["label"] == 0]
    for ref in ("pseudo", "truth"):
        for metric in ("iou", "dice", "precision", "recall"):
            assert negatives[f"{ref}_{metric}"].isna().all(), f"{ref}_{metric}"
            assert table[f"{ref}_{metric}"].iloc[0] > 0  # the positive image keeps its scores
    path = tmp_path / "per_image.csv"
    table.to_csv(path, index=False)
    cells = pd.read_csv(path, dtype=str, keep_default_na=False).set_index("name")
    assert (cells.loc[["B", "C"], "pseudo_iou"] == "").all()  # empty cells, not 1.0 or 0.0
    # the summary averages positive images only, so the blank cells change nothing there
    assert summarize(table)["val"]["pseudo"]["positive_mean"]["iou"] == pytest.approx(2 / 6)


def test_share_of_negative_images_with_positive_pixels_and_area(rows):
    val = summarize(*evaluate_images(rows))["val"]
    assert (val["n_images"], val["n_positive"], val["n_negative"]) == (4, 2, 2)
    assert val["negative_images_with_positive_pixels"] == 0.5  # B has predicted pixels, C none
    assert "negative_fp_rate" not in val  # a share of images, not a false-positive pixel rate
    assert val["negative_mean_area_fraction"] == pytest.approx((2 / 16 + 0) / 2)
    assert val["positive_mean_area_fraction"] == pytest.approx((4 / 16 + 0) / 2)


def test_head_accuracy_and_auc(rows):
    summary = summarize(*evaluate_images(rows))
    # val: A 0.9 (1, right), D 0.4 (1, wrong), B 0.6 (0, wrong), C 0.1 (0, right)
    assert summary["val"]["head_accuracy"] == 0.5
    # positive/negative pairs ranked right: 0.9>0.6, 0.9>0.1, 0.4>0.1 (not 0.4>0.6): 3 of 4
    assert summary["val"]["head_auc"] == 0.75
    # test: one positive image at exactly 0.5 counts as predicted positive; AUC undefined
    assert summary["test"]["head_accuracy"] == 1.0
    assert summary["test"]["head_auc"] is None


def test_nan_becomes_none_and_json_ready(rows):
    summary = summarize(*evaluate_images(rows))
    test = summary["test"]
    assert test["negative_images_with_positive_pixels"] is None  # no negative image
    assert test["negative_mean_area_fraction"] is None
    assert "truth" not in test  # no ground truth in this split
    negatives_only = summarize(*evaluate_images(rows[1:3]))["val"]
    assert all(v is None for v in negatives_only["pseudo"]["positive_mean"].values())
    assert set(negatives_only["pseudo"]["positive_mean"]) == set(METRICS)
    assert negatives_only["head_auc"] is None
    text = json.dumps(summary, allow_nan=False)  # raises on NaN
    assert json.loads(text) == summary
    assert type(summary["val"]["n_images"]) is int
    assert type(summary["val"]["pseudo"]["pooled"]["tp"]) is int


def test_mixed_truth_summarised_over_images_with_truth(rows):
    val = summarize(*evaluate_images(rows))["val"]
    truth = val["truth"]
    assert truth["n_images"] == 1 and truth["n_positive"] == 1  # only A has ground truth
    assert truth["positive_mean"]["iou"] == pytest.approx(2 / 5)
    assert truth["pooled"]["iou"] == pytest.approx(2 / 5)
    assert (truth["pooled"]["fn"], truth["pooled"]["tn"]) == (1, 11)


def test_missing_truth_has_no_truth_columns_or_keys(rows):
    no_truth = [{k: v for k, v in r.items() if k != "truth_path"} for r in rows[1:]]
    table, _ = evaluate_images(no_truth)
    assert not [c for c in table.columns if c.startswith("truth")]
    assert "pseudo_iou" in table.columns
    summary = summarize(table)
    assert all("truth" not in entry for entry in summary.values())
    assert all("pseudo" in entry for entry in summary.values())


def test_rows_from_csv_with_empty_truth_cells(rows, tmp_path):
    path = tmp_path / "rows.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    frame = pd.read_csv(path)  # empty truth_path cells come back as NaN
    assert frame["truth_path"].isna().sum() == 4
    table, _ = evaluate_images(frame)
    assert table["truth_tp"].notna().tolist() == [True, False, False, False, False]
    tuples, _ = evaluate_images(frame.itertuples(index=False))  # objects with attributes
    pd.testing.assert_frame_equal(tuples, table)


def test_bad_inputs(rows, tmp_path):
    with pytest.raises(ValueError, match="label"):
        evaluate_images([{**rows[0], "label": 2}])
    with pytest.raises(KeyError, match="pseudo_path"):
        evaluate_images([{k: v for k, v in rows[0].items() if k != "pseudo_path"}])
    write_png(tmp_path / "small.png", np.zeros((2, 2), dtype=bool))
    with pytest.raises(ValueError, match="shape"):
        evaluate_images([{**rows[0], "pseudo_path": str(tmp_path / "small.png")}])


def test_summary_lines_put_each_split_and_reference_in_words(rows):
    lines = summary_lines(summarize(evaluate_images(rows)[0]))
    assert lines[0] == (
        "val: 4 images (2 positive); head accuracy 0.5000, ROC AUC 0.7500; "
        "negative images with positive pixels 0.5000 of 2"
    )
    assert lines[1].startswith("val vs pseudo: IoU positive mean 0.1667 (all-positive baseline ")
    assert lines[2].startswith("val vs truth: IoU positive mean 0.4000")
    assert "ROC AUC undefined" in lines[3] and "of 0" in lines[3]  # test: one positive image
    assert not any("{" in line for line in lines)  # no raw dict


#: Names replaced by ones that say what was measured, and where they must not come back.
RETIRED = {
    r"\bnegative_fp_rate\b": "negative_images_with_positive_pixels",
    r"\bval_iou\b": "val_iou_vs_pseudo_pooled / val_iou_vs_truth_pooled",
    r"\bval_iou_positive_mean\b": "val_iou_vs_pseudo_positive_mean / ..._vs_truth_...",
    r"\bmicro\b|_micro\b": "pooled",
}


def test_retired_names_do_not_come_back():
    repo = Path(__file__).resolve().parents[1]
    files = [repo / "README.md", repo / "Snakefile", *(repo / "src").rglob("*.py")]
    files += [f for f in (repo / "workflow").rglob("*") if f.suffix in {".py", ".smk", ".rst"}]
    files += [repo / "workflow" / "schemas" / "config.schema.yaml"]
    found = [
        f"{f.relative_to(repo)}: {pattern} (now {new})"
        for f in files
        for pattern, new in RETIRED.items()
        if re.search(pattern, f.read_text(encoding="utf-8"))
    ]
    assert not found
