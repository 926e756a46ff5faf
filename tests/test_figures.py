"""Tests of the result figures: exact colours and values, PNG output, byte-identical redraws."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image
from report_html import render_caption

from histo_wsss.classes import IGNORE, LabelSpace, class_colors
from histo_wsss.demo import DemoSpec, render
from histo_wsss.evaluation import predicted_labels
from histo_wsss.figures import (
    BINARY,
    ERROR_COLORS,
    MULTICLASS_ERROR_COLORS,
    SCORE_CMAP,
    UNCERTAINTY_CMAP,
    draw_metrics_table,
    error_map_rgb,
    error_maps,
    image_scores,
    label_error_rgb,
    learning_curves,
    load_example,
    metrics_table,
    metrics_table_rows,
    overlay,
    palette_of,
    pseudo_mask_steps,
    segmentation_panels,
    stain_sheet,
    uncertainty,
    uncertainty_maps,
)
from histo_wsss.io import write_csv, write_png
from histo_wsss.metrics import confusion_rows, label_confusion, mean_iou
from histo_wsss.qupath import class_labels
from histo_wsss.refine import STEPS

WHITE, RED, BLUE, BLACK = (255, 255, 255), (255, 0, 0), (0, 0, 255), (0, 0, 0)


def grid(rows: list[str]) -> np.ndarray:
    return np.array([[c == "1" for c in r] for r in rows])


def example(seed: int, size: int = 16) -> dict:
    rng = np.random.default_rng(seed)
    prob = rng.random((size, size)).astype(np.float16)
    pseudo = np.zeros((size, size), dtype=bool)
    pseudo[size // 4 : size // 2, size // 4 :] = True
    return {
        "name": f"img{seed}",
        "image": rng.integers(0, 256, (size, size, 3), dtype=np.uint8),
        "prob": prob,
        "pseudo": pseudo,
        "truth": np.rot90(pseudo).copy(),
    }


def drawn_twice(tmp_path, draw) -> bytes:
    """Draw into two files; check both are valid PNGs with identical bytes; return them."""
    first, second = tmp_path / "a.png", tmp_path / "b.png"
    draw(first)
    draw(second)
    with Image.open(first) as img:
        assert img.format == "PNG" and img.width > 100 and img.height > 100
    data = first.read_bytes()
    assert data == second.read_bytes()
    return data


def test_error_map_rgb_colours_exact():
    pred = grid(["1100", "1100", "0000", "0000"])
    ref = grid(["0110", "0110", "0000", "0000"])
    rgb = error_map_rgb(pred, ref)
    assert rgb.dtype == np.uint8 and rgb.shape == (4, 4, 3)
    expected = np.zeros((4, 4, 3), dtype=np.uint8)
    expected[:2, 0] = RED  # predicted, not in reference
    expected[:2, 1] = WHITE  # both
    expected[:2, 2] = BLUE  # missed
    np.testing.assert_array_equal(rgb, expected)
    assert ERROR_COLORS == {"TP": WHITE, "FP": RED, "FN": BLUE, "TN": BLACK}
    # 0/255 uint8 masks are accepted as well
    as_uint8 = error_map_rgb(pred.astype(np.uint8) * 255, ref.astype(np.uint8) * 255)
    np.testing.assert_array_equal(as_uint8, expected)
    with pytest.raises(ValueError, match="shape"):
        error_map_rgb(pred, ref[:2])


def test_uncertainty_exact_values():
    p = np.array([0.0, 0.25, 0.5, 0.75, 1.0])
    assert uncertainty(p[None]).tolist() == [[0.0, 0.5, 1.0, 0.5, 0.0]]
    half = uncertainty(np.full((2, 2), 0.5, dtype=np.float16))
    assert half.tolist() == [[1.0, 1.0], [1.0, 1.0]]
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        uncertainty(np.array([[1.5]]))


def test_overlay_blends_only_inside_mask():
    image = np.full((2, 2, 3), 100, dtype=np.uint8)
    out = overlay(image, grid(["10", "00"]), color=(200, 0, 0), alpha=0.5)
    assert out[0, 0].tolist() == [150, 50, 50]
    assert out[1, 1].tolist() == [100, 100, 100]


def test_segmentation_panels_png_reproducible(tmp_path):
    examples = [example(1), example(2)]
    data = drawn_twice(tmp_path, lambda p: segmentation_panels(examples, p))
    without_truth = [{k: v for k, v in ex.items() if k != "truth"} for ex in examples]
    segmentation_panels(without_truth, tmp_path / "c.png")
    with Image.open(tmp_path / "c.png") as small, Image.open(tmp_path / "a.png") as big:
        assert small.width < big.width  # no ground-truth column
    assert data
    segmentation_panels(examples, tmp_path / "d.png", threshold=0.9)
    assert (tmp_path / "d.png").read_bytes() != data  # the threshold changes the drawing


def test_error_maps_png_reproducible(tmp_path):
    examples = [
        {
            "name": ex["name"],
            "image": ex["image"],
            "pred": ex["prob"] >= 0.5,
            "reference": ex["truth"],
        }
        for ex in (example(4), example(5))
    ]
    drawn_twice(tmp_path, lambda p: error_maps(examples, p, title="vs ground truth"))
    with pytest.raises(KeyError, match="reference"):
        error_maps([{"pred": examples[0]["pred"]}], tmp_path / "c.png")


def test_uncertainty_maps_png_reproducible(tmp_path):
    examples = [example(7), example(8)]
    drawn_twice(tmp_path, lambda p: uncertainty_maps(examples, p))


def test_load_example_reads_files(tmp_path):
    ex = example(9)
    write_png(tmp_path / "img.png", ex["image"])
    np.save(tmp_path / "prob.npy", ex["prob"])
    write_png(tmp_path / "pseudo.png", ex["pseudo"])
    loaded = load_example(tmp_path / "img.png", tmp_path / "prob.npy", tmp_path / "pseudo.png")
    assert set(loaded) == {"name", "image", "prob", "pseudo"}
    np.testing.assert_array_equal(loaded["image"], ex["image"])
    np.testing.assert_array_equal(loaded["pseudo"], ex["pseudo"])
    np.testing.assert_array_equal(loaded["prob"], ex["prob"].astype(np.float32))
    write_png(tmp_path / "truth.png", ex["truth"])
    with_truth = load_example(
        tmp_path / "img.png", tmp_path / "prob.npy", tmp_path / "pseudo.png", tmp_path / "truth.png"
    )
    np.testing.assert_array_equal(with_truth["truth"], ex["truth"])


def reference(iou, dice, pooled_iou, pooled_dice) -> dict:
    return {
        "n_images": 4,
        "positive_mean": {"iou": iou, "dice": dice},
        "pooled": {"iou": pooled_iou, "dice": pooled_dice},
    }


SUMMARY = {
    "val": {
        "n_images": 4,
        "n_positive": 2,
        "head_accuracy": 0.75,
        "head_auc": 0.5,
        "negative_images_with_positive_pixels": 0.5,
        "pseudo": reference(0.6, 0.7, 0.4, 0.5),
        "truth": reference(0.3, 0.35, 0.2, 0.25),
    },
    "test": {
        "n_images": 3,
        "n_positive": 3,
        "head_accuracy": 1.0,
        "head_auc": None,
        "negative_images_with_positive_pixels": None,
        "pseudo": reference(None, None, 0.1, 0.2),
    },
}


def test_metrics_table_rows_content():
    table = metrics_table_rows(SUMMARY)
    assert list(table["split"]) == ["val", "test"]
    assert list(table.columns[:5]) == [
        "split",
        "n_images",
        "n_positive",
        "pseudo_iou_positive_mean",
        "truth_iou_positive_mean",
    ]
    val, test = table.iloc[0], table.iloc[1]
    assert (val.n_images, val.n_positive, test.n_images) == (4, 2, 3)
    assert (val.pseudo_iou_positive_mean, val.truth_iou_positive_mean) == (0.6, 0.3)
    assert (val.pseudo_dice_positive_mean, val.truth_dice_positive_mean) == (0.7, 0.35)
    assert (val.pseudo_iou_pooled, val.truth_iou_pooled) == (0.4, 0.2)
    assert (val.pseudo_dice_pooled, val.truth_dice_pooled) == (0.5, 0.25)
    assert (val.head_accuracy, val.head_auc) == (0.75, 0.5)
    assert val.negative_images_with_positive_pixels == 0.5
    assert test.pseudo_iou_pooled == 0.1 and test.head_accuracy == 1.0
    undefined = ("pseudo_iou_positive_mean", "truth_iou_pooled", "head_auc")
    for col in (*undefined, "negative_images_with_positive_pixels"):
        assert math.isnan(test[col])  # None or missing -> NaN
    no_truth = metrics_table_rows(
        {"val": {k: v for k, v in SUMMARY["val"].items() if k != "truth"}}
    )
    assert not [c for c in no_truth.columns if c.startswith("truth")]


def test_metrics_table_csv_holds_scores_rounded_to_four_decimals_under_new_names(tmp_path):
    summary = {"val": {**SUMMARY["val"], "head_auc": 0.123456789012345}}
    write_csv(tmp_path / "t.csv", metrics_table_rows(summary))
    text = (tmp_path / "t.csv").read_text()
    assert ",0.1235," in text and "0.12345" not in text
    assert "negative_fp_rate" not in text and "micro" not in text


def test_metrics_table_png_reproducible(tmp_path):
    drawn_twice(tmp_path, lambda p: metrics_table(SUMMARY, p))


def test_every_metric_label_of_the_metrics_table_fits_its_cell():
    fig = Figure(layout="constrained")
    FigureCanvasAgg(fig)
    tab = draw_metrics_table(fig, SUMMARY)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    labels = {r: c for (r, col), c in tab.get_celld().items() if col == 0 and r > 0}
    assert len(labels) == len(metrics_table_rows(SUMMARY).columns) - 1
    for cell in labels.values():
        text, box = cell.get_text().get_window_extent(renderer), cell.get_window_extent(renderer)
        assert box.x0 <= text.x0 and text.x1 <= box.x1, cell.get_text().get_text()


def test_learning_curves_png_reproducible(tmp_path):
    epochs = np.arange(4)
    classifier = pd.DataFrame(
        {
            "epoch": epochs + 1,
            "train_loss": [0.9, 0.7, 0.6, 0.5],
            "val_loss": [1.0, 0.8, 0.7, 0.7],
            "val_accuracy": [0.5, 0.6, 0.7, 0.75],
            "val_auc": [0.5, math.nan, 0.8, 0.85],
            "lr": [1e-3, 1e-2, 5e-3, 1e-4],
        }
    )
    segmentation = pd.DataFrame(
        {
            "epoch": epochs + 1,
            "train_loss": [1.2, 1.0, 0.9, 0.8],
            "val_loss": [1.3, 1.1, 1.0, 1.0],
            "val_iou_vs_pseudo_pooled": [0.1, 0.2, 0.3, 0.35],
            "val_iou_vs_pseudo_positive_mean": [0.2, 0.3, 0.4, 0.45],
            "val_head_accuracy": [0.5, 0.6, 0.7, 0.7],
            "lr": [5e-4] * 4,
            "seconds": [1.0, 2.0, 3.0, 4.0],
        }
    )
    classifier.to_csv(tmp_path / "classifier.csv", index=False)
    segmentation.to_csv(tmp_path / "segmentation.csv", index=False)
    csvs = (tmp_path / "classifier.csv", tmp_path / "segmentation.csv")
    drawn_twice(tmp_path, lambda p: learning_curves(*csvs, p))
    vs_truth = segmentation.rename(columns=lambda c: c.replace("vs_pseudo", "vs_truth"))
    vs_truth.to_csv(tmp_path / "truth.csv", index=False)
    learning_curves(csvs[0], tmp_path / "truth.csv", tmp_path / "truth.png")  # ground_truth
    old = segmentation.rename(columns={"val_iou_vs_pseudo_pooled": "val_iou"})
    old.to_csv(tmp_path / "bad.csv", index=False)  # the old, unqualified name
    with pytest.raises(ValueError, match="val_iou_vs_pseudo_pooled"):
        learning_curves(csvs[0], tmp_path / "bad.csv", tmp_path / "c.png")


def test_example_rows_name_their_iou_and_the_negative_row_its_predicted_share(tmp_path):
    examples = [example(1) | {"iou": 0.25}, example(2) | {"iou": 0.5}, example(3)]
    examples[-1] |= {"negative": True, "truth": np.zeros((16, 16), bool)}
    examples[-1]["prob"] = np.where(np.arange(16) < 4, 0.9, 0.1)[None, :].repeat(16, 0)
    text = segmentation_panels(examples, tmp_path / "p.png")
    assert "img1\nIoU vs truth 0.250" in text and "img2\nIoU vs truth 0.500" in text
    assert "img3\nnegative image\n25.0% predicted" in text
    assert "ground truth outline" in text and "probability" in text  # the colour bar
    for ex in examples:
        ex["pred"], ex["reference"] = ex["prob"] >= 0.5, ex["pseudo"]
    text = error_maps(examples, tmp_path / "e.png", reference="pseudo")
    assert "prediction vs pseudo" in text and "img1\nIoU vs pseudo 0.250" in text
    assert "FP: predicted, not in pseudo" in text  # the legend says what the title says
    assert not any("reference" in t or "truth" in t for t in text)
    text = uncertainty_maps(examples, tmp_path / "u.png")
    assert "img3\nnegative image\n25.0% predicted" in text and "uncertainty" in text


def test_each_example_figure_has_a_caption_of_its_own_that_names_what_it_draws(tmp_path):
    examples = [example(1) | {"iou": 0.25}, example(2) | {"iou": 0.5}]
    for ex in examples:
        ex["pred"], ex["reference"] = ex["prob"] >= 0.5, ex["truth"]
    drawn = {
        "segmentation_examples": segmentation_panels(examples, tmp_path / "s.png"),
        "error_maps": error_maps(examples, tmp_path / "e.png"),
        "uncertainty_maps": uncertainty_maps(examples, tmp_path / "u.png"),
    }
    colour_maps = {"probability": SCORE_CMAP, "uncertainty": UNCERTAINTY_CMAP}
    params = {
        "threshold": 0.5,
        "n_examples": 2,
        "labels": {"classes": ["lesion"], "ignore_index": None},
    }
    for figure_number, (kind, text) in enumerate(drawn.items(), start=2):
        caption = render_caption("example_figures", params, wildcards={"kind": kind})
        caption = " ".join(caption.split())
        assert caption.startswith(f"Figure {figure_number} of the paper"), caption
        assert ("outline (cyan)" in caption) == ("ground truth outline" in text), kind
        bars = [cmap for label, cmap in colour_maps.items() if label in text]
        assert [c for c in colour_maps.values() if c in caption] == bars, kind
        assert ("true positive" in caption) == any(t.startswith("TP:") for t in text), kind


def test_the_pseudo_mask_steps_caption_names_the_step_the_figure_calls_the_pseudo_mask(tmp_path):
    rng = np.random.default_rng(0)
    write_png(tmp_path / "im.png", rng.integers(0, 256, (24, 24, 3), dtype=np.uint8))
    np.save(tmp_path / "cam.npy", rng.random((24, 24)).astype(np.float16))
    write_png(tmp_path / "m.png", rng.random((24, 24)) > 0.5)
    files = {"im": str(tmp_path / "m.png")}
    for final in STEPS:
        text = pseudo_mask_steps(
            ["im"],
            {"im": str(tmp_path / "im.png")},
            {"im": str(tmp_path / "cam.npy")},
            dict.fromkeys(STEPS, files),
            final,
            files,
            tmp_path / "s.png",
            ious={"im": 0.5},
        )
        pseudo_mask = [t for t in text if "pseudo-mask" in t]
        assert pseudo_mask == [f"{final} (pseudo-mask)", f"{final} (pseudo-mask) outline"]
        assert "im\nIoU vs truth 0.500" in text and "CAM (over image)" in text  # colour bar
        labels = {"classes": ["lesion"], "ignore_index": None}
        caption = render_caption("pseudo_mask_steps", {"final_step": final, "labels": labels})
        assert f"the mask after **{final}**" in caption
        assert "the pseudo-mask's outline (pink)" in " ".join(caption.split())  # the legend's


def test_the_stain_sheet_shows_each_image_before_and_after_and_why_one_kept_its_colours(tmp_path):
    rng = np.random.default_rng(4)
    rows = [
        {
            "name": f"im{i}",
            "original": rng.integers(0, 256, (20, 24, 3), dtype=np.uint8),
            "normalized": rng.integers(0, 256, (20, 24, 3), dtype=np.uint8),
            "tissue": rng.random((20, 24)) > 0.3,
            "tissue_fraction": 0.7 - 0.68 * i,
            "normalized_ok": i == 0,
            "reason": "" if i == 0 else "tissue fraction 0.02 < 0.05",
        }
        for i in range(2)
    ]
    text = stain_sheet(rows, tmp_path / "a.png")
    assert {"original", "stain-normalized", "tissue mask"} <= set(text)
    assert "im0\ntissue 70%\nnormalized" in text
    assert "im1\ntissue 2%\nkept its colours:\ntissue fraction 0.02 < 0.05" in text
    drawn_twice(tmp_path, lambda p: stain_sheet(rows, p))


# --- K > 1 classes: the contract's files (label maps, (K, H, W) maps) on the multi-class demo --

TISSUES = LabelSpace(("tumor", "stroma", "lymphocytes"), ignore_index=255)
COLOURS = class_colors(TISSUES.classes)
PALETTE = palette_of(TISSUES, COLOURS)
DEMO = DemoSpec(n_images=8, size=64, seed=2, tissues=TISSUES.classes)


def tissue_example(index: int) -> dict:
    """A multi-class demo image, its truth labels (unlabelled white background), (3, H, W)
    probabilities near the truth, the pseudo-mask they give at a lower threshold, and CAMs
    that are zero for the classes not in its tags."""
    image, mask = render(DEMO, index)
    lut = np.full(256, IGNORE, np.uint8)
    lut[: TISSUES.k] = np.arange(1, TISSUES.k + 1)
    truth = lut[mask]
    rng = np.random.default_rng(index)
    onehot = np.stack([truth == c for c in range(1, TISSUES.k + 1)]).astype(np.float32)
    probs = np.clip(onehot * 0.45 + rng.random(onehot.shape) * 0.6, 0, 1).astype(np.float16)
    tagged = onehot.any(axis=(1, 2))[:, None, None]
    return {
        "name": f"tissue{index}",
        "image": image,
        "truth": truth,
        "prob": probs,
        "pseudo": predicted_labels(probs, 0.3),
        "cam": (probs * tagged).astype(np.float16),
    }


def colour_pixels(path, rgb) -> int:
    with Image.open(path) as img:
        pixels = np.asarray(img.convert("RGB")).reshape(-1, 3).astype(int)
    return int((np.abs(pixels - rgb).max(axis=1) <= 1).sum())


def test_class_colours_have_one_source():
    assert COLOURS == {
        "tumor": (31, 119, 180),
        "stroma": (255, 127, 14),
        "lymphocytes": (44, 160, 44),
    }
    binary = class_labels(LabelSpace(("lesion",)), class_colors(["normal", "lesion"]))[0]
    assert binary.color == (255, 127, 14)  # QuPath's, as before: tab10's second colour
    assert class_colors(TISSUES.classes, {"stroma": [1, 2, 3]})["stroma"] == (1, 2, 3)
    assert PALETTE.panel[1:] == tuple(COLOURS.values()) == PALETTE.overlay
    assert palette_of(LabelSpace(("lesion",)), {"lesion": (1, 2, 3)}) == replace(
        BINARY, space=LabelSpace(("lesion",))
    )  # K = 1 keeps the paper's white masks and red overlay
    with pytest.raises(ValueError, match="no colour for class"):
        palette_of(TISSUES, {"tumor": (1, 2, 3)})


def test_label_error_map_colours_each_kind_of_error():
    pred = np.array([[1, 2, 0, 3, 0, 2]], np.uint8)
    ref = np.array([[1, 1, 2, 0, 0, IGNORE]], np.uint8)
    kinds = ("TP", "wrong", "FN", "FP", "TN", "unlabelled")
    expected = [[list(MULTICLASS_ERROR_COLORS[k]) for k in kinds]]
    assert label_error_rgb(pred, ref).tolist() == expected
    assert MULTICLASS_ERROR_COLORS["wrong"] not in ERROR_COLORS.values()


def test_image_scores_are_each_images_miou():
    a, b = tissue_example(0), tissue_example(1)
    rows = pd.DataFrame(
        [
            *confusion_rows(label_confusion(a["pseudo"], a["truth"], 4), name="a"),
            *confusion_rows(label_confusion(b["pseudo"], b["truth"], 4), name="b"),
        ]
    )
    scores = image_scores(rows, 4)
    assert scores == {
        "a": mean_iou(label_confusion(a["pseudo"], a["truth"], 4)),
        "b": mean_iou(label_confusion(b["pseudo"], b["truth"], 4)),
    }
    assert 0 < scores["a"] < 1


def test_k3_figures_draw_each_class_in_its_colour_with_a_legend(tmp_path):
    examples = [tissue_example(i) | {"iou": 0.5 + 0.1 * i} for i in range(3)]
    for ex in examples:
        ex["pred"], ex["reference"] = predicted_labels(ex["prob"]), ex["truth"]
    assert any((ex["truth"] == IGNORE).any() for ex in examples)  # white background
    panels = segmentation_panels(examples, tmp_path / "s.png", palette=PALETTE)
    assert "tissue1\nmIoU vs truth 0.600" in panels  # the row says its score is the mIoU
    assert {*TISSUES.classes, "background", "unlabelled (not scored)"} <= set(panels)
    assert "prediction (max p ≥ 0.5)" in panels and "highest class probability" in panels
    for colour in COLOURS.values():  # panels and overlays in the class colours, not the binary
        assert colour_pixels(tmp_path / "s.png", colour) > 200, colour
    errors = error_maps(examples, tmp_path / "e.png", palette=PALETTE)
    assert "tissue2\nmIoU vs truth 0.700" in errors
    assert {"correct class", "wrong class", "unlabelled in truth: not scored"} <= set(errors)
    assert colour_pixels(tmp_path / "e.png", MULTICLASS_ERROR_COLORS["wrong"]) > 50
    text = uncertainty_maps(examples, tmp_path / "u.png", palette=PALETTE)
    assert "uncertainty 1 − 2|max p − 0.5|" in text
    drawn_twice(tmp_path, lambda p: segmentation_panels(examples, p, palette=PALETTE))


def test_k3_pseudo_mask_steps_draw_a_cam_per_class(tmp_path):
    names, images, cams, truth = [], {}, {}, {}
    steps = {s: {} for s in STEPS}
    for i in range(2):
        ex = tissue_example(i)
        name = ex["name"]
        names.append(name)
        write_png(tmp_path / f"{name}.png", ex["image"])
        np.save(tmp_path / f"{name}.npy", ex["cam"])
        TISSUES.write_labels(tmp_path / f"{name}_truth.png", ex["truth"])
        for step in STEPS:
            TISSUES.write_labels(tmp_path / f"{name}_{step}.png", ex["pseudo"])
            steps[step][name] = str(tmp_path / f"{name}_{step}.png")
        images[name], cams[name] = str(tmp_path / f"{name}.png"), str(tmp_path / f"{name}.npy")
        truth[name] = str(tmp_path / f"{name}_truth.png")
    absent = [not np.load(cams[n]).any(axis=(1, 2)).all() for n in names]
    assert any(absent)  # an image without every class: its other CAMs are zeros
    text = pseudo_mask_steps(
        names, images, cams, steps, "crf", truth, tmp_path / "p.png",
        ious=dict.fromkeys(names, 0.25), palette=PALETTE,
    )  # fmt: skip
    cam_texts = [t for t in text if t.startswith("CAM ")]  # a column per class, one colour bar
    assert cam_texts == [*(f"CAM {c}" for c in TISSUES.classes), "CAM (over image)"]
    assert "no CAM" in text and f"{names[0]}\nmIoU vs truth 0.250" in text
    assert {*TISSUES.classes, "crf (pseudo-mask) outline"} <= set(text)
    labels = {"classes": list(TISSUES.classes), "ignore_index": 255}
    caption = render_caption("pseudo_mask_steps", {"final_step": "crf", "labels": labels})
    assert "its mIoU against the real mask" in caption and '"no CAM"' in caption
