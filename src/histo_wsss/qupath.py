"""Masks to and from QuPath's GeoJSON: what a pathologist opens, corrects and exports again.

QuPath (0.4 and later) writes and reads its objects as GeoJSON (File > Export objects as
GeoJSON; File > Import objects from file, or drag and drop): a ``FeatureCollection`` whose
features hold a ``Polygon`` or ``MultiPolygon`` in pixel units, origin at the top-left corner
of the full-resolution image, and ``properties`` with ``objectType`` (``"annotation"``) and
``classification`` (``{"name": ..., "color": [r, g, b]}``; a derived class as ``"names"``).
docs/qupath.md says how this module's output was checked against that format.

A mask holds one value per pixel; :class:`Label` says which values are classes to draw (value,
class name, colour): the workflow's label maps (:mod:`histo_wsss.classes`, read with
:meth:`~histo_wsss.classes.LabelSpace.read_labels`) are the instance :func:`class_labels`, value
``c`` for class ``c - 1`` (K = 1: the positive class); a dataset's class-index mask (value i =
``dataset.classes[i]``) has one label per class too; values without a label (background, an
ignore index) are not drawn.

Geometry. Pixel ``(x, y)`` covers the square ``[x, x+1] x [y, y+1]``. :func:`mask_features`
traces each region with OpenCV (``findContours``, ``RETR_CCOMP``: outer boundaries and their
holes) through the centres of its boundary pixels, widens that outline by half a pixel to the
pixel edges (shapely's mitred buffer; holes shrink alike), scales it to the full-resolution
image and simplifies it (Douglas-Peucker, ``tolerance`` px, topology preserved).
:func:`rasterize` draws geometries back at pixel centres (a pixel belongs to a polygon when its
centre lies inside; QuPath's own rule), later labels over earlier ones.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import shapely
from shapely.geometry import shape
from shapely.geometry.base import BaseGeometry
from shapely.geometry.polygon import orient

from histo_wsss.classes import LabelSpace
from histo_wsss.io import atomic_path

#: Decimals kept of a coordinate in the written GeoJSON (a hundredth of a pixel).
DECIMALS = 2
#: How far (px) a correction's geometry may reach past the image's edges: further means its
#: coordinates are not of this image at full resolution.
EDGE_SLACK = 1.0


class GeoJSONError(ValueError):
    """A GeoJSON file that cannot be a mask of its image; the message names the file."""


@dataclass(frozen=True)
class Label:
    """A class drawn in QuPath: its ``value`` in the mask, its ``name`` and RGB ``color``."""

    value: int
    name: str
    color: tuple[int, int, int]


def class_labels(
    space: LabelSpace, colors: Mapping[str, Sequence[int]] | None = None
) -> list[Label]:
    """The labels of the workflow's label maps: value ``c`` is class ``space.classes[c - 1]``
    (a binary dataset: its positive class; its negative class is the unannotated rest, like
    background), in ``colors`` (class: RGB; a class not in it black: reading needs no colour)."""
    colors = colors or {}
    return [
        Label(c + 1, name, tuple(int(v) for v in colors.get(name, (0, 0, 0))))
        for c, name in enumerate(space.classes)
    ]


# --------------------------------------------------------------------------------------------
# Export


def _region(points: np.ndarray) -> BaseGeometry:
    """The pixels whose centres an OpenCV contour (``(n, 1, 2)``) passes through and encloses."""
    pts = points[:, 0, :].astype(float)
    if len(pts) >= 3:
        polygon = shapely.Polygon(pts)
        return polygon if polygon.is_valid else shapely.make_valid(polygon)
    return shapely.LineString(pts) if len(pts) > 1 else shapely.Point(pts[0])


def _pixel_polygons(binary: np.ndarray) -> list[BaseGeometry]:
    """The regions of a boolean mask as polygons along pixel edges (pixel coordinates)."""
    contours, hierarchy = cv2.findContours(
        binary.astype(np.uint8), cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE
    )
    if not contours:
        return []
    widen = {"join_style": "mitre", "cap_style": "square", "mitre_limit": 2.0}
    polygons = []
    for i, (_, _, child, parent) in enumerate(hierarchy[0]):
        if parent >= 0:
            continue  # a hole: subtracted from its outer boundary below
        region = _region(contours[i]).buffer(0.5, **widen)
        while child >= 0:
            region = region.difference(_region(contours[child]).buffer(-0.5, **widen))
            child = hierarchy[0][child][0]
        polygons.append(region)
    return polygons


def _polygons(geometry: BaseGeometry) -> list[shapely.Polygon]:
    """The polygons of a geometry (a polygon, multipolygon or collection), empty ones dropped."""
    parts = shapely.get_parts(geometry)
    found = []
    for part in parts:
        if isinstance(part, shapely.Polygon):
            found.append(part)
        elif isinstance(part, shapely.MultiPolygon | shapely.GeometryCollection):
            found.extend(_polygons(part))
    return [p for p in found if not p.is_empty and p.area > 0]


def mask_features(
    mask: np.ndarray,
    labels: Sequence[Label],
    size: tuple[int, int] | None = None,
    tolerance: float = 0.5,
) -> list[dict]:
    """GeoJSON features (QuPath annotations) of the labelled regions of ``mask``.

    ``size``: ``(height, width)`` of the full-resolution image the mask was made from at a
    reduced working scale (None: the mask's own); coordinates are scaled to it.
    ``tolerance``: simplification tolerance in full-resolution pixels (0: none). One feature
    per connected region (a polygon with its holes), labels in the order given.
    """
    mask = np.asarray(mask)
    height, width = mask.shape[:2]
    full_h, full_w = size or (height, width)
    sx, sy = full_w / width, full_h / height
    features = []
    for label in labels:
        for region in _pixel_polygons(mask == label.value):
            # pixel centres at x + 0.5: then to the full-resolution image
            region = shapely.affinity.translate(region, 0.5, 0.5)
            region = shapely.affinity.scale(region, sx, sy, origin=(0, 0))
            if tolerance > 0:
                region = region.simplify(tolerance, preserve_topology=True)
            for polygon in _polygons(region):
                features.append(_feature(orient(polygon, sign=1.0), label))
    return features


def _ring(ring: shapely.LinearRing) -> list:
    return np.round(np.asarray(ring.coords), DECIMALS).tolist()


def _feature(polygon: shapely.Polygon, label: Label) -> dict:
    rings = [_ring(polygon.exterior), *map(_ring, polygon.interiors)]
    return {
        "type": "Feature",
        "geometry": {"type": "Polygon", "coordinates": rings},
        "properties": {
            "objectType": "annotation",
            "classification": {"name": label.name, "color": list(label.color)},
        },
    }


def feature_collection(features: Sequence[dict]) -> dict:
    return {"type": "FeatureCollection", "features": list(features)}


def write_geojson(path: str | os.PathLike, features: Sequence[dict]) -> None:
    """Write ``features`` as one GeoJSON FeatureCollection, atomically."""
    text = json.dumps(feature_collection(features), separators=(",", ":"))
    with atomic_path(path) as tmp:
        tmp.write_text(text + "\n")


# --------------------------------------------------------------------------------------------
# Import


def _class_name(classification: object) -> str | None:
    """A QuPath classification's name: ``{"name"}``, a derived class's ``{"names"}`` joined as
    QuPath shows it (``Tumor: Positive``), or a plain string; None when there is none."""
    if isinstance(classification, str):
        return classification
    if isinstance(classification, Mapping):
        if isinstance(classification.get("name"), str):
            return classification["name"]
        names = classification.get("names")
        if isinstance(names, list) and names and all(isinstance(n, str) for n in names):
            return ": ".join(names)
    return None


def _features(data: object, path: str) -> list:
    """The features of a FeatureCollection, of a JSON array of features (QuPath's export
    without the FeatureCollection option) or of a single Feature."""
    if isinstance(data, Mapping) and data.get("type") == "FeatureCollection":
        features = data.get("features")
    elif isinstance(data, Mapping) and data.get("type") == "Feature":
        features = [data]
    else:
        features = data
    if not isinstance(features, list) or not all(isinstance(f, Mapping) for f in features):
        raise GeoJSONError(f"{path}: not a GeoJSON FeatureCollection, Feature or array of features")
    return features


def read_geojson(
    path: str | os.PathLike, labels: Sequence[Label], size: tuple[int, int]
) -> tuple[list[tuple[int, BaseGeometry]], list[str]]:
    """The areas of a QuPath GeoJSON file as ``[(label value, geometry)]`` in the order of
    ``labels``, and notes on what was repaired (for the log).

    ``size``: ``(height, width)`` of the full-resolution image. Raises :class:`GeoJSONError`
    naming the file (and the feature, counted from 0) when the file is not JSON (e.g.
    half-written), a feature has no polygonal geometry or malformed coordinates, no
    classification or one not in ``labels``, or reaches past the image by more than
    :data:`EDGE_SLACK` px. An invalid polygon (e.g. self-intersecting) is repaired with
    shapely's ``make_valid``, and noted.
    """
    path = str(path)
    try:
        with open(path, encoding="utf-8") as stream:
            data = json.load(stream)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise GeoJSONError(f"{path}: cannot read GeoJSON ({err})") from err
    values = {label.name: label.value for label in labels}
    height, width = size
    found: dict[int, list[BaseGeometry]] = {label.value: [] for label in labels}
    notes = []
    for i, feature in enumerate(_features(data, path)):
        where = f"{path}: feature {i}"
        properties = feature.get("properties") or {}
        name = _class_name(properties.get("classification"))
        if name is None:
            raise GeoJSONError(
                f"{where} has no classification: set its class in QuPath to one of {list(values)}"
            )
        if name not in values:
            raise GeoJSONError(f"{where}: unknown class {name!r}, expected one of {list(values)}")
        try:
            geometry = shape(feature.get("geometry"))
        except (AttributeError, TypeError, ValueError, KeyError, IndexError) as err:
            raise GeoJSONError(f"{where}: unreadable geometry ({err})") from err
        if not geometry.is_valid:
            notes.append(f"{where}: {shapely.is_valid_reason(geometry)}, repaired (make_valid)")
            geometry = shapely.make_valid(geometry)
        polygons = _polygons(geometry)
        if not polygons:
            raise GeoJSONError(
                f"{where}: a {geometry.geom_type} holds no area; a correction draws areas "
                "(Polygon or MultiPolygon annotations)"
            )
        x0, y0, x1, y1 = shapely.MultiPolygon(polygons).bounds
        if (
            x0 < -EDGE_SLACK
            or y0 < -EDGE_SLACK
            or x1 > width + EDGE_SLACK
            or y1 > height + EDGE_SLACK
        ):
            raise GeoJSONError(
                f"{where} reaches ({x0:.0f}, {y0:.0f})-({x1:.0f}, {y1:.0f}), past the image's "
                f"{width}x{height} px: coordinates must be pixels of the full-resolution image"
            )
        found[values[name]].extend(polygons)
    areas = [(label.value, g) for label in labels for g in found[label.value]]
    return areas, notes


def rasterize(
    areas: Sequence[tuple[int, BaseGeometry]], size: tuple[int, int], background: int = 0
) -> np.ndarray:
    """A uint8 mask of ``size`` (height, width): ``background``, and each area's value at the
    pixels whose centres it covers (shapely's ``contains_xy`` on the area's bounding box), later
    areas over earlier ones."""
    height, width = size
    mask = np.full((height, width), background, dtype=np.uint8)
    for value, geometry in areas:
        x0, y0, x1, y1 = geometry.bounds
        c0, r0 = max(0, int(np.floor(x0))), max(0, int(np.floor(y0)))
        c1, r1 = min(width, int(np.ceil(x1))), min(height, int(np.ceil(y1)))
        if c0 >= c1 or r0 >= r1:
            continue
        xs, ys = np.meshgrid(np.arange(c0, c1) + 0.5, np.arange(r0, r1) + 0.5)
        shapely.prepare(geometry)
        mask[r0:r1, c0:c1][shapely.contains_xy(geometry, xs, ys)] = value
    return mask
