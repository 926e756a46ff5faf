"""Patches cut from larger images and tagged from the image label or the real mask."""

import numpy as np
import pandas as pd
import pytest

from histo_wsss.io import read_rgb, write_png
from histo_wsss.patches import PatchParams, cut, extract, grid


def test_the_grid_covers_every_pixel_and_ends_at_the_border():
    assert grid(100, 40, 40) == [0, 40, 60]
    assert grid(80, 40, 40) == [0, 40]
    assert grid(100, 40, 30) == [0, 30, 60]
    assert grid(40, 40, 10) == [0]
    covered = np.zeros(97, bool)
    for start in grid(97, 32, 20):
        covered[start : start + 32] = True
    assert covered.all()


def test_a_patch_larger_than_its_image_names_the_image():
    rgb = np.zeros((30, 50, 3), np.uint8)
    with pytest.raises(ValueError, match=r"img_7: patch size 40 exceeds the image side 30"):
        cut("img_7", rgb, 1, PatchParams(40, 40))


def test_tags_come_from_the_label_or_from_the_masks_share():
    rgb = np.arange(64 * 64 * 3, dtype=np.uint32).reshape(64, 64, 3).astype(np.uint8)
    mask = np.zeros((64, 64), bool)
    mask[:32, :32] = True  # the top-left patch only ...
    mask[40, 40] = True  # ... and one pixel of the bottom-right one (1/1024 < min_share)
    by_mask = cut("a", rgb, 0, PatchParams(32, 32, "mask", 0.05), mask)
    rows = {r["name"]: r for r, _ in by_mask}
    assert {n: r["positive"] for n, r in rows.items()} == {
        "a_y0_x0": 1,
        "a_y0_x32": 0,
        "a_y32_x0": 0,
        "a_y32_x32": 0,
    }
    assert rows["a_y32_x32"]["positive_share"] == pytest.approx(1 / 1024, abs=1e-6)
    assert np.array_equal(by_mask[3][1], rgb[32:, 32:])
    by_label = cut("a", rgb, 1, PatchParams(32, 32, "image"))
    assert [r["positive"] for r, _ in by_label] == [1, 1, 1, 1]
    assert all(np.isnan(r["positive_share"]) for r, _ in by_label)


def test_only_train_and_val_images_are_cut_each_patch_in_its_images_split(tmp_path):
    rng = np.random.default_rng(0)
    names, splits = ["a", "b", "c"], ["train", "val", "test"]
    for n in names:
        write_png(tmp_path / f"{n}.png", rng.integers(0, 255, (50, 70, 3), dtype=np.uint8))
        write_png(tmp_path / f"{n}_mask.png", rng.random((50, 70)) > 0.5)
    table = extract(
        names,
        splits,
        [1, 0, 1],
        [tmp_path / f"{n}.png" for n in names],
        [tmp_path / f"{n}_mask.png" for n in names],
        PatchParams(32, 32, "mask", 0.3),
        tmp_path / "out",
    )
    assert isinstance(table, pd.DataFrame)
    assert set(table["source"]) == {"a", "b"}  # the test image is evaluated whole, never cut
    assert (table.groupby("source")["split"].unique().map(list).to_dict()) == {
        "a": ["train"],
        "b": ["val"],
    }
    assert len(table) == 2 * 2 * 3  # 50 px: rows at 0 and 18; 70 px: columns at 0, 32, 38
    assert table["positive"].tolist() == [1] * len(table)  # ~half of every patch is positive
    for row in table.itertuples():
        patch = read_rgb(tmp_path / "out" / "images" / f"{row.name}.png")
        source = read_rgb(tmp_path / f"{row.source}.png")
        assert np.array_equal(patch, source[row.y : row.y + 32, row.x : row.x + 32])


def test_mask_tags_without_masks_are_an_error(tmp_path):
    with pytest.raises(ValueError, match="no real masks"):
        extract(["a"], ["train"], [1], ["a.png"], [], PatchParams(8, 8, "mask"), tmp_path)
