"""Tests of the multi-class, multi-label synthetic demo (24 images of 128 px, all four classes)."""

from __future__ import annotations

import filecmp
import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

import histo_wsss.demo as demo
from histo_wsss.classes import LabelSpace, class_colors
from histo_wsss.demo import TEXTURES, DemoSpec, contact_sheet, demo_spec, generate, render
from histo_wsss.io import read_mask
from histo_wsss.splits import read_split

REPO = Path(__file__).resolve().parents[1]
CLASSES = ("tumor", "stroma", "lymphocytes", "necrosis")
SPEC = DemoSpec(n_images=24, size=128, seed=5, test_fraction=0.25, tissues=CLASSES)
IGNORE = SPEC.ignore_index


def optical_density(rgb: np.ndarray) -> np.ndarray:
    return -np.log((rgb.astype(np.float32) + 1) / 256)


def inner(region: np.ndarray, px: int) -> np.ndarray:
    """``region`` without its ``px``-wide rim."""
    kernel = np.ones((2 * px + 1, 2 * px + 1), np.uint8)
    return cv2.erode(region.astype(np.uint8), kernel, borderType=cv2.BORDER_REPLICATE) > 0


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo_multiclass")
    table = generate(SPEC, out)
    images, masks = [], []
    for name in table["Image Name"]:
        with Image.open(out / "images" / name) as img:
            assert img.mode == "RGB"
            images.append(np.asarray(img))
        with Image.open(out / "masks" / name) as img:
            assert img.mode == "L"  # one byte per pixel
            masks.append(np.asarray(img))
    return out, table, images, masks


def test_labels_table(dataset):
    out, table, *_ = dataset
    assert (out / "labels.csv").read_text().splitlines()[0] == "Image Name,Tags,Partition"
    pd.testing.assert_frame_equal(pd.read_csv(out / "labels.csv"), table)
    tags = table["Tags"].str.split(";")
    for image_tags in tags:
        assert image_tags and set(image_tags) <= set(CLASSES)
        assert image_tags == sorted(image_tags, key=CLASSES.index)  # in dataset.classes order
    n_tags = tags.str.len()
    assert n_tags.min() == 1 and n_tags.max() == 3 and (n_tags >= 2).mean() > 0.5
    assert {c for t in tags for c in t} == set(CLASSES)
    assert (table["Partition"] == "test").sum() == pytest.approx(24 * 0.25, abs=3)
    assert set(table["Partition"]) == {"train", "test"}


def test_tags_are_the_classes_of_the_mask(dataset):
    _, table, _, masks = dataset
    for tags, mask in zip(table["Tags"], masks, strict=True):
        assert mask.shape == (128, 128) and mask.dtype == np.uint8
        values = set(np.unique(mask).tolist())
        assert values <= set(range(len(CLASSES))) | {IGNORE}
        present = [c for i, c in enumerate(CLASSES) if i in values]
        assert tags.split(";") == present
        for i in values - {IGNORE}:
            assert (mask == i).mean() >= SPEC.min_share


def test_small_classes_are_merged():
    """With a larger min_share a class region under it goes to the image's largest class; the
    rest of the layout is the same (merging draws no random numbers)."""
    merged = DemoSpec(n_images=24, size=128, seed=5, tissues=CLASSES, min_share=0.2)
    n_merged = 0
    for index in range(12):
        _, before = render(SPEC, index)
        _, after = render(merged, index)
        assert np.array_equal(before == IGNORE, after == IGNORE)
        shares = np.bincount(before[before != IGNORE], minlength=len(CLASSES)) / before.size
        small = np.flatnonzero((shares > 0) & (shares < 0.2))
        for c in range(len(CLASSES)):
            if c in small:
                assert not (after == c).any()
                n_merged += 1
            elif len(small) == 0:
                assert np.array_equal(before == c, after == c)
        kept = set(np.unique(after).tolist()) - {IGNORE}
        assert all((after == c).mean() >= 0.2 for c in kept)
    assert n_merged > 0


def test_ignore_index_only_on_white_background(dataset):
    _, _, images, masks = dataset
    with_background = 0
    for rgb, mask in zip(images, masks, strict=True):
        darkest = rgb.min(axis=2)
        background, tissue = mask == IGNORE, mask != IGNORE
        assert tissue.mean() > 0.5
        if background.any():
            with_background += 1
            # 2 px from the tissue edge (blurred by the optics) the background is glass
            assert darkest[inner(background, 2)].min() > 215
        assert (darkest[inner(tissue, 2)] > 215).mean() < 0.2  # tissue is stained
    assert 0 < with_background < len(masks)  # some borders white, some images all tissue


def texture_statistics(rgb: np.ndarray, region: np.ndarray) -> dict[str, float]:
    """Haematoxylin density (mean red-channel optical density) and granularity (energy of the
    red-channel OD at the finest scale over the next one: small nuclei and debris are fine)."""
    od = optical_density(rgb)[..., 0]
    blurred = [cv2.GaussianBlur(od, (0, 0), s) for s in (1, 2, 4)]
    fine, coarse = (blurred[0] - blurred[1]) ** 2, (blurred[1] - blurred[2]) ** 2
    return {
        "density": od[region].mean(),
        "granularity": fine[region].mean() / coarse[region].mean(),
    }


# For each pair of classes, a statistic that is larger for the first in every image holding both
# (within an image, so the per-image staining cannot blur the difference).
ORDER = {
    ("tumor", "stroma"): "density",
    ("tumor", "necrosis"): "density",
    ("lymphocytes", "tumor"): "granularity",
    ("lymphocytes", "stroma"): "density",
    ("lymphocytes", "necrosis"): "density",
    ("necrosis", "stroma"): "granularity",
}


def test_textures_are_distinguishable(dataset):
    _, _, images, masks = dataset
    pairs = dict.fromkeys(ORDER, 0)
    for rgb, mask in zip(images, masks, strict=True):
        stats = {}
        for i, name in enumerate(CLASSES):
            region = inner(mask == i, 3)
            if region.sum() >= 200:
                stats[name] = texture_statistics(rgb, region)
        for (a, b), key in ORDER.items():
            if a in stats and b in stats:
                assert stats[a][key] > stats[b][key], (a, b, key, stats)
                pairs[(a, b)] += 1
    assert all(pairs.values()), pairs  # every pair met in some image


def test_deterministic(dataset, tmp_path):
    out, *_ = dataset
    generate(SPEC, tmp_path)
    files = [str(p.relative_to(out)) for p in sorted(out.rglob("*")) if p.is_file()]
    match, mismatch, errors = filecmp.cmpfiles(out, tmp_path, files, shallow=False)
    assert len(match) == 49 and not mismatch and not errors
    other = DemoSpec(n_images=24, size=128, seed=6, tissues=CLASSES)
    assert not np.array_equal(render(other, 0)[0], render(SPEC, 0)[0])
    assert demo._assign(other)["present"].tolist() != demo._assign(SPEC)["present"].tolist()


def test_plan_follows_classes_per_image():
    spec = DemoSpec(n_images=400, size=64, tissues=CLASSES[:3], classes_per_image=(0.5, 0.5))
    counts = demo._assign(spec)["present"].str.len().value_counts(normalize=True)
    assert set(counts.index) == {1, 2} and counts[1] == pytest.approx(0.5, abs=0.08)
    # the test partition is stratified by tag combination
    plan = demo._assign(SPEC)
    per_combination = plan.groupby(plan["present"].map(frozenset))["test"].agg(["size", "sum"])
    assert (per_combination["sum"] == (per_combination["size"] * 0.25).round()).all()


def test_spec_is_validated():
    for bad in (
        {"tissues": ("tumor", "mucosa")},  # not a texture
        {"tissues": ("tumor", "tumor")},
        {"tissues": ("tumor",)},
        {"tissues": CLASSES[:2], "classes_per_image": (0.5, 0.3, 0.2)},  # 3 of 2 classes
        {"tissues": CLASSES, "classes_per_image": (0.5, 0.2)},  # not summing to 1
        {"tissues": CLASSES, "ignore_index": 3},  # a class index
        {"tissues": CLASSES, "min_share": 0.5},
    ):
        with pytest.raises(ValueError):
            DemoSpec(**bad)
    with pytest.raises(ValueError, match="'mucosa' is none of them"):
        DemoSpec(tissues=("tumor", "mucosa"))


def test_spec_from_config():
    binary = {"n_images": 10, "size": 64, "seed": 1, "positive_fraction": 0.3, "test_fraction": 0.1}
    assert demo_spec(binary, ["HP", "SSA"], "SSA") == DemoSpec(
        **binary, negative_class="HP", positive_class="SSA"
    )
    assert demo_spec(binary, ["SSA", "HP"], "SSA").negative_class == "HP"
    preset = yaml.safe_load((REPO / "config" / "demo_multiclass.yaml").read_text())
    dataset = preset["dataset"]
    assert dataset["format"] == "tags" and len(dataset["classes"]) >= 3
    params = {k: preset["demo"][k] for k in demo.DEMO_KEYS["tags"]}
    params |= {"format": "tags", "ignore_index": dataset["ignore_index"]}
    spec = demo_spec(params, dataset["classes"], "lesion")
    assert spec.multiclass and spec.classes == tuple(dataset["classes"])
    assert set(spec.classes) <= set(TEXTURES) and spec.ignore_index == dataset["ignore_index"]


def test_contact_sheet(dataset, tmp_path):
    out, *_ = dataset
    first, second = tmp_path / "a.png", tmp_path / "b.png"
    colors = class_colors(CLASSES, {CLASSES[1]: [200, 0, 200]})
    contact_sheet(out, first, n=4, colors=colors)
    contact_sheet(out, second, n=4, colors=colors)
    data = first.read_bytes()
    assert data == second.read_bytes() and data.startswith(b"\x89PNG")
    with Image.open(first) as img:
        sheet = np.asarray(img.convert("RGB")).reshape(-1, 3)
    for colour in colors.values():  # each class's legend patch is drawn in its colour
        assert (np.abs(sheet.astype(int) - colour).max(axis=1) <= 2).sum() > 50, colour


@pytest.mark.integration
def test_a_tiny_run_maps_and_refines_the_classes_of_each_images_tags(tiny_multiclass_run):
    """config/demo_multiclass.yaml on 24 images of 96 px: a CAM per tag, label maps of the
    present classes that cover the tissue (background: tissue), per-class quality tables."""
    results = tiny_multiclass_run / "results" / "demo_multiclass"
    classes = yaml.safe_load((REPO / "config" / "demo_multiclass.yaml").read_text())["dataset"][
        "classes"
    ]
    space = LabelSpace(classes, ignore_index=255)
    split = read_split(results / "split" / "split.csv", classes)
    tags = {n: t.split(";") for n, t in zip(split["name"], split["tags"], strict=True)}
    assert len(tags) == 24 and all(tags.values())  # every demo image has a tag

    def files(stage, kind, ext=".png"):
        return {p.stem: p for p in (results / stage / "shards").glob(f"*/{kind}/*{ext}")}

    cams = files("cam", "cams", ".npy")
    assert sorted(cams) == sorted(tags)
    for name, path in cams.items():
        maps = np.load(path)
        assert maps.dtype == np.float16 and maps.shape == (3, 96, 96)
        for k, cls in enumerate(classes):
            assert maps[k].any() <= (cls in tags[name])  # no map of an absent class
        assert 0 <= maps.min() and maps.max() <= 1
    peaks = pd.concat(pd.read_csv(p / "peaks.csv") for p in (results / "cam" / "shards").iterdir())
    assert len(peaks) == sum(len(t) for t in tags.values())
    summary = json.loads((results / "cam" / "summary.json").read_text())
    assert summary["n_cams"] == len(peaks) and set(summary["peak_in_mask"]) == set(split["split"])
    for entry in summary["peak_in_mask"].values():
        assert set(entry["classes"]) <= set(classes) and 0 <= entry["share"] <= 1

    masks, tissue = files("pseudo_masks", "masks"), files("stain", "tissue")
    assert sorted(masks) == sorted(tags)
    for name, path in masks.items():
        labels = space.read_labels(path)
        present = {classes.index(c) + 1 for c in tags[name]}
        assert set(np.unique(labels)) <= {0} | present <= {0, 1, 2, 3}
        on_tissue = read_mask(tissue[name])
        assert (labels[on_tissue] > 0).all() and not labels[~on_tissue].any()
    confusion = pd.concat(
        pd.read_csv(p / "confusion.csv") for p in (results / "pseudo_masks" / "shards").iterdir()
    )
    assert set(confusion["pred_label"]) <= {0, 1, 2, 3} and set(confusion["truth_label"]) <= {
        1,
        2,
        3,
    }  # the real masks: a class on every tissue pixel, unlabelled (left out) off it
    quality = pd.read_csv(results / "pseudo_masks" / "quality_summary.csv")
    assert quality[["miou", "fwiou"]].apply(lambda v: v.between(0, 1)).all().all()
    scores = pd.read_csv(results / "pseudo_masks" / "class_scores.csv")
    assert list(scores["class"].unique()) == ["background", *classes]


def test_a_tiny_run_reports_every_table_and_figure_of_a_binary_run(tiny_multiclass_run):
    """One list of final outputs for every K: the learning curves, the metrics table of the
    per-class scores, the report's tables and the contact sheets of a multi-label run too."""
    results = tiny_multiclass_run / "results" / "demo_multiclass"
    classes = yaml.safe_load((REPO / "config" / "demo_multiclass.yaml").read_text())["dataset"][
        "classes"
    ]
    summary = json.loads((results / "segmentation" / "evaluation.json").read_text())
    table = pd.read_csv(results / "segmentation" / "metrics_table.csv").set_index("split")
    assert list(table.index) == list(summary)
    for split, entry in summary.items():
        for ref in ("pseudo", "truth"):
            assert table.loc[split, f"{ref}_miou"] == round(entry[ref]["miou"], 4)
            assert table.loc[split, f"{ref}_fwiou"] == round(entry[ref]["fwiou"], 4)
            for cls in classes:
                score = entry[ref]["classes"][cls]["iou"]
                assert table.loc[split, f"{ref}_iou_{cls}"] == round(score, 4)
            baseline = entry[ref]["baselines"]["majority_class"]["miou"]
            assert table.loc[split, f"{ref}_miou_majority_class"] == round(baseline, 4)
    assert not [c for c in table.columns if "positive_mean" in c]  # one class's scores
    assert [c for c in table.columns if c.startswith("truth_iou_")] == [
        f"truth_iou_{cls}" for cls in classes
    ]  # in dataset.classes order
    curves = pd.read_csv(results / "segmentation" / "metrics.csv")
    assert "val_mean_class_iou_vs_pseudo_pooled" in curves.columns
    for figure in ("learning_curves", "metrics_table", "stain_normalization"):
        assert (results / "figures" / f"{figure}.png").stat().st_size > 10_000, figure
    for sheet in (results / "review" / "contact_sheet.png", results / "demo" / "contact_sheet.png"):
        assert sheet.stat().st_size > 10_000, sheet
    scores = (results / "report" / "pseudo_mask_class_scores.html").read_text()
    assert all(f"<td>{cls}</td>" in scores for cls in classes)
