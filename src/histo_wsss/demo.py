"""Embedded synthetic H&E demo datasets: MHIST's binary format, and a multi-class, multi-label one.

Tissue is drawn as haematoxylin and eosin concentration maps and turned into RGB through
Beer-Lambert with per-image stain vectors and stain amounts, so stain normalisation has real work
to do; white background at some borders. Every image is laid out the same way: its tissue is one
class, and each further class present carves an irregular region out of what is left
(:func:`_carve`); each class then paints its own texture.

- The binary demo (MHIST's labels CSV; masks 255 = positive class): colon mucosa (eosin-pink
  fibrous stroma with scattered nuclei, glands with epithelial rims around white lumens);
  positive images hold 1-3 dysplasia-like regions (crowded, enlarged, hyperchromatic nuclei;
  more purple cytoplasm) covering 10-60% of the tissue.
- The multi-class demo (``DemoSpec.tissues``; a ``Tags`` labels CSV and class-index masks, the
  ignore index on the white background): each image holds 1-3 of the tissue classes of
  :data:`TEXTURES`, each covering at least ``min_share`` of the image, and its tags are exactly
  the classes of its mask.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from matplotlib.colors import to_hex, to_rgb
from matplotlib.patches import Patch
from PIL import Image

from histo_wsss.figures import figure
from histo_wsss.io import read_rgb, write_csv, write_png

COLUMNS = (
    "Image Name",
    "Majority Vote Label",
    "Number of Annotators who Selected SSA (Out of 7)",
    "Partition",
)
TAGS_COLUMNS = ("Image Name", "Tags", "Partition")  # the multi-label labels CSV
TAG_SEPARATOR = ";"
POSITIVE_COLOUR = "#00ff66"  # the binary contact sheet's outline of the positive class
# Typical H and E optical-density vectors of scanned H&E slides (Macenko et al.'s reference, as
# used by torchstain); Ruifrok & Johnston's idealised eosin (0.07, 0.99, 0.11) absorbs almost no
# red, which real slides do not show and which Macenko's OD threshold cannot see.
H_REF = np.array([0.5626, 0.7201, 0.4062])
E_REF = np.array([0.2159, 0.8012, 0.5581])
BACKGROUND_SHARE = 0.03  # share of (negative) images that are almost entirely background
_SHIFT = 4  # cv2 sub-pixel drawing: coordinates in 1/16 px
_LABEL_STREAM = 0xDE30  # spawn key separating the label stream from the per-image streams
LESION_SHARE = (0.1, 0.6)  # the binary demo's lesion: this share of the tissue
CARVE_SHARE = (0.25, 0.65)  # a further class of the multi-class demo: this share of what is left
# The demo's keys (config section `demo`) that each labels format reads.
DEMO_KEYS = {
    "mhist": ("n_images", "size", "seed", "positive_fraction", "test_fraction"),
    "tags": ("n_images", "size", "seed", "test_fraction", "classes_per_image", "min_share"),
}


@dataclass(frozen=True)
class DemoSpec:
    """Parameters of a demo dataset: binary (MHIST's format) unless ``tissues`` names classes.

    ``tissues``: the multi-class demo's classes, in ``dataset.classes`` order, each a name of
    :data:`TEXTURES`; ``classes_per_image``: the shares of images holding 1, 2, 3, ... of them;
    ``min_share``: the least share of an image's pixels a class present covers (smaller regions
    are merged into the largest class, so the tags are exactly the classes of the mask);
    ``ignore_index``: the mask value of the white non-tissue background. ``positive_fraction``
    and the two class names apply to the binary demo only.
    """

    n_images: int = 200
    size: int = 224
    seed: int = 0
    positive_fraction: float = 0.5
    test_fraction: float = 0.2
    negative_class: str = "normal"
    positive_class: str = "lesion"
    tissues: tuple[str, ...] = ()
    classes_per_image: tuple[float, ...] = (0.2, 0.45, 0.35)
    min_share: float = 0.05
    ignore_index: int = 255

    def __post_init__(self) -> None:
        # lists (from a config) become tuples: the spec is hashed
        object.__setattr__(self, "tissues", tuple(self.tissues))
        object.__setattr__(self, "classes_per_image", tuple(self.classes_per_image))
        if self.n_images < 1:
            raise ValueError(f"n_images must be >= 1, got {self.n_images}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        if self.size < 64:
            raise ValueError(f"size must be >= 64 px, got {self.size}")
        for name in ("positive_fraction", "test_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1], got {getattr(self, name)}")
        if self.negative_class == self.positive_class:
            raise ValueError(f"the two class names must differ, got {self.positive_class!r}")
        if self.multiclass:
            self._check_tissues()

    def _check_tissues(self) -> None:
        unknown = [t for t in self.tissues if t not in TEXTURES]
        if unknown:
            raise ValueError(
                f"the multi-class demo draws the classes {', '.join(TEXTURES)}; "
                f"{', '.join(map(repr, unknown))} is none of them"
            )
        if len(set(self.tissues)) < len(self.tissues) or len(self.tissues) < 2:
            raise ValueError(f"the multi-class demo needs 2+ distinct classes, got {self.tissues}")
        shares = np.asarray(self.classes_per_image, float)
        if not (
            1 <= len(shares) <= len(self.tissues)
            and (shares >= 0).all()
            and abs(shares.sum() - 1) < 1e-6
        ):
            raise ValueError(
                "classes_per_image must give the shares of images with 1, 2, ... classes (at "
                f"most {len(self.tissues)}), summing to 1; got {list(self.classes_per_image)}"
            )
        if not 0.0 <= self.min_share <= 0.2:
            raise ValueError(f"min_share must lie in [0, 0.2], got {self.min_share}")
        if not len(self.tissues) <= self.ignore_index <= 255:
            raise ValueError(
                f"ignore_index must lie in [{len(self.tissues)}, 255] (not a class index), got "
                f"{self.ignore_index}"
            )

    @property
    def multiclass(self) -> bool:
        """Whether this is the multi-class, multi-label demo."""
        return bool(self.tissues)

    @property
    def classes(self) -> tuple[str, ...]:
        """The class names, in the order of their indices (binary: negative, positive)."""
        return self.tissues or (self.negative_class, self.positive_class)


def demo_spec(demo: Mapping, classes: Sequence[str], positive_class: str) -> DemoSpec:
    """The spec of the config's demo: ``demo`` holds the `demo` keys of its labels format
    (:data:`DEMO_KEYS`), plus ``format: tags`` and ``ignore_index`` for the multi-class
    demo, whose classes are ``classes``; else the binary demo's positive class is
    ``positive_class`` and its negative class the other of ``classes``."""
    demo = dict(demo)
    if demo.pop("format", "mhist") == "tags":
        return DemoSpec(**demo, tissues=tuple(classes))
    negative, positive = classes
    if positive != positive_class:
        negative, positive = positive, negative
    return DemoSpec(**demo, negative_class=negative, positive_class=positive)


def demo_names(n_images: int) -> list[str]:
    """Image names (stems): ``demo_0000`` ... zero-padded to at least 4 digits."""
    width = max(4, len(str(max(n_images - 1, 0))))
    return [f"demo_{i:0{width}d}" for i in range(n_images)]


@functools.lru_cache(maxsize=8)
def _assign(spec: DemoSpec) -> pd.DataFrame:
    """Seeded per-image plan: ``present`` (the class indices drawn, the tissue's class first),
    ``background`` (almost no tissue) and ``test`` (the partition); binary: also ``positive``
    and the annotator count ``votes``."""
    n = spec.n_images
    rng = np.random.default_rng(np.random.SeedSequence([spec.seed, n], spawn_key=(_LABEL_STREAM,)))
    if spec.multiclass:
        return _assign_tissues(spec, rng)
    positive = np.zeros(n, bool)
    positive[rng.choice(n, round(n * spec.positive_fraction), replace=False)] = True
    votes = np.where(positive, rng.integers(4, 8, n), rng.integers(0, 4, n))
    negatives = np.flatnonzero(~positive)
    n_background = min(len(negatives), max(int(n >= 20), round(n * BACKGROUND_SHARE)))
    background = np.zeros(n, bool)
    background[rng.choice(negatives, n_background, replace=False)] = True
    test = _stratified_test(rng, positive, spec.test_fraction)
    return pd.DataFrame(
        {
            "present": [(0, 1) if p else (0,) for p in positive],
            "background": background,
            "test": test,
            "positive": positive,
            "votes": votes,
        },
        index=demo_names(n),
    )


def _assign_tissues(spec: DemoSpec, rng: np.random.Generator) -> pd.DataFrame:
    """The multi-class plan: how many classes (``classes_per_image``) and which (uniformly, in
    a random order: the first is the tissue's, the others carve regions out of it)."""
    n, k = spec.n_images, len(spec.tissues)
    counts = rng.choice(len(spec.classes_per_image), n, p=spec.classes_per_image) + 1
    present = [tuple(int(c) for c in rng.permutation(k)[:m]) for m in counts]
    combination = np.array([sum(1 << c for c in p) for p in present])
    return pd.DataFrame(
        {
            "present": present,
            "background": np.zeros(n, bool),
            "test": _stratified_test(rng, combination, spec.test_fraction),
        },
        index=demo_names(n),
    )


def _stratified_test(rng: np.random.Generator, group: np.ndarray, fraction: float) -> np.ndarray:
    """``fraction`` of each group's images (rounded) marked test, groups in sorted order."""
    test = np.zeros(len(group), bool)
    for value in np.unique(group):
        members = np.flatnonzero(group == value)
        test[rng.choice(members, round(len(members) * fraction), replace=False)] = True
    return test


# ----------------------------------------------------------------------------- random fields


def _field(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Smooth Gaussian random field with zero mean and unit standard deviation."""
    step = max(int(sigma // 3), 1)  # smooth a coarser grid and upsample it (faster)
    rows, cols = -(-shape[0] // step) + 1, -(-shape[1] // step) + 1
    noise = rng.standard_normal((rows, cols)).astype(np.float32)
    field = cv2.GaussianBlur(noise, (0, 0), sigma / step, borderType=cv2.BORDER_REFLECT)
    if step > 1:
        field = cv2.resize(field, (cols * step, rows * step), interpolation=cv2.INTER_CUBIC)
    field = field[: shape[0], : shape[1]]
    return (field - field.mean()) / (field.std() + 1e-6)


def _fibres(rng: np.random.Generator, size: int) -> tuple[np.ndarray, float]:
    """Wavy collagen-fibre texture in [0, 1] (smoothed along one direction, then warped).

    Returns the texture and the fibre direction in degrees (image coordinates).
    """
    angle = rng.uniform(0, np.pi)
    half = 9
    yy, xx = np.mgrid[-half : half + 1, -half : half + 1].astype(np.float32)
    along = xx * np.cos(angle) + yy * np.sin(angle)
    across = -xx * np.sin(angle) + yy * np.cos(angle)
    kernel = np.exp(-0.5 * ((along / 5.0) ** 2 + (across / 0.9) ** 2))
    pad = 12
    noise = rng.standard_normal((size + 2 * pad, size + 2 * pad)).astype(np.float32)
    streaks = cv2.filter2D(noise, -1, kernel / kernel.sum(), borderType=cv2.BORDER_REFLECT)
    grid_y, grid_x = np.mgrid[0:size, 0:size].astype(np.float32)
    map_x = grid_x + pad + 7.0 * _field(rng, (size, size), 14.0)
    map_y = grid_y + pad + 7.0 * _field(rng, (size, size), 14.0)
    warped = cv2.remap(streaks, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    warped = (warped - warped.mean()) / (warped.std() + 1e-6)
    return np.clip(0.5 + 0.35 * warped, 0.0, 1.0), float(np.degrees(angle))


def _tissue(rng: np.random.Generator, size: int, background: bool) -> np.ndarray:
    """Tissue mask: the whole field, or tissue with white background at one or two borders."""
    if background:
        fraction = rng.uniform(0.005, 0.025)
    elif rng.random() < 0.3:
        return np.ones((size, size), bool)
    else:
        fraction = rng.uniform(0.6, 0.97)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    angle = rng.uniform(0, 2 * np.pi)
    ramp = xx * np.cos(angle) + yy * np.sin(angle)
    if rng.random() < 0.35:  # a curved edge: tissue away from a corner / a rounded fragment
        cx, cy = rng.uniform(-0.3, 1.3, 2)
        ramp = -np.hypot(xx - cx, yy - cy)
    score = ramp + 0.05 * _field(rng, (size, size), size / 10) * (size / 224) ** 0.5
    return score >= np.quantile(score, 1.0 - fraction)


def _carve(rng: np.random.Generator, tissue: np.ndarray, share: tuple[float, float]) -> np.ndarray:
    """1-3 irregular blobs covering a random ``share`` (low, high) of ``tissue``."""
    size = tissue.shape[0]
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    inside = np.argwhere(tissue)
    score = np.full(tissue.shape, -np.inf, np.float32)
    for _ in range(rng.integers(1, 4)):
        cy, cx = inside[rng.integers(len(inside))]
        sx, sy = rng.uniform(0.15, 0.35, 2) * size
        blob = -0.5 * (((xx - cx) / sx) ** 2 + ((yy - cy) / sy) ** 2)
        score = np.maximum(score, blob + rng.uniform(-0.3, 0.0))
    score += 0.3 * _field(rng, tissue.shape, 12.0) + 0.1 * _field(rng, tissue.shape, 5.0)
    fraction = rng.uniform(*share)
    region = score >= np.quantile(score[tissue], 1.0 - fraction)
    opened = cv2.morphologyEx(region.astype(np.uint8), cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
    return (opened.astype(bool) if opened.any() else region) & tissue


def _layout(rng: np.random.Generator, spec: DemoSpec, tissue: np.ndarray, present) -> np.ndarray:
    """Class index per pixel, -1 off the tissue: the tissue is class ``present[0]``, and each
    further class carves a region out of what is left. In the multi-class demo a class under
    ``min_share`` of the pixels is then merged into the largest, so every class of the mask
    covers at least that share (and is tagged)."""
    labels = np.where(tissue, present[0], -1).astype(np.int16)
    free = tissue
    for c in present[1:]:
        region = _carve(rng, free, CARVE_SHARE if spec.multiclass else LESION_SHARE)
        labels[region] = c
        free = free & ~region
    if not spec.multiclass:
        return labels
    counts = np.bincount(labels[tissue], minlength=len(spec.classes))
    while True:
        small = np.flatnonzero((counts > 0) & (counts < spec.min_share * labels.size))
        if not len(small):
            return labels
        smallest, largest = small[np.argmin(counts[small])], np.argmax(counts)
        labels[labels == smallest] = largest
        counts[largest] += counts[smallest]
        counts[smallest] = 0


# ----------------------------------------------------------------------------- tissue drawing


class _Canvas:
    """Haematoxylin/eosin concentration maps plus uint8 canvases for anti-aliased drawing."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.nuclei = np.zeros((size, size), np.uint8)  # nuclear stain, 0-255
        self.goblets = np.zeros((size, size), np.uint8)  # mucin vacuoles, 0-255
        self.lumen = np.zeros((size, size), np.float32)
        self.epithelium = np.zeros((size, size), np.float32)

    def nucleus(self, x, y, half_long, half_short, angle_deg, value) -> None:
        """Draw one elliptic nucleus (sub-pixel centre, anti-aliased)."""
        scale = 1 << _SHIFT
        centre = (int(x * scale + 0.5), int(y * scale + 0.5))
        axes = (max(int(half_long * scale + 0.5), 1), max(int(half_short * scale + 0.5), 1))
        cv2.ellipse(
            self.nuclei, centre, axes, float(angle_deg), 0, 360, int(value), -1, cv2.LINE_AA, _SHIFT
        )

    def goblet(self, x, y, radius) -> None:
        """Draw one mucin vacuole of a goblet cell."""
        scale = 1 << _SHIFT
        centre = (int(x * scale + 0.5), int(y * scale + 0.5))
        cv2.circle(self.goblets, centre, int(radius * scale + 0.5), 255, -1, cv2.LINE_AA, _SHIFT)


def _stroma_nuclei(rng, canvas: _Canvas, tissue, region, fibre_angle_deg) -> None:
    """Stromal nuclei: spindle fibroblasts and small round lymphocytes, sometimes a dense
    lymphoid aggregate (in either class, so darkness alone does not give the label away);
    within the lesion region, extra enlarged, hyperchromatic nuclei."""
    size = canvas.size
    count = rng.poisson(size * size / 260 * rng.uniform(0.5, 2.0))  # per-image cellularity
    xy = [rng.uniform(0, size, (count, 2))]
    kinds = [np.where(rng.random(count) < 0.55, 0, 1)]  # 0 fibroblast, 1 lymphocyte, 2 lesion
    if rng.random() < 0.5:  # lymphoid aggregate: a dense cloud of lymphocytes
        centre = rng.uniform(0, size, 2)
        spread = rng.uniform(10.0, 28.0, 2)
        k = rng.poisson(spread.prod() * rng.uniform(0.2, 0.4))
        xy.append(centre + rng.standard_normal((k, 2)) * spread)
        kinds.append(np.ones(k, int))
    if region.any():
        inside = np.argwhere(region)[:, ::-1]
        k = rng.poisson(len(inside) / 2000)
        xy.append(inside[rng.integers(0, len(inside), k)] + rng.uniform(0, 1, (k, 2)))
        kinds.append(np.full(k, 2))
    xy, kinds = np.concatenate(xy), np.concatenate(kinds)
    ix, iy = np.clip(xy.astype(int), 0, size - 1).T
    keep = (xy >= 0).all(1) & (xy < size).all(1) & tissue[iy, ix]
    keep &= (canvas.lumen[iy, ix] < 0.5) & (canvas.epithelium[iy, ix] < 0.5)
    kinds[(kinds == 0) & region[iy, ix]] = 2
    # per kind: half long axis, half short axis (lymphocytes: x long), stain value (0-255)
    low = np.array([[3.0, 1.2, 150], [2.0, 0.8, 175], [3.8, 2.6, 180]])[kinds]
    high = np.array([[4.2, 1.8, 205], [2.7, 1.0, 220], [5.5, 3.8, 225]])[kinds]
    long, short, value = rng.uniform(low, high).T
    short = np.where(kinds == 1, long * short, short)
    angle = np.where(kinds == 0, fibre_angle_deg + rng.normal(0, 15, len(kinds)), 0.0)
    angle += np.where(kinds == 2, rng.uniform(0, 180, len(kinds)), 0.0)
    for i in np.flatnonzero(keep):
        canvas.nucleus(xy[i, 0], xy[i, 1], long[i], short[i], angle[i], value[i])


def _glands(rng, canvas: _Canvas, tissue, region) -> None:
    """Crypts: white lumen, epithelial rim with basal nuclei and goblet cells.

    Glands whose centre lies in the lesion region are smaller, crowded and irregular; nuclei
    in the lesion region are enlarged, elongated, stratified and hyperchromatic.
    """
    size = canvas.size
    inside = np.argwhere(region)[:, ::-1]  # lesion glands first, densely seeded in the region
    seeds = inside[rng.integers(0, len(inside), len(inside) // 25)] if len(inside) else inside
    cx, cy = np.concatenate([seeds + 0.5, rng.uniform(-20, size + 20, (size * size // 90, 2))]).T
    n = len(cx)
    ix, iy = np.clip(cx.astype(int), 0, size - 1), np.clip(cy.astype(int), 0, size - 1)
    les = region[iy, ix]
    lumen_r = np.where(les, rng.uniform(3.5, 8.0, n), rng.uniform(5.0, 11.0, n))
    wall = np.where(les, rng.uniform(9.0, 12.0, n), rng.uniform(8.0, 10.0, n))
    gap = np.where(les, rng.uniform(3.0, 9.0, n), rng.uniform(5.0, 14.0, n))
    sparse = rng.uniform(0.3, 0.85)  # per-image density of normal glands
    ok = tissue[iy, ix] & (rng.random(n) >= np.where(les, 0.5 * sparse, sparse))
    placed = np.empty((0, 3))
    for i in np.flatnonzero(ok):
        outer = lumen_r[i] + wall[i]
        dist = np.hypot(placed[:, 0] - cx[i], placed[:, 1] - cy[i])
        if (dist < placed[:, 2] + outer + gap[i]).any():
            continue
        placed = np.vstack([placed, (cx[i], cy[i], outer)])
        _draw_gland(rng, canvas, region, cx[i], cy[i], lumen_r[i], wall[i], bool(les[i]))


def _draw_gland(rng, canvas: _Canvas, region, cx, cy, lumen_r, wall, les) -> None:
    """Rasterise one gland (lumen, epithelium) and draw its nuclei and goblet cells."""
    size = canvas.size
    elong = rng.uniform(1.0, 1.8 if les else 1.4)
    a, b = lumen_r * elong**0.5, lumen_r / elong**0.5
    rot = rng.uniform(0, np.pi)
    ks = np.arange(2, 6, dtype=np.float32)
    amp = (rng.uniform(0, 0.16 if les else 0.07, len(ks)) / ks**0.5).astype(np.float32)
    phase = rng.uniform(0, 2 * np.pi, len(ks)).astype(np.float32)

    def radius(theta):  # lumen boundary scale as a function of the polar angle
        return 1.0 + np.sum(amp * np.cos(np.multiply.outer(theta, ks) + phase), axis=-1)

    reach = int(np.ceil(max(a, b) * 1.5 + wall + 3))
    x0, x1 = max(int(cx) - reach, 0), min(int(cx) + reach + 1, size)
    y0, y1 = max(int(cy) - reach, 0), min(int(cy) + reach + 1, size)
    if x0 >= x1 or y0 >= y1:
        return
    dy, dx = np.ogrid[y0:y1, x0:x1]
    dx, dy = (dx - cx).astype(np.float32), (dy - cy).astype(np.float32)
    cos, sin = np.float32(np.cos(rot)), np.float32(np.sin(rot))
    u = (dx * cos + dy * sin) / np.float32(a)
    v = (dy * cos - dx * sin) / np.float32(b)
    rho = np.hypot(u, v) / radius(np.arctan2(v, u))
    # approximate distance outside the lumen boundary, in pixels
    dist = (rho - np.float32(1.0)) * np.float32(lumen_r)
    lumen = np.clip(0.5 - dist, 0, 1)
    epi = np.clip(np.float32(wall + 0.5) - dist, 0, 1) - lumen
    canvas.lumen[y0:y1, x0:x1] = np.maximum(canvas.lumen[y0:y1, x0:x1], lumen)
    canvas.epithelium[y0:y1, x0:x1] = np.maximum(canvas.epithelium[y0:y1, x0:x1], epi)

    def place(depth, spacing, jitter):
        """Points at ``depth`` px outside the lumen boundary, ``spacing`` px apart."""
        perimeter = 2 * np.pi * (lumen_r + depth)
        count = max(int(perimeter / spacing), 4)
        t = (np.arange(count) + rng.uniform(0, 1)) / count * 2 * np.pi
        t = t + rng.normal(0, jitter / (lumen_r + depth), count)
        r = radius(t)
        scale = 1.0 + depth / lumen_r
        pu, pv = a * r * np.cos(t) * scale, b * r * np.sin(t) * scale
        px = cx + pu * np.cos(rot) - pv * np.sin(rot)
        py = cy + pu * np.sin(rot) + pv * np.cos(rot)
        angle = np.degrees(np.arctan2(py - cy, px - cx))  # radial: columnar cells
        inside = (px >= 0) & (px < size) & (py >= 0) & (py < size)
        return px[inside], py[inside], angle[inside]

    # goblet cells (mucin vacuoles) towards the lumen, fewer in dysplasia
    for x, y, _ in zip(*place(wall * 0.45, 6.0, 1.0), strict=True):
        if not region[int(y), int(x)] and rng.random() < 0.8:
            canvas.goblet(x, y, rng.uniform(1.8, 2.6))
        elif rng.random() < 0.1:
            canvas.goblet(x, y, rng.uniform(1.2, 1.8))
    # nuclei: one basal row (normal); crowded, stratified rows in the lesion region
    rows = [(wall * 0.84, 4.4, 0.5)]
    if les:
        rows = [(wall * 0.75, 4.4, 0.8), (wall * 0.42, 10.0, 1.5)]
    for depth, spacing, jitter in rows:
        for x, y, angle in zip(*place(depth, spacing, jitter), strict=True):
            if region[int(y), int(x)]:
                long, short = rng.uniform(4.0, 5.4), rng.uniform(1.8, 2.3)
                value = rng.uniform(175, 215)
            else:
                long, short = rng.uniform(2.6, 3.6), rng.uniform(1.4, 2.0)
                value = rng.uniform(150, 200)
            canvas.nucleus(x, y, long, short, angle + rng.normal(0, 8), value)


# ----------------------------------------------------------------------------- tissue classes


def _points(rng: np.random.Generator, region: np.ndarray, per_px: float) -> np.ndarray:
    """Random points (x, y) in ``region``, ``per_px`` per pixel on average."""
    inside = np.argwhere(region)[:, ::-1]
    k = rng.poisson(len(inside) * per_px) if len(inside) else 0
    return inside[rng.integers(0, max(len(inside), 1), k)] + rng.uniform(0, 1, (k, 2))


def _draw_nuclei(rng, canvas: _Canvas, xy, long, aspect, value, angle=None) -> None:
    """Nuclei at ``xy``: half long axis uniform in ``long`` (px), half short axis that times a
    uniform ``aspect``, stain uniform in ``value`` (0-255); orientation ``angle`` (degrees, +-15)
    or random."""
    k = len(xy)
    half_long = rng.uniform(*long, k)
    half_short = half_long * rng.uniform(*aspect, k)
    stain = rng.uniform(*value, k)
    turn = rng.uniform(0, 180, k) if angle is None else angle + rng.normal(0, 15, k)
    for i in range(k):
        canvas.nucleus(xy[i, 0], xy[i, 1], half_long[i], half_short[i], turn[i], stain[i])


def _tumor(rng, canvas: _Canvas, region: np.ndarray):
    """Tumour: sheets of crowded, enlarged, pleomorphic, hyperchromatic nuclei in purple
    cytoplasm, split into nests by thin eosin-pink septa."""
    septa = np.exp(-((_field(rng, region.shape, 9.0) / 0.15) ** 2))  # zero crossings: a network
    xy = _points(rng, region & (septa < 0.3), 1 / 70)
    _draw_nuclei(rng, canvas, xy, (3.8, 5.6), (0.6, 0.9), (175, 230))
    e = 0.2 + 0.03 * _field(rng, region.shape, 3.0) + 0.3 * septa
    return 0.05 + 0.07 * (1 - septa), e


def _stroma(rng, canvas: _Canvas, region: np.ndarray):
    """Stroma: eosin-pink wavy collagen fibres with pale loose patches, sparse spindle
    fibroblast nuclei along the fibres and a few lymphocytes."""
    fibres, fibre_angle = _fibres(rng, region.shape[0])
    loose = np.clip(0.5 + 0.5 * _field(rng, region.shape, 6.0), 0, 1)
    _draw_nuclei(
        rng, canvas, _points(rng, region, 1 / 700), (3.0, 4.2), (0.35, 0.5), (150, 205), fibre_angle
    )
    _draw_nuclei(rng, canvas, _points(rng, region, 1 / 3000), (2.0, 2.7), (0.8, 1.0), (175, 220))
    return np.full(region.shape, 0.07, np.float32), 0.12 + 0.55 * fibres * (0.55 + 0.45 * loose)


def _lymphocytes(rng, canvas: _Canvas, region: np.ndarray):
    """Lymphocytic infiltrate: dense small round dark nuclei, scant cytoplasm, a few larger
    pale histiocyte nuclei."""
    _draw_nuclei(rng, canvas, _points(rng, region, 1 / 800), (3.5, 4.5), (0.7, 0.9), (110, 140))
    _draw_nuclei(rng, canvas, _points(rng, region, 1 / 20), (2.0, 2.7), (0.8, 1.0), (200, 235))
    return np.full(region.shape, 0.09, np.float32), 0.1 + 0.03 * _field(rng, region.shape, 3.0)


def _necrosis(rng, canvas: _Canvas, region: np.ndarray):
    """Necrosis: pale, blotchy, structureless eosin with faint ghost nuclei and clusters of
    small dark nuclear debris (karyorrhexis)."""
    shape = region.shape
    _draw_nuclei(rng, canvas, _points(rng, region, 1 / 500), (2.5, 4.0), (0.8, 1.0), (40, 80))
    clusters = region & (_field(rng, shape, 8.0) > -0.3)
    _draw_nuclei(rng, canvas, _points(rng, clusters, 1 / 60), (0.6, 1.5), (0.5, 1.0), (150, 230))
    e = 0.24 + 0.07 * _field(rng, shape, 6.0)
    return 0.05 + 0.02 * _field(rng, shape, 2.5), e


# The multi-class demo's tissue classes and their painters: (rng, canvas, region) -> H, E maps.
TEXTURES = {
    "tumor": _tumor,
    "stroma": _stroma,
    "lymphocytes": _lymphocytes,
    "necrosis": _necrosis,
}


def _staining(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, float, float]:
    """Per-image staining: stain matrix (rows H, E: the Ruifrok vectors each rotated by 2-7
    degrees, renormalised), stain amounts (H, E; incl. section thickness), Io, glass OD."""
    vectors = []
    for ref in (H_REF, E_REF):
        ref = ref / np.linalg.norm(ref)
        perp = rng.standard_normal(3)
        perp -= perp.dot(ref) * ref
        perp /= np.linalg.norm(perp)
        theta = np.radians(rng.uniform(2.0, 7.0))
        vec = np.abs(np.cos(theta) * ref + np.sin(theta) * perp)
        vectors.append(vec / np.linalg.norm(vec))
    amounts = np.array([rng.uniform(0.6, 1.45), rng.uniform(0.65, 1.35)]) * rng.uniform(0.8, 1.25)
    io, glass = rng.uniform(240, 255), rng.uniform(0.0, 0.03)
    return np.stack(vectors).astype(np.float32), amounts.astype(np.float32), io, glass


def _paint_mucosa(rng, canvas: _Canvas, labels: np.ndarray, spec: DemoSpec):
    """The binary demo's colon mucosa, dysplastic in the positive class's region: H and E
    concentration maps and the chromatin variegation of its nuclei."""
    size = canvas.size
    tissue, region = labels >= 0, labels == 1
    fibres, fibre_angle = _fibres(rng, size)
    loose = np.clip(0.5 + 0.5 * _field(rng, (size, size), 6.0), 0, 1)  # pale, loose patches
    _glands(rng, canvas, tissue, region)
    _stroma_nuclei(rng, canvas, tissue, region, fibre_angle)

    soft_region = cv2.GaussianBlur(region.astype(np.float32), (0, 0), 1.5)
    epi, lumen = canvas.epithelium, canvas.lumen
    stroma = np.clip(1.0 - epi - lumen, 0, 1)
    goblets = canvas.goblets.astype(np.float32) / 255 * epi
    conc_e = (
        stroma * (0.12 + 0.55 * fibres * (0.55 + 0.45 * loose))
        + epi * (0.24 + 0.04 * soft_region) * (1 - 0.85 * goblets)
        + lumen * 0.03
    )
    conc_h = (
        stroma * (0.07 + 0.03 * soft_region)
        + epi * (0.08 + 0.12 * soft_region) * (1 - goblets)
        + goblets * 0.14
        + lumen * 0.01
    )
    return conc_h, conc_e, 1 + 0.6 * soft_region


def _paint_tissues(rng, canvas: _Canvas, labels: np.ndarray, spec: DemoSpec):
    """The multi-class demo: each class present paints its texture (:data:`TEXTURES`) in its
    region, blended over 1-2 px where classes meet; tumour chromatin is the most variegated."""
    shape = labels.shape
    present = [c for c in range(len(spec.tissues)) if (labels == c).any()]
    soft = [cv2.GaussianBlur((labels == c).astype(np.float32), (0, 0), 1.0) for c in present]
    total = np.sum(soft, axis=0) + np.float32(1e-6)
    conc_h, conc_e = np.zeros(shape, np.float32), np.zeros(shape, np.float32)
    variegation = np.ones(shape, np.float32)
    for c, weight in zip(present, soft, strict=True):
        weight = weight / total
        h, e = TEXTURES[spec.tissues[c]](rng, canvas, labels == c)
        conc_h += weight * h
        conc_e += weight * e
        if spec.tissues[c] == "tumor":
            variegation += 0.6 * weight
    return conc_h, conc_e, variegation


def _with_nuclei(rng, canvas: _Canvas, conc_h, conc_e, variegation):
    """Add the canvas's nuclei (mottled chromatin, more so where ``variegation`` is high) to
    the H and E concentration maps."""
    size = canvas.size
    chromatin = 1.0 + 0.25 * _field(rng, (size, size), 0.8) * variegation
    nuclei = canvas.nuclei.astype(np.float32) / 255 * np.clip(chromatin, 0.5, 1.5)
    return np.maximum(conc_h, 2.0 * nuclei), conc_e * (1 - 0.5 * np.clip(nuclei, 0, 1))


def _optics(rng, conc_h, conc_e, tissue: np.ndarray) -> np.ndarray:
    """Beer-Lambert: stain concentrations (times a section thickness) to RGB uint8 with this
    image's stain vectors, amounts, illumination and glass; slight optical blur, sensor noise."""
    size = tissue.shape[0]
    section = 1.0 + 0.1 * _field(rng, (size, size), 30.0)  # section thickness
    soft_tissue = cv2.GaussianBlur(tissue.astype(np.float32), (0, 0), 1.0)
    stains, amounts, io, glass = _staining(rng)
    conc = np.stack([conc_h, conc_e], axis=-1) * (section * soft_tissue)[..., None]
    od = (conc * amounts) @ stains + np.float32(glass)
    rgb = io * np.exp(-od)
    rgb = cv2.GaussianBlur(rgb.astype(np.float32), (0, 0), 0.6)
    rgb += rng.normal(0, 1.5, rgb.shape).astype(np.float32)
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def _encode(spec: DemoSpec, labels: np.ndarray) -> np.ndarray:
    """The mask as written: binary 255 on the positive class, else 0; multi-class the class
    index, ``ignore_index`` off the tissue."""
    if spec.multiclass:
        values = [*range(len(spec.tissues)), spec.ignore_index]
    else:
        values = [0, 255, 0]
    return np.asarray(values, np.uint8)[labels]  # label -1 (off the tissue) takes the last


def render(spec: DemoSpec, index: int, present=None) -> tuple[np.ndarray, np.ndarray]:
    """Render image ``index``: RGB uint8 ``HxWx3`` and its mask as written (:func:`_encode`).

    ``present``: the class indices drawn, the tissue's class first (default: the plan's); for
    the binary demo also True/False, a positive/negative image.
    """
    plan = _assign(spec).iloc[index]
    if present is None:
        present = plan.present
    elif isinstance(present, (bool, np.bool_)):
        present = (0, 1) if present else (0,)
    rng = np.random.default_rng([spec.seed, index])
    tissue = _tissue(rng, spec.size, len(present) == 1 and bool(plan.background))
    labels = _layout(rng, spec, tissue, present)
    canvas = _Canvas(spec.size)
    paint = _paint_tissues if spec.multiclass else _paint_mucosa
    conc_h, conc_e = _with_nuclei(rng, canvas, *paint(rng, canvas, labels, spec))
    return _optics(rng, conc_h, conc_e, tissue), _encode(spec, labels)


def mask_tags(spec: DemoSpec, mask: np.ndarray) -> str:
    """A multi-class mask's tags: its classes, ``;``-separated in the spec's class order."""
    values = np.unique(mask)
    return TAG_SEPARATOR.join(spec.tissues[v] for v in values if v < len(spec.tissues))


def generate(spec: DemoSpec, out_dir: str | os.PathLike) -> pd.DataFrame:
    """Write ``images/``, ``masks/`` and ``labels.csv`` under ``out_dir``: MHIST's columns for
    the binary demo, :data:`TAGS_COLUMNS` (tags from each mask) for the multi-class one."""
    out_dir = Path(out_dir)
    plan = _assign(spec)
    tags = []
    for index, name in enumerate(plan.index):
        rgb, mask = render(spec, index)
        write_png(out_dir / "images" / f"{name}.png", rgb)
        write_png(out_dir / "masks" / f"{name}.png", mask)
        if spec.multiclass:
            tags.append(mask_tags(spec, mask))
    names = [f"{name}.png" for name in plan.index]
    partition = np.where(plan.test, "test", "train")
    if spec.multiclass:
        table = pd.DataFrame(dict(zip(TAGS_COLUMNS, (names, tags, partition), strict=True)))
    else:
        table = pd.DataFrame(
            {
                COLUMNS[0]: names,
                COLUMNS[1]: np.where(plan.positive, spec.positive_class, spec.negative_class),
                COLUMNS[2]: plan.votes.astype(int).to_numpy(),
                COLUMNS[3]: partition,
            }
        )
    write_csv(out_dir / "labels.csv", table)
    return table


def _tint(mask: np.ndarray, colours: Sequence[str]) -> np.ndarray:
    """RGBA overlay: each class index its colour at alpha 0.2."""
    rgba = np.zeros((256, 4))
    rgba[: len(colours)] = [(*to_rgb(c), 0.2) for c in colours]
    return rgba[mask]


def contact_sheet(
    out_dir: str | os.PathLike,
    path: str | os.PathLike,
    n: int = 16,
    colors: Mapping[str, Sequence[int]] | None = None,
) -> None:
    """Save a grid of ``n`` demo images (each label or tag combination in turn, by name) titled
    with their labels. Binary demo (``colors`` None): the positive-class mask outlined; multi-
    class demo (``colors``: its classes in mask-value order and their RGB colours,
    :func:`histo_wsss.classes.class_colors`): each class tinted and outlined in its colour, with
    a legend."""
    out_dir = Path(out_dir)
    table = pd.read_csv(out_dir / "labels.csv")
    label = COLUMNS[1] if colors is None else TAGS_COLUMNS[1]
    rank = table.groupby(label, sort=False).cumcount()  # round robin over the labels
    chosen = table.loc[rank.sort_values(kind="stable").index[:n]].sort_index()
    classes = list(colors or {})
    hexes = [to_hex(np.asarray(c) / 255) for c in (colors or {}).values()]
    outlines = [(255, POSITIVE_COLOUR)] if colors is None else list(enumerate(hexes))
    cols = int(np.ceil(np.sqrt(len(chosen))))
    rows = int(np.ceil(len(chosen) / cols))
    with figure(path, (2.2 * cols, 2.45 * rows + (0.3 if classes else 0))) as fig:
        axes = fig.subplots(rows, cols, squeeze=False).ravel()
        for ax in axes:
            ax.set_axis_off()
        for ax, (_, row) in zip(axes, chosen.iterrows(), strict=False):
            name = row[COLUMNS[0]]
            ax.imshow(read_rgb(out_dir / "images" / name), interpolation="nearest")
            with Image.open(out_dir / "masks" / name) as img:
                mask = np.asarray(img)
            if colors is not None:
                ax.imshow(_tint(mask, hexes), interpolation="nearest")
            for value, colour in outlines:
                if (mask == value).any():
                    ax.contour(
                        (mask == value).astype(float), levels=[0.5], colors=colour, linewidths=1.0
                    )
            ax.set_title(
                f"{Path(name).stem}\n{str(row[label]).replace(TAG_SEPARATOR, ', ')}", fontsize=8
            )
        if colors is not None:
            handles = [
                Patch(facecolor=c, edgecolor="black", label=k)
                for k, c in zip(classes, hexes, strict=True)
            ]
            fig.legend(
                handles=handles,
                loc="outside lower center",
                ncols=len(classes),
                fontsize=8,
                frameon=False,
            )
