"""Tests of the embedded synthetic demo dataset (small: 24 images of 96 px)."""

from __future__ import annotations

import filecmp
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from PIL import Image

import histo_wsss.demo as demo
from histo_wsss.demo import DemoSpec, contact_sheet, demo_names, generate, render

MHIST_HEADER = (
    "Image Name,Majority Vote Label,Number of Annotators who Selected SSA (Out of 7),Partition"
)
SPEC = DemoSpec(n_images=24, size=96, seed=3)


def od_red(rgb: np.ndarray) -> np.ndarray:
    """Optical density of the red channel: mostly haematoxylin."""
    return -np.log((rgb[..., 0].astype(float) + 1) / 256)


def tissue_of(rgb: np.ndarray) -> np.ndarray:
    """Pixels that are not near-white."""
    return rgb.min(axis=2) < 200


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    table = generate(SPEC, out)
    images, masks, positive = [], [], []
    for name, label in zip(table["Image Name"], table["Majority Vote Label"], strict=True):
        with Image.open(out / "images" / name) as img:
            assert img.mode == "RGB"
            images.append(np.asarray(img))
        with Image.open(out / "masks" / name) as img:
            assert img.mode == "L"
            masks.append(np.asarray(img))
        positive.append(label == SPEC.positive_class)
    return out, table, images, masks, np.array(positive)


def test_names():
    assert demo_names(3) == ["demo_0000", "demo_0001", "demo_0002"]
    assert demo_names(10000)[-1] == "demo_9999"
    assert demo_names(10001)[-1] == "demo_10000"
    assert len(set(demo_names(1234))) == 1234


def test_spec_is_validated():
    with pytest.raises(ValueError):
        DemoSpec(size=32)
    with pytest.raises(ValueError):
        DemoSpec(negative_class="x", positive_class="x")


def test_labels_table(dataset):
    out, table, *_ = dataset
    lines = (out / "labels.csv").read_text().splitlines()
    assert lines[0] == MHIST_HEADER
    on_disk = pd.read_csv(out / "labels.csv")
    pd.testing.assert_frame_equal(on_disk, table, check_dtype=False)
    names = [f"{n}.png" for n in demo_names(24)]
    assert table["Image Name"].tolist() == names
    assert sorted(p.name for p in (out / "images").iterdir()) == names
    assert sorted(p.name for p in (out / "masks").iterdir()) == names

    labels = table["Majority Vote Label"]
    assert labels.value_counts().to_dict() == {"normal": 12, "lesion": 12}
    positive = (labels == "lesion").to_numpy()
    assert not (positive[::2].all() or positive[1::2].all()), (
        "labels must be seeded, not alternating"
    )
    votes = table["Number of Annotators who Selected SSA (Out of 7)"]
    assert votes.dtype.kind == "i"
    assert votes[positive].between(4, 7).all() and votes[~positive].between(0, 3).all()
    assert set(table["Partition"]) == {"train", "test"}
    per_class = table.groupby(["Majority Vote Label", "Partition"]).size().to_dict()
    assert per_class == {
        ("lesion", "test"): 2,
        ("lesion", "train"): 10,
        ("normal", "test"): 2,
        ("normal", "train"): 10,
    }


def test_custom_classes_and_fractions(tmp_path):
    spec = DemoSpec(n_images=10, size=64, positive_fraction=0.3, test_fraction=0.5,
                    negative_class="HP", positive_class="SSA")  # fmt: skip
    table = generate(spec, tmp_path)
    assert table["Majority Vote Label"].value_counts().to_dict() == {"HP": 7, "SSA": 3}
    counts = table.groupby("Majority Vote Label")["Partition"].apply(lambda p: (p == "test").sum())
    assert counts.to_dict() == {"HP": round(7 * 0.5), "SSA": round(3 * 0.5)}


def test_images_and_masks(dataset):
    _, _, images, masks, positive = dataset
    for rgb, mask, pos in zip(images, masks, positive, strict=True):
        assert rgb.shape == (96, 96, 3) and rgb.dtype == np.uint8
        assert mask.shape == (96, 96) and mask.dtype == np.uint8
        assert set(np.unique(mask)) <= {0, 255}
        if not pos:
            assert not mask.any()
            continue
        lesion, tissue = mask > 0, tissue_of(rgb)
        assert 0.05 < lesion[tissue].mean() < 0.8  # part of the tissue, not all of it
        assert tissue[lesion].mean() > 0.7  # tissue-coloured, white lumens aside
        background_depth = cv2.distanceTransform((~tissue).astype(np.uint8), cv2.DIST_L2, 3)
        assert background_depth[lesion].max() <= 12  # none on the white background (lumens aside)


def test_lesion_is_hyperchromatic(dataset):
    _, _, images, masks, positive = dataset
    gaps = []
    for rgb, mask in zip(images, masks, strict=True):
        if not mask.any():
            continue
        density, tissue, lesion = od_red(rgb), tissue_of(rgb), mask > 0
        gaps.append(density[lesion & tissue].mean() - density[~lesion & tissue].mean())
    assert len(gaps) == positive.sum()
    assert min(gaps) > 0.0
    assert np.mean(gaps) > 0.1


def stroma_colour_spread(spec: DemoSpec) -> float:
    """Spread (norm of per-channel std) of the mean stroma colour across negative images."""
    plan = demo._assign(spec)
    means = []
    for index, (positive, background) in enumerate(
        zip(plan.positive, plan.background, strict=True)
    ):
        if positive or background:
            continue
        rgb, _ = render(spec, index, False)
        od = -np.log((rgb.astype(float) + 1) / 256)
        stroma = tissue_of(rgb) & (od[..., 1] > 1.5 * od[..., 0])  # eosin-dominated
        means.append(rgb[stroma].mean(axis=0))
    return float(np.linalg.norm(np.std(means, axis=0)))


def test_stain_varies_between_images(monkeypatch):
    assert stroma_colour_spread(SPEC) > 10.0
    # the same check fails once the staining is the same for every image
    ruifrok = np.stack([v / np.linalg.norm(v) for v in (demo.H_REF, demo.E_REF)])
    fixed = (ruifrok.astype(np.float32), np.ones(2, np.float32), 250.0, 0.01)
    monkeypatch.setattr(demo, "_staining", lambda rng: fixed)
    assert stroma_colour_spread(SPEC) < 10.0


def test_near_background_images(dataset):
    _, _, images, _, positive = dataset
    fraction = np.array([tissue_of(rgb).mean() for rgb in images])
    empty = fraction < 0.05
    assert empty.sum() == 1  # 3% of 24, at least one
    assert not positive[empty].any()
    assert fraction[~empty].min() > 0.3


def test_deterministic(dataset, tmp_path):
    out, *_ = dataset
    generate(SPEC, tmp_path)
    files = [str(p.relative_to(out)) for p in sorted(out.rglob("*")) if p.is_file()]
    match, mismatch, errors = filecmp.cmpfiles(out, tmp_path, files, shallow=False)
    assert len(match) == 49 and not mismatch and not errors
    other, _ = render(DemoSpec(n_images=24, size=96, seed=4), 0, False)
    assert not np.array_equal(other, render(SPEC, 0, False)[0])


def test_image_does_not_depend_on_n():
    small, large = DemoSpec(n_images=24, size=96, seed=3), DemoSpec(n_images=40, size=96, seed=3)
    index = next(
        i for i in range(24) if not (demo._assign(small).background.iloc[i] or
                                     demo._assign(large).background.iloc[i])
    )  # fmt: skip
    for positive in (False, True):
        a, mask_a = render(small, index, positive)
        b, mask_b = render(large, index, positive)
        assert np.array_equal(a, b) and np.array_equal(mask_a, mask_b)


def test_contact_sheet_is_reproducible(dataset, tmp_path):
    out, *_ = dataset
    first, second = tmp_path / "a.png", tmp_path / "b.png"
    contact_sheet(out, first, n=4)
    contact_sheet(out, second, n=4)
    data = Path(first).read_bytes()
    assert data == Path(second).read_bytes()
    assert data.startswith(b"\x89PNG") and b"Software" not in data
    with Image.open(first) as img:
        assert img.width > 200 and img.height > 200
