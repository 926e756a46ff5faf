"""Masks to QuPath GeoJSON and back, on the real GlaS masks; corrections and their bad input."""

import json
import os
from pathlib import Path

import geojson
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from histo_wsss.classes import LabelSpace, class_colors
from histo_wsss.corrections import CorrectionError, list_corrections, make_targets, read_correction
from histo_wsss.io import read_mask, scaled_size, write_png
from histo_wsss.qupath import (
    Label,
    class_labels,
    mask_features,
    rasterize,
    read_geojson,
    write_geojson,
)
from histo_wsss.review import review_queue

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
GLANDS = SHARED / "glas-train" / "gland-masks"
LUAD = SHARED / "wsss4luad-masked" / "masks"
GLAND = [Label(255, "gland", (200, 0, 0))]
GLANDS_SPACE = LabelSpace(("gland",))  # a binary dataset whose positive class is gland


def _data(folder: Path, every: int) -> list[Path]:
    if not folder.is_dir():
        pytest.skip(f"{folder} not found: the shared data lies beside the repository")
    return sorted(folder.glob("*.png"))[::every]


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return (a & b).sum() / max(1, (a | b).sum())


def _round_trip(mask: np.ndarray, labels, tmp_path: Path, tolerance: float = 0.5) -> tuple:
    path = tmp_path / "mask.geojson"
    write_geojson(path, mask_features(mask, labels, tolerance=tolerance))
    data = geojson.loads(path.read_text())
    assert data.is_valid, data.errors()
    areas, notes = read_geojson(path, labels, mask.shape)
    assert notes == []  # the export writes valid polygons
    return rasterize(areas, mask.shape), json.loads(path.read_text())


def test_glas_gland_masks_come_back_from_geojson(tmp_path):
    """Every 5th of the 85 GlaS gland masks (17; all 85 give IoU >= 0.997, docs/qupath.md)."""
    for path in _data(GLANDS, 5):
        mask = read_mask(path)
        back, data = _round_trip(mask.astype(np.uint8) * 255, GLAND, tmp_path)
        assert _iou(back == 255, mask) >= 0.99, path.name
        feature = data["features"][0]
        assert data["type"] == "FeatureCollection"
        assert feature["properties"] == {
            "objectType": "annotation",
            "classification": {"name": "gland", "color": [200, 0, 0]},
        }
        xs = [x for f in data["features"] for ring in f["geometry"]["coordinates"] for x, _ in ring]
        assert 0 <= min(xs) and max(xs) <= mask.shape[1]


def test_without_simplification_the_round_trip_is_exact(tmp_path):
    """Holes, islands in holes, one-pixel regions, diagonal neighbours, the image's edges."""
    mask = np.zeros((40, 50), np.uint8)
    mask[2:30, 3:40] = 255
    mask[8:20, 10:30] = 0  # a hole
    mask[12:15, 15:18] = 255  # an island in it
    mask[35, 45] = mask[36, 46] = 255  # touching at a corner
    mask[0, 0] = mask[39, 49] = 255
    mask[33:39, 2] = 255  # a one-pixel line
    back, data = _round_trip(mask, GLAND, tmp_path, tolerance=0)
    assert np.array_equal(back, mask)
    assert any(len(f["geometry"]["coordinates"]) == 2 for f in data["features"])  # with a hole


def test_class_index_masks_come_back_per_class(tmp_path):
    """WSSS4LUAD's 3-class masks (0 tumor, 1 stroma, 2 normal; 3 background, not drawn)."""
    names = ["tumor", "stroma", "normal"]
    labels = [Label(i, n, (i, i, i)) for i, n in enumerate(names)]
    for path in _data(LUAD, 23):
        mask = np.asarray(Image.open(path))
        back, data = _round_trip(mask, labels, tmp_path)
        back[(back == 0) & ~_rasterized_any(data, mask.shape)] = 3  # undrawn: background
        for label in labels:
            if (mask == label.value).sum() > 1000:
                assert _iou(back == label.value, mask == label.value) >= 0.98, (path, label)
        drawn = {f["properties"]["classification"]["name"] for f in data["features"]}
        assert drawn == {n for i, n in enumerate(names) if (mask == i).any()}


def _rasterized_any(data: dict, shape) -> np.ndarray:
    from shapely.geometry import shape as geometry

    return rasterize([(1, geometry(f["geometry"])) for f in data["features"]], shape) == 1


def test_a_working_scale_mask_is_written_at_full_resolution(tmp_path):
    """A mask at stain.scale 0.5 of a 101x75 image: coordinates span the full image."""
    full = np.zeros((75, 101), bool)
    full[10:60, 20:90] = True
    half = np.asarray(Image.fromarray(full).resize(scaled_size((75, 101), 0.5)[::-1]))
    features = mask_features(half.astype(np.uint8) * 255, GLAND, size=(75, 101), tolerance=0)
    areas = [(255, __import__("shapely").geometry.shape(f["geometry"])) for f in features]
    assert _iou(rasterize(areas, (75, 101)) == 255, full) >= 0.95


def _write(path: Path, data) -> Path:
    path.write_text(json.dumps(data))
    return path


def _square(x0, y0, x1, y1, name="gland", geometry_type="Polygon"):
    ring = [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]
    return {
        "type": "Feature",
        "geometry": {"type": geometry_type, "coordinates": [ring]},
        "properties": {"objectType": "annotation", "classification": {"name": name}},
    }


def test_qupath_exports_in_every_form_are_read(tmp_path):
    """A FeatureCollection, QuPath's plain array of features, a derived class's `names`."""
    as_array = _write(tmp_path / "a.json", [_square(1, 1, 5, 5)])
    areas, _ = read_geojson(as_array, GLAND, (10, 10))
    assert rasterize(areas, (10, 10)).sum() == 16 * 255
    derived = _square(1, 1, 5, 5)
    derived["properties"]["classification"] = {"names": ["gland", "Positive"], "color": [1, 2, 3]}
    labels = [Label(255, "gland: Positive", (1, 2, 3))]
    areas, _ = read_geojson(_write(tmp_path / "b.json", derived), labels, (10, 10))
    assert len(areas) == 1


def test_a_self_intersecting_polygon_is_repaired_and_noted(tmp_path):
    bowtie = _square(0, 0, 8, 8)
    bowtie["geometry"]["coordinates"] = [[[0, 0], [8, 8], [8, 0], [0, 8], [0, 0]]]
    path = _write(tmp_path / "x.geojson", {"type": "FeatureCollection", "features": [bowtie]})
    areas, notes = read_geojson(path, GLAND, (10, 10))
    assert len(notes) == 1 and "Self-intersection" in notes[0] and str(path) in notes[0]
    assert rasterize(areas, (10, 10)).any()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"type": "FeatureCollection", "features": [', "cannot read GeoJSON"),
        ({"type": "FeatureCollection", "features": [_square(1, 1, 5, 5, "tumour")]},
         "feature 0: unknown class 'tumour', expected one of ['gland']"),
        ([_square(1, 1, 50, 5)], "past the image's 10x10 px"),
        ([{**_square(1, 1, 5, 5), "properties": {"objectType": "annotation"}}],
         "has no classification"),
        ([{**_square(1, 1, 5, 5), "geometry": {"type": "LineString",
                                               "coordinates": [[1, 1], [5, 5]]}}],
         "a LineString holds no area"),
        ({"type": "Topology"}, "not a GeoJSON FeatureCollection"),
    ],
    ids=["half-written", "unknown class", "past the edge", "unclassified", "line", "not geojson"],
)  # fmt: skip
def test_a_bad_geojson_correction_is_an_error_naming_it(tmp_path, content, message):
    path = tmp_path / "demo_0001.geojson"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    with pytest.raises(CorrectionError) as err:
        read_correction(path, (10, 10), GLANDS_SPACE)
    assert str(path) in str(err.value) and message in str(err.value)


def test_the_corrections_folder_is_checked_by_name(tmp_path):
    folder = tmp_path / "corrections"
    assert list_corrections(None, ["a"]).empty
    folder.mkdir()
    assert list_corrections(folder, ["a"]).empty  # empty: no corrections
    (folder / ".a.png.partial").write_bytes(b"half")  # hidden: a copy in progress
    write_png(folder / "a.png", np.ones((4, 4), bool))
    assert list(list_corrections(folder, ["a"])["name"]) == ["a"]
    for bad, message in [
        ("b.png", "no image of the dataset is named 'b'"),
        ("a.geojson", "two corrections of one image"),
        ("a.tif", "a correction is a PNG mask or a QuPath GeoJSON file"),
    ]:
        (folder / bad).write_text("{}")
        with pytest.raises(CorrectionError, match=bad.replace(".", r"\.")) as err:
            list_corrections(folder, ["a"])
        assert message in str(err.value)
        (folder / bad).unlink()


def test_png_corrections_are_checked_in_full(tmp_path):
    path = tmp_path / "a.png"
    write_png(path, np.ones((6, 8), bool))
    with pytest.raises(CorrectionError, match="is 8x6 px but the image is 8x7 px"):
        read_correction(path, (7, 8), GLANDS_SPACE)
    path.write_bytes(path.read_bytes()[:40])  # half-written
    with pytest.raises(CorrectionError, match=f"{path}: unreadable mask"):
        read_correction(path, (6, 8), GLANDS_SPACE)


def test_targets_are_written_at_the_working_scale_and_a_test_image_is_refused(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for name in ("a", "b"):
        Image.fromarray(np.zeros((20, 32, 3), np.uint8)).save(images / f"{name}.png")
    folder = tmp_path / "corrections"
    folder.mkdir()
    _write(folder / "a.geojson", [_square(0, 0, 16, 20)])
    split = pd.DataFrame({"name": ["a", "b"], "split": ["train", "test"]})
    paths = {n: str(images / f"{n}.png") for n in ("a", "b")}
    table = list_corrections(folder, paths)
    out = tmp_path / "targets"
    made = make_targets(table, paths, split, GLANDS_SPACE, 0.5, 3, out, log=None)
    assert made[["name", "split", "weight", "area_fraction"]].values.tolist() == [
        ["a", "train", 3, 0.5]
    ]
    assert read_mask(out / "masks" / "a.png").shape == (10, 16)
    write_png(folder / "b.png", np.ones((20, 32), bool))
    with pytest.raises(CorrectionError, match="b.png: b is a test image"):
        make_targets(list_corrections(folder, paths), paths, split, GLANDS_SPACE, 0.5, 1, out, None)


def test_class_labels_draw_each_class_of_a_label_map_in_its_colour():
    # a binary dataset: label 1 is its positive class, in the colour it had as value 255
    colors = class_colors(["normal", "lesion"], {})
    assert class_labels(LabelSpace(("lesion",)), colors) == [
        Label(1, "lesion", (255, 127, 14))  # tab10's second colour
    ]
    colors = class_colors(["normal", "lesion"], {"lesion": [200, 0, 0]})
    assert class_labels(LabelSpace(("lesion",)), colors)[0].color == (200, 0, 0)
    three = LabelSpace(("tumor", "stroma", "lymphocytes"), 255)
    labels = class_labels(three, class_colors(three.classes, {}))
    assert [(lb.value, lb.name) for lb in labels] == [
        (1, "tumor"),
        (2, "stroma"),
        (3, "lymphocytes"),
    ]
    assert len({lb.color for lb in labels}) == 3


def test_the_queue_ranks_positives_by_weighted_score_then_negatives_and_skips_corrected():
    table = pd.DataFrame(
        {
            "name": ["a", "b", "c", "d"],
            "label": [1, 1, 0, 1],
            "head_prob": [0.9, 0.8, 0.9, 0.5],
            "corrected": [False, False, False, True],
            "uncertainty": [0.1, 0.6, 0.0, 0.9],
            "disagreement_vs_target": [0.9, 0.1, 0.0, 0.9],
            "head_vs_label": [0.1, 0.2, 0.9, 0.5],
            "iou_prediction_vs_target": [0.1, 0.9, 1.0, 0.1],
        }
    )
    queue = review_queue(table, {"uncertainty": 1, "disagreement_vs_target": 1,
                                 "head_vs_label": 1}, k=2)  # fmt: skip
    assert list(queue["name"]) == ["a", "b", "c", "d"]
    assert list(queue["in_round"]) == [True, True, False, False]
    assert queue["reason"].tolist() == [
        "prediction and pseudo-mask disagree (IoU 0.10)",
        "uncertain prediction (mean entropy 0.60 bits)",
        "head doubts the label (head probability 0.90, label negative)",
        "corrected already",
    ]
    # the negative image's head doubts its label most, but its target (empty) cannot change
    only_head = {"uncertainty": 0, "disagreement_vs_target": 0, "head_vs_label": 1}
    assert list(review_queue(table, only_head, k=1)["name"]) == ["b", "a", "c", "d"]


def test_geojson_files_are_written_atomically(tmp_path):
    path = tmp_path / "x.geojson"
    write_geojson(path, [])
    assert json.loads(path.read_text()) == {"type": "FeatureCollection", "features": []}
    assert os.listdir(tmp_path) == ["x.geojson"]
