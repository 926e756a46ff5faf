"""Pseudo-masks for a shard of real (demo) images, their quality table, and the steps figure."""

import dataclasses

import cv2
import numpy as np
import pandas as pd
import pytest

from histo_wsss.classes import IGNORE, LabelSpace
from histo_wsss.demo import DemoSpec, render
from histo_wsss.figures import pick_examples, pseudo_mask_steps
from histo_wsss.io import read_mask, read_rgb, write_csv, write_png
from histo_wsss.patches import PatchParams, cut
from histo_wsss.pseudo_masks import (
    Item,
    class_scores,
    load_cams,
    negative_patch_boxes,
    quality_summary,
    refine_images,
)
from histo_wsss.refine import STEPS, RefineParams, refine
from histo_wsss.stain import tissue_mask

SPEC = DemoSpec(n_images=8, size=128, seed=5)
BINARY = LabelSpace(("lesion",))


@pytest.fixture(scope="module")
def shard(tmp_path_factory):
    """Three images (two positive, one negative) with CAMs that blur their true masks."""
    root = tmp_path_factory.mktemp("shard")
    items = []
    for i, positive in [(0, True), (1, True), (2, False)]:
        rgb, truth = render(SPEC, i, positive)
        name = f"img{i}"
        write_png(root / "images" / f"{name}.png", rgb)
        write_png(root / "tissue" / f"{name}.png", tissue_mask(rgb))
        write_png(root / "truth" / f"{name}.png", truth)
        cam = cv2.GaussianBlur(truth.astype(np.float32), (0, 0), 6)
        cam = (cam / max(cam.max(), 1e-6)).astype(np.float16)
        np.save(root / f"{name}.npy", cam[None])
        items.append(
            Item(
                name,
                str(root / "images" / f"{name}.png"),
                str(root / "tissue" / f"{name}.png"),
                str(root / f"{name}.npy"),
                (0,) if positive else (),
                str(root / "truth" / f"{name}.png"),
            )
        )
    table, confusion = refine_images(items, RefineParams(), root / "out", True, BINARY)
    return root, items, table, confusion


def test_masks_and_steps_are_written_for_every_image(shard):
    root, items, table, _ = shard
    assert list(table["name"]) == ["img0", "img1", "img2"]
    for item in items:
        mask = read_mask(root / "out" / "masks" / f"{item.name}.png")
        assert mask.shape == (128, 128)
        assert mask.any() == bool(item.tags)
        for step in STEPS:
            assert (root / "out" / "steps" / step / f"{item.name}.png").is_file()
        assert np.array_equal(mask, read_mask(root / "out" / "steps" / "crf" / f"{item.name}.png"))


def test_final_step_chooses_which_step_is_the_pseudo_mask(shard, tmp_path):
    root, items, *_ = shard
    params = RefineParams(final_step="small_objects")
    table, _ = refine_images(items[:1], params, tmp_path, False, BINARY)
    mask = read_mask(tmp_path / "masks" / "img0.png")
    assert np.array_equal(mask, read_mask(root / "out" / "steps" / "small_objects" / "img0.png"))
    assert not np.array_equal(mask, read_mask(root / "out" / "masks" / "img0.png"))
    assert not (tmp_path / "steps").exists()
    assert table["crf_area"].iloc[0] > 0  # the CRF still runs and is scored


def test_an_unlabelled_band_is_stored_and_left_out_of_the_scores(shard, tmp_path):
    root, items, plain, _ = shard
    params = RefineParams(background_quantile=0.2, final_step="small_objects")
    table, confusion = refine_images(items, params, tmp_path, True, BINARY)
    for item, row in zip(items, table.itertuples(), strict=True):
        labels = BINARY.read_labels(tmp_path / "masks" / f"{item.name}.png")
        unlabelled = labels == IGNORE
        assert unlabelled.any() == bool(item.tags)  # negatives: all background
        assert row.small_objects_unlabelled == pytest.approx(unlabelled.mean(), abs=1e-6)
        assert row.small_objects_area == pytest.approx((labels == 1).mean(), abs=1e-6)
        if not item.tags:
            continue
        truth = read_mask(root / "truth" / f"{item.name}.png")
        kept = ~unlabelled
        tp = (truth & (labels == 1))[kept].sum()
        fp = (~truth & (labels == 1))[kept].sum()
        fn = (truth & (labels == 0))[kept].sum()
        assert (row.small_objects_tp, row.small_objects_fp, row.small_objects_fn) == (tp, fp, fn)
        assert row.small_objects_iou == pytest.approx(tp / (tp + fp + fn), abs=1e-6)
    # the band leaves out uncertain pixels: less of the background is lesion than with one threshold
    false_omission = {
        name: t["small_objects_fn"].sum() / (t["small_objects_fn"] + t["small_objects_tn"]).sum()
        for name, t in (("band", table), ("plain", plain))
    }
    assert false_omission["band"] < false_omission["plain"]


def test_untagged_patches_are_background_and_out_of_the_threshold(shard, tmp_path):
    """Patches tagged from the real mask (32 px): the untagged ones are background in every
    step (with an unlabelled band too), and the threshold's quantile is taken over the rest of
    the tissue, exactly as the refinement of the tissue mask without them; the boxes come from
    the patch table."""
    root, items, plain, _ = shard
    item = items[0]
    rgb = read_rgb(item.image)
    truth = read_mask(item.truth)
    params = PatchParams(size=32, stride=32, tags="mask")
    rows = [row for row, _ in cut(item.name, rgb, "", params, BINARY, truth.astype(np.uint8))]
    boxes = negative_patch_boxes(pd.DataFrame(rows), 32)
    assert set(boxes) == {item.name}
    negative = np.zeros(truth.shape, bool)
    for y, x, h, w in boxes[item.name]:
        negative[y : y + h, x : x + w] = True
    assert negative.any() and not negative.all()
    assert (truth[negative].mean() < 0.05) and truth[~negative].mean() > truth.mean()
    with_boxes = Item(*dataclasses.astuple(item)[:-1], boxes[item.name])
    table, _ = refine_images([with_boxes], RefineParams(), tmp_path, True, BINARY)
    tissue = read_mask(item.tissue) & ~negative
    cams = load_cams(item.cam, truth.shape, 1)
    expected = refine(rgb, cams, item.tags, RefineParams(), tissue)
    for step in STEPS:
        labels = BINARY.read_labels(tmp_path / "steps" / step / f"{item.name}.png")
        assert np.array_equal(labels, expected[step]), step
        assert not labels[negative].any(), step
    # the blurred CAM spills into the untagged patches: keeping it out removes false positives
    assert table["threshold_fp"].iloc[0] < plain["threshold_fp"].iloc[0]
    # with an unlabelled band they are sure background, not unlabelled as non-tissue is
    band = RefineParams(background_quantile=0.2)
    refine_images([with_boxes], band, tmp_path / "band", True, BINARY)
    for step in STEPS:
        labels = BINARY.read_labels(tmp_path / "band" / "steps" / step / f"{item.name}.png")
        assert (labels[negative] == 0).all() and (labels == IGNORE).any(), step


def test_an_empty_shard_writes_readable_tables(tmp_path):
    table, confusion = refine_images([], RefineParams(), tmp_path, True, BINARY)
    write_csv(tmp_path / "t.csv", table)
    write_csv(tmp_path / "c.csv", confusion)
    table = pd.read_csv(tmp_path / "t.csv")
    assert table.empty and {"name", "positive", "seconds"} <= set(table.columns)
    assert list(pd.read_csv(tmp_path / "c.csv").columns) == [
        "name", "step", "truth_label", "pred_label", "pixels",
    ]  # fmt: skip


def test_quality_is_scored_per_step_and_a_blurred_truth_cam_scores_well(shard):
    _, _, table, _ = shard
    positives = table[table["positive"] == 1]
    # the 0.5-quantile threshold keeps half of the tissue: it finds (nearly) all of a lesion that
    # covers less than half of it, at a precision of about the lesion's share of that half
    assert (positives["threshold_recall"] > 0.95).all()
    assert (positives["threshold_area"] > positives["crf_area"] * 0.5).all()
    assert (positives["crf_iou"] > 0.3).all()
    assert set(f"{s}_{m}" for s in STEPS for m in ("iou", "dice", "tp")) <= set(table.columns)
    # the negative image: empty masks, empty truth
    negative = table[table["positive"] == 0].iloc[0]
    assert negative["crf_area"] == 0 and negative["crf_tp"] == 0 and negative["crf_fp"] == 0
    # its scores on an empty reference would only be 1 or 0: left empty
    assert negative[[f"{s}_{m}" for s in STEPS for m in ("iou", "dice")]].isna().all()


def test_summary_per_split_and_all_uses_positive_images_only_and_pools_counts(shard):
    _, _, table, confusion = shard
    table = table.assign(split=["val", "train", "train"])  # img0 val, img1 train, negative train
    summary = quality_summary(table, confusion, 2)
    assert list(summary["split"]) == ["train"] * 4 + ["val"] * 4 + ["all"] * 4
    assert list(summary["step"]) == list(STEPS) * 3
    assert list(summary["n_images"]) == [1] * 8 + [2] * 4
    rows = summary.set_index(["split", "step"])
    for split, names in (("train", ["img1"]), ("val", ["img0"]), ("all", ["img0", "img1"])):
        crf = rows.loc[(split, "crf")]
        positives = table[table["name"].isin(names)]
        assert crf["iou_mean"] == pytest.approx(positives["crf_iou"].mean(), abs=1e-6)
        tp, fp, fn = (positives[f"crf_{k}"].sum() for k in ("tp", "fp", "fn"))
        assert crf["iou_pooled"] == pytest.approx(tp / (tp + fp + fn), abs=1e-6)
        # K = 1: mIoU is the mean of the lesion's and the background's pooled IoUs
        tn = positives["crf_tn"].sum()
        background_iou = tn / (tn + fp + fn)
        assert crf["miou"] == pytest.approx((crf["iou_pooled"] + background_iou) / 2, abs=1e-6)
        weights = np.array([tn + fp, tp + fn]) / (tn + fp + tp + fn)
        fwiou = weights @ [background_iou, tp / (tp + fp + fn)]
        assert crf["fwiou"] == pytest.approx(fwiou, abs=1e-6)
    assert not [c for c in summary.columns if "micro" in c]  # one word, "pooled", everywhere
    scores = class_scores(table, confusion, ["lesion"]).set_index(["split", "step", "class"])
    assert list(scores.index.get_level_values("class")[:2]) == ["background", "lesion"]
    for split, step in rows.index:
        assert scores.loc[(split, step, "lesion"), "iou"] == rows.loc[(split, step), "iou_pooled"]


def test_summary_without_ground_truth_is_empty_not_an_error():
    table = pd.DataFrame({"name": ["a"], "split": ["train"], "positive": [1], "crf_area": [0.2]})
    confusion = pd.DataFrame(columns=["name", "step", "truth_label", "pred_label", "pixels"])
    assert quality_summary(table, confusion, 2).empty
    assert class_scores(table, confusion, ["lesion"]).empty


def test_cams_of_the_wrong_size_or_classes_are_a_clear_error(tmp_path):
    np.save(tmp_path / "c.npy", np.zeros((1, 10, 12), np.float16))
    with pytest.raises(ValueError, match=r"c.npy: CAM is 12x10, image is 16x16"):
        load_cams(tmp_path / "c.npy", (16, 16), 1)
    with pytest.raises(ValueError, match=r"c.npy: CAMs of shape \(1, 10, 12\), expected \(3, "):
        load_cams(tmp_path / "c.npy", (10, 12), 3)


def test_pick_examples_spreads_over_scores():
    scores = {f"n{i}": i / 10 for i in range(11)}
    assert pick_examples(scores, 3) == ["n0", "n5", "n10"]
    assert pick_examples({"b": 1.0, "a": 1.0}, 5) == ["a", "b"]


def test_steps_figure_is_byte_identical_when_redrawn(shard, tmp_path):
    root, items, *_ = shard
    names = [i.name for i in items[:2]]
    for item in items:  # the figure draws the map of the one class
        np.save(tmp_path / f"{item.name}.npy", np.load(item.cam)[0])
    files = {
        "images": {i.name: i.image for i in items},
        "cams": {i.name: str(tmp_path / f"{i.name}.npy") for i in items},
        "steps": {
            s: {i.name: str(root / "out" / "steps" / s / f"{i.name}.png") for i in items}
            for s in STEPS
        },
        "final_step": "crf",
        "truth": {i.name: i.truth for i in items},
    }
    for out in ("a.png", "b.png"):
        pseudo_mask_steps(names, *files.values(), tmp_path / out)
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()
    assert (tmp_path / "a.png").stat().st_size > 20_000


CLASSES = ("tumor", "stroma", "lymphocytes")
MULTI = LabelSpace(CLASSES, ignore_index=255)


@pytest.fixture(scope="module")
def multiclass_shard(tmp_path_factory):
    """Four multi-class demo images (their real masks as label maps, 255 off the tissue) with
    hand-made CAMs of their classes, refined with background ``tissue``."""
    root = tmp_path_factory.mktemp("multiclass")
    spec = DemoSpec(n_images=8, size=96, seed=5, tissues=CLASSES)
    items = []
    for i in range(4):
        rgb, mask = render(spec, i)
        name = f"m{i}"
        truth = np.where(mask == 255, 255, mask + 1).astype(np.uint8)
        present = tuple(int(v) for v in np.unique(mask) if v < len(CLASSES))
        cams = np.zeros((3, *mask.shape), np.float32)
        for c in present:
            cams[c] = cv2.GaussianBlur((mask == c).astype(np.float32), (0, 0), 5)
            cams[c] /= cams[c].max()
        write_png(root / "images" / f"{name}.png", rgb)
        write_png(root / "tissue" / f"{name}.png", tissue_mask(rgb))
        MULTI.write_labels(root / "truth" / f"{name}.png", truth)
        np.save(root / f"{name}.npy", cams.astype(np.float16))
        image, tissue, real = (str(root / d / f"{name}.png") for d in ("images", "tissue", "truth"))
        items.append(Item(name, image, tissue, str(root / f"{name}.npy"), present, real))
    params = RefineParams(background="tissue", final_step="small_objects")
    table, confusion = refine_images(items, params, root / "out", True, MULTI)
    return root, items, table.assign(split=["train", "train", "val", "test"]), confusion


def test_multiclass_pseudo_masks_hold_the_present_classes(multiclass_shard):
    root, items, table, _ = multiclass_shard
    for item in items:
        tissue = read_mask(item.tissue)
        final = MULTI.read_labels(root / "out" / "masks" / f"{item.name}.png")
        assert np.array_equal(
            final, MULTI.read_labels(root / "out" / "steps" / "small_objects" / f"{item.name}.png")
        )
        for step in STEPS:
            labels = MULTI.read_labels(root / "out" / "steps" / step / f"{item.name}.png")
            assert set(np.unique(labels)) <= {0, *(c + 1 for c in item.tags)}
            assert (labels[tissue] > 0).all() and not labels[~tissue].any()  # background tissue
    assert (table["positive"] == 1).all()


def hand_iou(pred: np.ndarray, truth: np.ndarray, label: int) -> float:
    scored = truth != 255
    inter = ((pred == label) & (truth == label) & scored).sum()
    union = (((pred == label) | (truth == label)) & scored).sum()
    return inter / union


def test_multiclass_quality_tables_match_hand_computed_scores(multiclass_shard):
    root, items, table, confusion = multiclass_shard
    summary = quality_summary(table, confusion, 4).set_index(["split", "step"])
    scores = class_scores(table, confusion, CLASSES).set_index(["split", "step", "class"])
    for split, names in (("train", ["m0", "m1"]), ("all", ["m0", "m1", "m2", "m3"])):
        for step in ("threshold", "crf"):
            # the maps and real masks of the split, side by side as one image
            pred = np.hstack(
                [MULTI.read_labels(root / "out" / "steps" / step / f"{n}.png") for n in names]
            )
            truth = np.hstack([MULTI.read_labels(root / "truth" / f"{n}.png") for n in names])
            present = [label for label in range(4) if (truth == label).any()]
            assert 0 not in present  # the demo's real masks: every tissue pixel is a class
            ious = {label: hand_iou(pred, truth, label) for label in present}
            row = summary.loc[(split, step)]
            assert row["miou"] == pytest.approx(np.mean(list(ious.values())), abs=1e-6)
            support = {label: (truth == label).sum() for label in present}
            fwiou = sum(ious[k] * support[k] for k in present) / sum(support.values())
            assert row["fwiou"] == pytest.approx(fwiou, abs=1e-6)
            for label in present:
                cls = scores.loc[(split, step, CLASSES[label - 1])]
                assert cls["iou"] == pytest.approx(ious[label], abs=1e-6)
                assert cls["reference_pixels"] == support[label]
            background = scores.loc[(split, step, "background")]
            assert background["reference_pixels"] == 0 and np.isnan(background["recall"])
            # the foreground columns: any class vs background, unlabelled pixels left out
            tp = sum(table.loc[table["name"] == n, f"{step}_tp"].item() for n in names)
            assert tp == ((pred > 0) & (truth > 0) & (truth != 255)).sum()
    assert summary.loc[("all", "small_objects"), "miou"] > 0.7  # CAMs made from the truth
