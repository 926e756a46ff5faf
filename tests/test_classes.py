"""One representation for K classes: the binary format is K = 1, label maps round-trip."""

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from histo_wsss.classes import IGNORE, LabelSpace, majority_resize
from histo_wsss.io import read_mask, write_png
from histo_wsss.splits import make_split, read_split

TISSUES = LabelSpace(("tumor", "stroma", "normal"), ignore_index=3)


def test_a_binary_mask_is_the_one_class_label_map_and_is_stored_as_before(tmp_path):
    mask = np.random.default_rng(0).random((30, 40)) > 0.6
    Image.fromarray(mask.astype(np.uint8) * 7).save(tmp_path / "m.png")  # one positive value: 7
    binary = LabelSpace(("lesion",))
    labels = binary.read_truth(tmp_path / "m.png")
    assert labels.dtype == np.uint8 and np.array_equal(labels, mask)
    binary.write_labels(tmp_path / "labels.png", labels)
    write_png(tmp_path / "bool.png", mask)
    assert (tmp_path / "labels.png").read_bytes() == (tmp_path / "bool.png").read_bytes()
    assert np.array_equal(binary.read_labels(tmp_path / "labels.png"), labels)
    half = binary.read_truth(tmp_path / "m.png", 0.5)
    assert np.array_equal(half, read_mask(tmp_path / "m.png", 0.5))  # as the binary reader


def test_a_binary_label_map_stores_unlabelled_pixels_as_grey(tmp_path):
    labels = np.zeros((6, 8), np.uint8)
    labels[:2], labels[2:4] = 1, IGNORE
    binary = LabelSpace(("lesion",))
    binary.write_labels(tmp_path / "labels.png", labels)
    stored = np.asarray(Image.open(tmp_path / "labels.png"))
    assert sorted(np.unique(stored)) == [0, 128, 255]
    assert np.array_equal(binary.read_labels(tmp_path / "labels.png"), labels)
    # a user's binary mask: any other non-zero value is the class
    Image.fromarray(np.where(labels == 1, 7, 0).astype(np.uint8)).save(tmp_path / "user.png")
    assert np.array_equal(binary.read_labels(tmp_path / "user.png"), labels == 1)


@pytest.mark.parametrize(
    ("space", "values", "mode"),
    [
        (LabelSpace(("lesion",)), (0, 7), "L"),
        (LabelSpace(("lesion",)), (0,), "L"),
        (LabelSpace(("lesion",)), (0, 255), "1"),
        (TISSUES, (0, 2, 3), "L"),
        (TISSUES, (1, 3), "P"),
        (TISSUES, (3,), "P"),
    ],
)
def test_the_mask_check_gives_the_classes_the_mask_holds(tmp_path, space, values, mode):
    """One decode checks a mask and gives its classes: those of its labels (read_truth)."""
    pixels = np.resize(np.array(values, np.uint8), 6 * 5).reshape(5, 6)
    Image.fromarray(pixels).convert(mode).save(tmp_path / "m.png")
    assert space.check_mask(tmp_path / "m.png", (6, 5)) == (
        None,
        space.tags_of(space.read_truth(tmp_path / "m.png")),
    )
    problem, tags = space.check_mask(tmp_path / "m.png", (5, 6))
    assert problem == f"mask {tmp_path}/m.png is 6x5 px but the image is 5x6 px" and tags == ()


def test_a_class_index_mask_becomes_labels_with_the_ignore_index_left_out(tmp_path):
    values = np.array([[0, 1, 2, 3]], np.uint8).repeat(3, axis=0)
    Image.fromarray(values).save(tmp_path / "m.png")
    labels = TISSUES.read_truth(tmp_path / "m.png")
    assert labels.tolist() == [[1, 2, 3, IGNORE]] * 3
    TISSUES.write_labels(tmp_path / "labels.png", labels)
    assert np.array_equal(TISSUES.read_labels(tmp_path / "labels.png"), labels)
    assert TISSUES.tags_of(labels) == ("tumor", "stroma", "normal")
    assert TISSUES.shares(labels).tolist() == [0.25, 0.25, 0.25]
    assert TISSUES.tags_of(labels, 0.3) == ()
    assert TISSUES.join({"normal", "tumor"}) == "tumor;normal"
    assert TISSUES.tag_vector("tumor;normal").tolist() == [1, 0, 1]


def test_a_label_map_is_resized_by_majority():
    labels = np.zeros((4, 6), np.uint8)
    labels[:, 2:4] = 2
    labels[:, 4:] = IGNORE
    labels[0, 0] = 2  # a minority in its 2 x 2 block
    assert majority_resize(labels, 0.5).tolist() == [[0, 2, IGNORE], [0, 2, IGNORE]]
    assert majority_resize(labels, 1) is labels


def test_the_split_pools_rare_tag_sets_and_reads_back_tags():
    counts = {"tumor;stroma": 30, "stroma": 6, "normal": 4, "tumor;normal": 1, "tumor": 1}
    labels = [tags for tags, n in counts.items() for _ in range(n)]
    table = pd.DataFrame(
        {"name": [f"i{k:02d}" for k in range(len(labels))], "label": labels, "partition": "train"}
    )
    split = make_split(table, 0.2, 0.2, seed=0, pool_rare=True)
    assert split["split"].value_counts().to_dict() == {"train": 26, "test": 9, "val": 7}
    held = split[split["split"] == "test"]["label"]
    assert {"tumor;stroma", "stroma", "normal"} <= set(held)
    with pytest.raises(ValueError, match="every class needs at least 2 images"):
        make_split(table, 0.2, 0.2, seed=0)  # a binary label must be on both sides


def test_read_split_gives_the_tags_of_both_formats(tmp_path):
    path = tmp_path / "split.csv"
    pd.DataFrame({"name": ["a", "b"], "label": ["SSA", "HP"], "split": "train"}).to_csv(
        path, index=False
    )
    binary = read_split(path, ["SSA"])
    assert binary["tags"].tolist() == ["SSA", ""] and binary["positive"].tolist() == [1, 0]
    pd.DataFrame({"name": ["a"], "label": ["stroma;tumor"], "split": "val"}).to_csv(
        path, index=False
    )
    assert read_split(path, TISSUES.classes)["tags"].tolist() == ["tumor;stroma"]


@pytest.mark.parametrize("mode", ["L", "P"])
def test_class_indices_are_read_as_stored_not_as_grey_levels(tmp_path, mode):
    values = np.array([[0, 1], [2, 3]], np.uint8)
    img = Image.fromarray(values, mode="L")
    if mode == "P":
        img = img.convert("P")
        img.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255, 255, 255, 255])
        img = Image.fromarray(values, mode="P")
        img.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255, 255, 255, 255])
    img.save(tmp_path / "m.png")
    assert TISSUES.read_truth(tmp_path / "m.png").tolist() == [[1, 2], [3, IGNORE]]
