"""Pseudo-masks for a shard of real (demo) images, their quality table, and the steps figure."""

import cv2
import numpy as np
import pandas as pd
import pytest

from histo_wsss.demo import DemoSpec, render
from histo_wsss.figures import pick_examples, pseudo_mask_steps
from histo_wsss.io import read_mask, write_csv, write_png
from histo_wsss.pseudo_masks import Item, load_cam, quality_summary, refine_images
from histo_wsss.refine import STEPS, RefineParams
from histo_wsss.stain import tissue_mask

SPEC = DemoSpec(n_images=8, size=128, seed=5)


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
        np.save(root / f"{name}.npy", cam)
        items.append(
            Item(
                name,
                str(root / "images" / f"{name}.png"),
                str(root / "tissue" / f"{name}.png"),
                str(root / f"{name}.npy"),
                positive,
                str(root / "truth" / f"{name}.png"),
            )
        )
    table = refine_images(items, RefineParams(), root / "out", save_steps=True)
    return root, items, table


def test_masks_and_steps_are_written_for_every_image(shard):
    root, items, table = shard
    assert list(table["name"]) == ["img0", "img1", "img2"]
    for item in items:
        mask = read_mask(root / "out" / "masks" / f"{item.name}.png")
        assert mask.shape == (128, 128)
        assert mask.any() == item.positive
        for step in STEPS:
            assert (root / "out" / "steps" / step / f"{item.name}.png").is_file()
        assert np.array_equal(mask, read_mask(root / "out" / "steps" / "crf" / f"{item.name}.png"))


def test_final_step_chooses_which_step_is_the_pseudo_mask(shard, tmp_path):
    root, items, _ = shard
    params = RefineParams(final_step="small_objects")
    table = refine_images(items[:1], params, tmp_path, save_steps=False)
    mask = read_mask(tmp_path / "masks" / "img0.png")
    assert np.array_equal(mask, read_mask(root / "out" / "steps" / "small_objects" / "img0.png"))
    assert not np.array_equal(mask, read_mask(root / "out" / "masks" / "img0.png"))
    assert not (tmp_path / "steps").exists()
    assert table["crf_area"].iloc[0] > 0  # the CRF still runs and is scored


def test_an_empty_shard_writes_a_readable_table(tmp_path):
    write_csv(tmp_path / "t.csv", refine_images([], RefineParams(), tmp_path, save_steps=True))
    table = pd.read_csv(tmp_path / "t.csv")
    assert table.empty and {"name", "positive", "seconds"} <= set(table.columns)


def test_quality_is_scored_per_step_and_a_blurred_truth_cam_scores_well(shard):
    _, _, table = shard
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
    _, _, table = shard
    table = table.assign(split=["val", "train", "train"])  # img0 val, img1 train, negative train
    summary = quality_summary(table)
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
    assert not [c for c in summary.columns if "micro" in c]  # one word, "pooled", everywhere


def test_summary_without_ground_truth_is_empty_not_an_error():
    table = pd.DataFrame({"name": ["a"], "split": ["train"], "positive": [1], "crf_area": [0.2]})
    assert quality_summary(table).empty


def test_cam_of_the_wrong_size_is_a_clear_error(tmp_path):
    np.save(tmp_path / "c.npy", np.zeros((10, 12), np.float16))
    with pytest.raises(ValueError, match=r"c.npy: CAM is 12x10, image is 16x16"):
        load_cam(tmp_path / "c.npy", (16, 16))


def test_pick_examples_spreads_over_scores():
    scores = {f"n{i}": i / 10 for i in range(11)}
    assert pick_examples(scores, 3) == ["n0", "n5", "n10"]
    assert pick_examples({"b": 1.0, "a": 1.0}, 5) == ["a", "b"]


def test_steps_figure_is_byte_identical_when_redrawn(shard, tmp_path):
    root, items, _ = shard
    names = [i.name for i in items[:2]]
    files = {
        "images": {i.name: i.image for i in items},
        "cams": {i.name: i.cam for i in items},
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
