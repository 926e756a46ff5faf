"""The labels CSV contract: every kind of bad input gives one clear error naming the rows."""

import dataclasses
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from histo_wsss.dataset import (
    ANNOTATORS_COLUMN,
    DatasetError,
    DatasetSpec,
    load_labels,
    manifest,
    manifest_keys,
)

HEADER = ["Image Name", "Majority Vote Label", ANNOTATORS_COLUMN, "Partition"]


def _image(path, mode="RGB", size=(16, 12)):
    path.parent.mkdir(parents=True, exist_ok=True)
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    data = np.random.default_rng(0).integers(0, 255, (size[1], size[0], channels), np.uint8)
    Image.fromarray(data.squeeze(), mode=None).convert(mode).save(path)


def _mask(path, size=(16, 12), values=(0, 255)):
    """A mask of ``size`` whose pixels take each of ``values`` in turn."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.resize(np.array(values, np.uint8), size[0] * size[1]).reshape(size[1], size[0])
    Image.fromarray(pixels).save(path)


def _dataset(tmp_path, rows, masks=False):
    """Write a labels CSV of ``rows`` = (name, label, partition); create RGB images for them
    (and 0/255 masks)."""
    for name, *_ in rows:
        _image(tmp_path / "images" / name)
        if masks:
            _mask(tmp_path / "masks" / name)
    table = pd.DataFrame([(n, label, 3, p) for n, label, p in rows], columns=HEADER)
    table.to_csv(tmp_path / "labels.csv", index=False)
    return DatasetSpec(
        images=tmp_path / "images",
        labels=tmp_path / "labels.csv",
        classes=("HP", "SSA"),
        positive_class="SSA",
        masks=tmp_path / "masks" if masks else None,
    )


GOOD = [
    ("b.png", "HP", "train"),
    ("a.png", "SSA", "test"),
    ("c.png", "SSA", "train"),
    ("d.png", "HP", "train"),
    ("e.png", "SSA", "train"),
]
NAMES = ["a", "b", "c", "d", "e"]


def test_valid_dataset_is_read_sorted_with_positive_flag(tmp_path):
    table = load_labels(_dataset(tmp_path, GOOD, masks=True))
    assert list(table["name"]) == NAMES
    assert list(table["positive"]) == [1, 0, 1, 0, 1]
    assert list(table["partition"]) == ["test", "train", "train", "train", "train"]
    assert table["mask"].iloc[0].endswith("masks/a.png")


def test_partition_column_is_optional(tmp_path):
    spec = _dataset(tmp_path, GOOD)
    pd.read_csv(spec.labels).drop(columns=["Partition"]).to_csv(spec.labels, index=False)
    assert set(load_labels(spec)["partition"]) == {"train"}


def _error(spec):
    with pytest.raises(DatasetError) as err:
        load_labels(spec)
    return str(err.value)


def test_missing_image_file(tmp_path):
    spec = _dataset(tmp_path, GOOD)
    (tmp_path / "images" / "c.png").unlink()
    msg = _error(spec)
    assert "row 4 ('c.png')" in msg and "image file not found" in msg and "1 problem" in msg


def test_duplicate_names(tmp_path):
    msg = _error(_dataset(tmp_path, [*GOOD, ("a.png", "HP", "train")]))
    assert "row 3 ('a.png'): duplicate image name" in msg
    assert "row 7 ('a.png'): duplicate image name" in msg


def test_unknown_label(tmp_path):
    msg = _error(_dataset(tmp_path, [*GOOD, ("f.png", "TA", "train")]))
    assert "row 7 ('f.png'): unknown label 'TA'" in msg


def test_unknown_partition(tmp_path):
    msg = _error(_dataset(tmp_path, [*GOOD, ("f.png", "HP", "validation")]))
    assert "unknown partition 'validation'" in msg


def test_unreadable_image(tmp_path):
    spec = _dataset(tmp_path, GOOD)
    (tmp_path / "images" / "b.png").write_bytes(b"not a png at all")
    msg = _error(spec)
    assert "row 2 ('b.png'): unreadable image" in msg


def test_an_image_whose_extension_names_another_format_is_still_read(tmp_path):
    spec = _dataset(tmp_path, GOOD, masks=True)
    rgb = Image.open(tmp_path / "images" / "a.png")
    rgb.save(tmp_path / "images" / "a.png", format="JPEG")  # a JPEG named .png
    assert Image.open(tmp_path / "images" / "a.png").format == "JPEG"
    assert list(load_labels(spec)["name"]) == NAMES
    rgb.resize((8, 8)).save(tmp_path / "images" / "a.png", format="JPEG")
    assert "mask" in _error(spec) and "is 16x12 px but the image is 8x8 px" in _error(spec)


@pytest.mark.parametrize("mode", ["L", "RGBA"])
def test_non_rgb_image(tmp_path, mode):
    spec = _dataset(tmp_path, GOOD)
    _image(tmp_path / "images" / "a.png", mode=mode)
    assert f"has mode {mode}, expected RGB" in _error(spec)


def test_missing_and_mis_sized_masks(tmp_path):
    spec = _dataset(tmp_path, GOOD, masks=True)
    (tmp_path / "masks" / "a.png").unlink()
    _mask(tmp_path / "masks" / "b.png", size=(8, 8))
    msg = _error(spec)
    assert "mask file not found" in msg and "is 8x8 px but the image is 16x12 px" in msg


def test_missing_column(tmp_path):
    spec = _dataset(tmp_path, GOOD)
    pd.read_csv(spec.labels).drop(columns=["Majority Vote Label"]).to_csv(spec.labels)
    assert "missing column(s) ['Majority Vote Label']" in _error(spec)


def test_positive_class_must_be_a_class(tmp_path):
    with pytest.raises(DatasetError, match=r"positive_class 'TA' is not one of classes"):
        DatasetSpec(tmp_path / "images", tmp_path / "labels.csv", ("HP", "SSA"), "TA")


def test_empty_labels_file(tmp_path):
    spec = _dataset(tmp_path, GOOD)
    spec.labels.write_bytes(b"")
    assert _error(spec) == (
        f"{spec.labels}: the file is empty; expected a CSV with the columns "
        "['Image Name', 'Majority Vote Label']"
    )


@pytest.mark.parametrize("name", ["x{1}.png", "x}.png"])
def test_a_name_snakemake_cannot_carry_in_a_path(tmp_path, name):
    msg = _error(_dataset(tmp_path, [*GOOD, (name, "HP", "train")]))
    assert f"row 7 ({name!r}): image name holds '{{' or '}}', which Snakemake cannot carry" in msg


def _truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size * 2 // 3])


def _flip_a_byte(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("damage", "image_format"), [(_truncate, "PNG"), (_flip_a_byte, "PNG"), (_truncate, "JPEG")]
)
def test_truncated_or_corrupt_image_or_mask(tmp_path, damage, image_format):
    spec = _dataset(tmp_path, GOOD, masks=True)
    Image.open(tmp_path / "images" / "b.png").resize((64, 64)).save(
        tmp_path / "images" / "b.png", format=image_format
    )
    _mask(tmp_path / "masks" / "b.png", size=(64, 64))
    damage(tmp_path / "images" / "b.png")
    _image(tmp_path / "images" / "c.png", size=(64, 64))
    _image(tmp_path / "masks" / "c.png", mode="L", size=(64, 64))
    damage(tmp_path / "masks" / "c.png")
    msg = _error(spec)
    assert "2 problem(s)" in msg
    assert f"row 2 ('b.png'): unreadable image {tmp_path}/images/b.png: " in msg
    assert f"row 4 ('c.png'): unreadable mask {tmp_path}/masks/c.png: " in msg


@pytest.mark.parametrize("values", [(0,), (0, 255), (0, 1), (7,)])
def test_masks_of_0_and_one_positive_value_pass(tmp_path, values):
    spec = _dataset(tmp_path, GOOD, masks=True)
    _mask(tmp_path / "masks" / "a.png", values=values)
    assert list(load_labels(spec)["name"]) == NAMES


def test_a_mask_with_stray_values_names_the_file_and_values(tmp_path):
    spec = _dataset(tmp_path, GOOD, masks=True)
    _mask(tmp_path / "masks" / "a.png", values=(0, 1, 2, 255, 0))  # JPEG-like noise near 0
    _mask(tmp_path / "masks" / "b.png", values=range(0, 240, 16))
    msg = _error(spec)
    assert (
        f"row 3 ('a.png'): mask {tmp_path}/masks/a.png has values 1, 2 besides [0, 255]: "
        "a mask holds 0 and one positive value" in msg
    )
    assert (
        "has values 16, 32, 48, 64, 80, 96, 112, 128, 144, 160 and 3 more besides [0, 224]" in msg
    )


@pytest.mark.parametrize(
    ("rows", "scarce"),
    [
        ([(n, "SSA", "train") for n in ("a.png", "b.png", "c.png")], "'HP' has 0"),
        ([*GOOD[:3], ("d.png", "HP", "test")], "'HP' has 1 and 'SSA' has 1"),
    ],
)
def test_a_class_without_training_images_is_rejected(tmp_path, rows, scarce):
    msg = _error(_dataset(tmp_path, rows))
    assert msg == (
        f"{tmp_path}/labels.csv: each class needs at least 2 images outside Partition = test "
        f"(to train and to validate the classifier on), but class {scarce}"
    )


def test_error_lists_first_20_rows_and_the_count(tmp_path):
    rows = [(f"x{i:02d}.png", "XX", "train") for i in range(25)]
    msg = _error(_dataset(tmp_path, rows))
    assert "25 problem(s)" in msg and "... and 5 more" in msg
    assert "x19.png" in msg and "x20.png" not in msg


def test_manifest_changes_with_any_file_of_the_dataset(tmp_path):
    for name in ("a", "b"):
        _image(tmp_path / "img" / f"{name}.png")
    _image(tmp_path / "msk" / "a.png", mode="L")
    images = {n: str(tmp_path / "img" / f"{n}.png") for n in ("b", "a")}
    masks = {"a": str(tmp_path / "msk" / "a.png")}
    first = manifest(images, masks)
    assert list(first["name"]) == ["a", "b"]
    assert first.loc[1, "mask"] == "" and first.loc[1, "mask_bytes"] == ""
    assert first.loc[0, "image_bytes"] == (tmp_path / "img" / "a.png").stat().st_size
    assert manifest(images, masks).equals(first)
    _image(tmp_path / "msk" / "a.png", mode="L", size=(9, 9))  # a mask rewritten in place
    assert not manifest(images, masks).equals(first)


def _write_manifest(spec, path):
    table = load_labels(spec)
    masks = dict(zip(table["name"], table["mask"], strict=True)) if spec.masks else {}
    manifest(dict(zip(table["name"], table["image"], strict=True)), masks).to_csv(path, index=False)


@pytest.mark.parametrize("masks", [True, False])
def test_files_unchanged_since_the_manifest_are_not_opened_again(tmp_path, masks):
    spec = _dataset(tmp_path, GOOD, masks=masks)
    _write_manifest(spec, tmp_path / "manifest.csv")
    checked = manifest_keys(tmp_path / "manifest.csv")
    assert len(checked) == 5
    # Unreadable now, but with the size and time the manifest recorded: trusted, not opened.
    image = tmp_path / "images" / "b.png"
    times = (image.stat().st_atime_ns, image.stat().st_mtime_ns)
    image.write_bytes(b"x" * image.stat().st_size)
    os.utime(image, ns=times)
    assert list(load_labels(spec, checked)["name"]) == NAMES
    assert "row 2 ('b.png'): unreadable image" in _error(spec)  # without the manifest
    # A file changed since (another time) is checked again.
    os.utime(image, ns=(times[0], times[1] + 10**9))
    with pytest.raises(DatasetError, match=r"row 2 \('b.png'\): unreadable image"):
        load_labels(spec, checked)


def test_no_or_a_foreign_manifest_trusts_nothing(tmp_path):
    assert manifest_keys(tmp_path / "missing.csv") == frozenset()
    pd.DataFrame({"name": ["a"], "image": ["a.png"]}).to_csv(tmp_path / "old.csv", index=False)
    assert manifest_keys(tmp_path / "old.csv") == frozenset()
    (tmp_path / "empty.csv").touch()
    assert manifest_keys(tmp_path / "empty.csv") == frozenset()


def test_image_labels_from_masks(tmp_path):
    """`image_labels: masks`: a label column is not needed (a wrong one is ignored); an image is
    the positive class when its mask has a positive pixel. A class without images passes only
    where the caller asks no image-level counts (patches tagged by the masks)."""
    spec = dataclasses.replace(_dataset(tmp_path, GOOD, masks=True), image_labels="masks")
    _mask(tmp_path / "masks" / "b.png", values=(0,))
    pd.read_csv(spec.labels).drop(columns=["Majority Vote Label"]).to_csv(spec.labels)
    table = load_labels(spec, min_class_images=1)
    assert dict(zip(table["name"], table["label"], strict=True)) == {
        "a": "SSA",
        "b": "HP",
        "c": "SSA",
        "d": "SSA",
        "e": "SSA",
    }
    assert table["positive"].tolist() == [1, 0, 1, 1, 1]
    assert _error(spec) == (
        f"{tmp_path}/labels.csv: each class needs at least 2 images outside Partition = test "
        "(to train and to validate the classifier on), but class 'HP' has 1 (labels from the "
        "masks)"
    )
    _mask(tmp_path / "masks" / "d.png", values=(0,))
    assert load_labels(spec)["label"].tolist() == ["SSA", "HP", "SSA", "HP", "SSA"]
    # files trusted from a manifest are not checked again, but their masks still give the labels
    _write_manifest(spec, tmp_path / "manifest.csv")
    checked = manifest_keys(tmp_path / "manifest.csv")
    assert load_labels(spec, checked)["label"].tolist() == ["SSA", "HP", "SSA", "HP", "SSA"]


def test_image_labels_from_masks_need_masks(tmp_path):
    with pytest.raises(DatasetError, match=r"image_labels is 'masks' but dataset.masks is not"):
        dataclasses.replace(_dataset(tmp_path, GOOD), image_labels="masks")
    with pytest.raises(DatasetError, match=r"image_labels must be one of \['csv', 'masks'\]"):
        dataclasses.replace(_dataset(tmp_path, GOOD), image_labels="tags")


# The multi-label format: `Tags` of `;`-separated class names, class-index masks.
TISSUES = ("tumor", "stroma", "normal")
TAGGED = [
    ("a.png", "tumor;stroma", "test"),
    ("b.png", " stroma ; tumor", "train"),  # spaces and order do not matter
    ("c.png", "normal;tumor", "train"),
    ("d.png", "stroma;normal", "train"),
    ("e.png", "tumor", "train"),
]


def _tagged(tmp_path, rows, masks=None, ignore_index=3):
    """A `tags`-format dataset of ``rows`` = (name, tags, partition); ``masks`` = {name: pixel
    values} writes class-index masks."""
    for name, *_ in rows:
        _image(tmp_path / "images" / name)
    for name, values in (masks or {}).items():
        _mask(tmp_path / "masks" / name, values=values)
    table = pd.DataFrame(rows, columns=["Image Name", "Tags", "Partition"])
    table.to_csv(tmp_path / "labels.csv", index=False)
    return DatasetSpec(
        images=tmp_path / "images",
        labels=tmp_path / "labels.csv",
        classes=TISSUES,
        positive_class=None,
        masks=tmp_path / "masks" if masks else None,
        format="tags",
        ignore_index=ignore_index,
    )


def test_a_multi_label_dataset_is_read_into_tag_sets(tmp_path):
    masks = {name: (0, 1, 2, 3) for name, *_ in TAGGED}
    table = load_labels(_tagged(tmp_path, TAGGED, masks))
    assert table["tags"].tolist() == [
        "tumor;stroma",
        "tumor;stroma",
        "tumor;normal",
        "stroma;normal",
        "tumor",
    ]
    assert table["label"].tolist() == table["tags"].tolist()  # the split's strata
    assert table["positive"].tolist() == [1] * 5


def test_the_binary_format_is_the_one_class_case(tmp_path):
    """MHIST's labels become tag sets of the positive class: a negative image has none."""
    table = load_labels(_dataset(tmp_path, GOOD))
    assert table["tags"].tolist() == ["SSA", "", "SSA", "", "SSA"]
    assert table["label"].tolist() == ["SSA", "HP", "SSA", "HP", "SSA"]
    assert _dataset(tmp_path, GOOD).label_space.classes == ("SSA",)


def test_an_unknown_tag_and_a_row_without_tags_name_the_row(tmp_path):
    rows = [*TAGGED, ("f.png", "tumor;necrosis", "train"), ("g.png", " ; ", "train")]
    msg = _error(_tagged(tmp_path, rows))
    assert "2 problem(s)" in msg
    assert (
        "row 7 ('f.png'): unknown tag(s) ['necrosis'] (expected names from "
        "['tumor', 'stroma', 'normal'])" in msg
    )
    assert "row 8 ('g.png'): no tags (a row lists the classes its image holds" in msg


def test_a_class_index_mask_with_a_value_outside_the_classes_and_ignore_index(tmp_path):
    masks = {name: (0, 1, 2, 3) for name, *_ in TAGGED}
    spec = _tagged(tmp_path, TAGGED, {**masks, "c.png": (0, 4, 255), "d.png": (1,)})
    Image.new("RGB", (16, 12)).save(tmp_path / "masks" / "e.png")
    msg = _error(spec)
    assert "2 problem(s)" in msg
    assert (
        f"row 4 ('c.png'): mask {tmp_path}/masks/c.png has values 4, 255 outside the class "
        "indices 0..2 (tumor, stroma, normal) and the ignore index 3" in msg
    )
    assert f"row 6 ('e.png'): mask {tmp_path}/masks/e.png has mode RGB: a class-index" in msg
    # 255 is fine where it is the ignore index
    spec = _tagged(tmp_path, TAGGED, {n: (0, 255) for n, *_ in TAGGED}, ignore_index=255)
    assert len(load_labels(spec)) == 5


def test_multi_label_tags_from_the_masks(tmp_path):
    spec = dataclasses.replace(
        _tagged(tmp_path, TAGGED, {n: (3,) for n, *_ in TAGGED}), image_labels="masks"
    )
    for name, values in [("a", (0, 3)), ("b", (1, 3)), ("c", (0, 2)), ("d", (2, 1)), ("e", (0,))]:
        _mask(tmp_path / "masks" / f"{name}.png", values=values)
    pd.read_csv(spec.labels).drop(columns=["Tags"]).to_csv(spec.labels, index=False)
    table = load_labels(spec, min_class_images=1)
    assert table["tags"].tolist() == ["tumor", "stroma", "tumor;normal", "stroma;normal", "tumor"]
    _mask(tmp_path / "masks" / "e.png", values=(3,))
    assert f"row 6 ('e.png'): no tags: its mask {tmp_path}/masks/e.png holds no class" in _error(
        spec
    )


def test_each_class_needs_tagged_images_outside_the_test_partition(tmp_path):
    rows = [(n, tags.replace("normal", "stroma"), p) for n, tags, p in TAGGED]
    assert _error(_tagged(tmp_path, rows)).endswith("but class 'normal' has 0")


@pytest.mark.parametrize(
    ("fmt", "classes", "ignore_index", "message"),
    [
        ("mhist", TISSUES, 255, "dataset.format 'mhist' takes two classes [negative, positive]"),
        ("tags", ("gland",), 255, "dataset.format 'tags' takes two classes or more"),
        ("tags", TISSUES, 2, "dataset.ignore_index 2 must lie in 3..255"),
        ("csv", TISSUES, 255, "dataset.format must be one of ['mhist', 'tags']"),
    ],
)
def test_format_classes_and_ignore_index_must_agree(tmp_path, fmt, classes, ignore_index, message):
    with pytest.raises(DatasetError, match=re.escape(message)):
        DatasetSpec(tmp_path, tmp_path / "l.csv", classes, "tumor", None, "csv", fmt, ignore_index)


def test_the_real_wsss4luad_labels_and_masks_pass(tmp_path):
    """Its labels.csv and 3-class masks (0 tumor, 1 stroma, 2 normal, 3 background) as they
    are: the `tags` format with ignore_index 3; the tags agree with the classes the masks hold."""
    data = Path(__file__).resolve().parents[2] / "shared" / "data" / "wsss4luad-masked"
    if not data.is_dir():
        pytest.skip(f"WSSS4LUAD not found: {data} (../shared is absent)")
    spec = DatasetSpec(
        data / "images", data / "labels.csv", TISSUES, None, data / "masks", "csv", "tags", 3
    )
    table = load_labels(spec)
    assert len(table) == 68 and table["tags"].value_counts()["tumor;stroma"] == 58
    from_masks = load_labels(dataclasses.replace(spec, image_labels="masks"))
    assert from_masks["tags"].tolist() == table["tags"].tolist()
