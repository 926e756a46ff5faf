"""Patches cut from larger images and tagged from the image label or the real mask."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from histo_wsss.classes import IGNORE, LabelSpace
from histo_wsss.io import read_rgb, write_png
from histo_wsss.patches import PatchParams, cut, extract, grid

BINARY = LabelSpace(("lesion",))


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
        cut("img_7", rgb, "lesion", PatchParams(40, 40), BINARY)


def test_tags_come_from_the_label_or_from_the_masks_share():
    rgb = np.arange(64 * 64 * 3, dtype=np.uint32).reshape(64, 64, 3).astype(np.uint8)
    mask = np.zeros((64, 64), bool)
    mask[:32, :32] = True  # the top-left patch only ...
    mask[40, 40] = True  # ... and one pixel of the bottom-right one (1/1024 < min_share)
    by_mask = cut("a", rgb, "", PatchParams(32, 32, "mask", 0.05), BINARY, mask.astype(np.uint8))
    rows = {r["name"]: r for r, _ in by_mask}
    assert {n: r["positive"] for n, r in rows.items()} == {
        "a_y0_x0": 1,
        "a_y0_x32": 0,
        "a_y32_x0": 0,
        "a_y32_x32": 0,
    }
    assert rows["a_y32_x32"]["positive_share"] == pytest.approx(1 / 1024, abs=1e-6)
    assert np.array_equal(by_mask[3][1], rgb[32:, 32:])
    assert [r["tags"] for r, _ in by_mask] == ["lesion", "", "", ""]
    by_label = cut("a", rgb, "lesion", PatchParams(32, 32, "image"), BINARY)
    assert [r["positive"] for r, _ in by_label] == [1, 1, 1, 1]
    assert [r["tags"] for r, _ in by_label] == ["lesion"] * 4
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
        ["lesion", "", "lesion"],
        [tmp_path / f"{n}.png" for n in names],
        [tmp_path / f"{n}_mask.png" for n in names],
        PatchParams(32, 32, "mask", 0.3),
        BINARY,
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
        extract(
            ["a"], ["train"], ["lesion"], ["a.png"], [], PatchParams(8, 8, "mask"), BINARY, tmp_path
        )


def test_k_class_patches_are_tagged_with_each_class_that_covers_min_share():
    """Three classes and unlabelled pixels (WSSS4LUAD's form): a class is a tag where it covers
    at least min_share of the patch; unlabelled pixels never tag, and count in the patch."""
    space = LabelSpace(("tumor", "stroma", "normal"), ignore_index=3)
    labels = np.full((40, 40), IGNORE, np.uint8)
    labels[:20, :20] = 1  # the top-left patch: all tumor
    labels[:20, 20:] = 2  # the top-right patch: stroma ...
    labels[:2, 20:30] = 3  # ... and 20 px of normal (5 %)
    labels[27:, :14] = 2  # the bottom-left patch: 13 x 14 px of stroma (45.5 %), unlabelled rest
    rgb = np.zeros((40, 40, 3), np.uint8)
    rows = [r for r, _ in cut("w", rgb, "tumor", PatchParams(20, 20, "mask", 0.05), space, labels)]
    assert [r["tags"] for r in rows] == ["tumor", "stroma;normal", "stroma", ""]
    assert [r["positive"] for r in rows] == [1, 1, 1, 0]
    assert [r["positive_share"] for r in rows] == [1.0, 1.0, pytest.approx(13 * 14 / 400), 0.0]
    strict = cut("w", rgb, "", PatchParams(20, 20, "mask", 0.06), space, labels)
    assert strict[1][0]["tags"] == "stroma"  # normal covers 5 % < 6 %


def test_wsss4luad_images_are_cut_into_patches_tagged_from_their_masks(tmp_path):
    """A real WSSS4LUAD image and its 3-class mask (read as the workflow's real masks at the
    working scale are written): every patch's tags match the classes its own mask window holds."""
    data = Path(__file__).resolve().parents[2] / "shared" / "data" / "wsss4luad-masked"
    if not data.is_dir():
        pytest.skip(f"WSSS4LUAD not found: {data} (../shared is absent)")
    space = LabelSpace(("tumor", "stroma", "normal"), ignore_index=3)
    name = "val_00"
    truth = space.read_truth(data / "masks" / f"{name}.png")
    space.write_labels(tmp_path / "truth.png", truth)
    assert np.array_equal(space.read_labels(tmp_path / "truth.png"), truth)
    table = extract(
        [name],
        ["train"],
        ["tumor;stroma"],
        [data / "images" / f"{name}.png"],
        [tmp_path / "truth.png"],
        PatchParams(64, 64, "mask", 0.05),
        space,
        tmp_path / "out",
    )
    assert len(table) == 25  # 266 x 273 px: 5 x 5 patches of 64 px
    assert set(table["tags"]) >= {"tumor", "stroma", "tumor;stroma"}
    for row in table.itertuples():
        window = truth[row.y : row.y + 64, row.x : row.x + 64]
        shares = [(window == c + 1).mean() for c in range(3)]
        expected = [c for c, s in zip(space.classes, shares, strict=True) if s >= 0.05]
        assert row.tags == ";".join(expected)
