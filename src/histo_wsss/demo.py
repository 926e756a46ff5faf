"""Embedded synthetic H&E demo dataset in MHIST's format.

Tissue is drawn as haematoxylin and eosin concentration maps (eosin-pink fibrous stroma with
scattered nuclei, glands with epithelial rims around white lumens, white background at some
borders) and turned into RGB through Beer-Lambert with per-image stain vectors and stain
amounts, so stain normalisation has real work to do. Positive images hold 1-3 irregular
dysplasia-like regions (crowded, enlarged, hyperchromatic nuclei; more purple cytoplasm);
the pixel ground truth is exactly that region within the tissue.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from histo_wsss.figures import figure
from histo_wsss.io import read_mask, read_rgb, write_csv, write_png

COLUMNS = (
    "Image Name",
    "Majority Vote Label",
    "Number of Annotators who Selected SSA (Out of 7)",
    "Partition",
)
# Typical H and E optical-density vectors of scanned H&E slides (Macenko et al.'s reference, as
# used by torchstain); Ruifrok & Johnston's idealised eosin (0.07, 0.99, 0.11) absorbs almost no
# red, which real slides do not show and which Macenko's OD threshold cannot see.
H_REF = np.array([0.5626, 0.7201, 0.4062])
E_REF = np.array([0.2159, 0.8012, 0.5581])
BACKGROUND_SHARE = 0.03  # share of (negative) images that are almost entirely background
_SHIFT = 4  # cv2 sub-pixel drawing: coordinates in 1/16 px
_LABEL_STREAM = 0xDE30  # spawn key separating the label stream from the per-image streams


@dataclass(frozen=True)
class DemoSpec:
    """Parameters of the demo dataset."""

    n_images: int = 200
    size: int = 224
    seed: int = 0
    positive_fraction: float = 0.5
    test_fraction: float = 0.2
    negative_class: str = "normal"
    positive_class: str = "lesion"

    def __post_init__(self) -> None:
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


def demo_names(n_images: int) -> list[str]:
    """Image names (stems): ``demo_0000`` ... zero-padded to at least 4 digits."""
    width = max(4, len(str(max(n_images - 1, 0))))
    return [f"demo_{i:0{width}d}" for i in range(n_images)]


@functools.lru_cache(maxsize=8)
def _assign(spec: DemoSpec) -> pd.DataFrame:
    """Seeded per-image label, annotator count, near-background flag and partition."""
    n = spec.n_images
    rng = np.random.default_rng(np.random.SeedSequence([spec.seed, n], spawn_key=(_LABEL_STREAM,)))
    positive = np.zeros(n, bool)
    positive[rng.choice(n, round(n * spec.positive_fraction), replace=False)] = True
    votes = np.where(positive, rng.integers(4, 8, n), rng.integers(0, 4, n))
    negatives = np.flatnonzero(~positive)
    n_background = min(len(negatives), max(int(n >= 20), round(n * BACKGROUND_SHARE)))
    background = np.zeros(n, bool)
    background[rng.choice(negatives, n_background, replace=False)] = True
    test = np.zeros(n, bool)
    for members in (negatives, np.flatnonzero(positive)):
        test[rng.choice(members, round(len(members) * spec.test_fraction), replace=False)] = True
    return pd.DataFrame(
        {"positive": positive, "votes": votes, "background": background, "test": test},
        index=demo_names(n),
    )


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


def _lesion_region(rng: np.random.Generator, tissue: np.ndarray) -> np.ndarray:
    """1-3 irregular blobs covering 10-60% of the tissue."""
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
    fraction = rng.uniform(0.1, 0.6)
    region = score >= np.quantile(score[tissue], 1.0 - fraction)
    opened = cv2.morphologyEx(region.astype(np.uint8), cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
    return (opened.astype(bool) if opened.any() else region) & tissue


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


def render(spec: DemoSpec, index: int, positive: bool) -> tuple[np.ndarray, np.ndarray]:
    """Render image ``index``: RGB uint8 ``HxWx3`` and its boolean positive-class mask."""
    size = spec.size
    background = (not positive) and bool(_assign(spec)["background"].iloc[index])
    rng = np.random.default_rng([spec.seed, index])
    tissue = _tissue(rng, size, background)
    region = _lesion_region(rng, tissue) if positive else np.zeros_like(tissue)
    canvas = _Canvas(size)

    fibres, fibre_angle = _fibres(rng, size)
    loose = np.clip(0.5 + 0.5 * _field(rng, (size, size), 6.0), 0, 1)  # pale, loose patches
    _glands(rng, canvas, tissue, region)
    _stroma_nuclei(rng, canvas, tissue, region, fibre_angle)

    soft_region = cv2.GaussianBlur(region.astype(np.float32), (0, 0), 1.5)
    epi, lumen = canvas.epithelium, canvas.lumen
    stroma = np.clip(1.0 - epi - lumen, 0, 1)
    goblets = canvas.goblets.astype(np.float32) / 255 * epi
    chromatin = 1.0 + 0.25 * _field(rng, (size, size), 0.8) * (1 + 0.6 * soft_region)
    nuclei = canvas.nuclei.astype(np.float32) / 255 * np.clip(chromatin, 0.5, 1.5)

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
    conc_h = np.maximum(conc_h, 2.0 * nuclei)
    conc_e = conc_e * (1 - 0.5 * np.clip(nuclei, 0, 1))

    section = 1.0 + 0.1 * _field(rng, (size, size), 30.0)  # section thickness
    soft_tissue = cv2.GaussianBlur(tissue.astype(np.float32), (0, 0), 1.0)
    stains, amounts, io, glass = _staining(rng)
    conc = np.stack([conc_h, conc_e], axis=-1) * (section * soft_tissue)[..., None]
    od = (conc * amounts) @ stains + np.float32(glass)
    rgb = io * np.exp(-od)
    rgb = cv2.GaussianBlur(rgb.astype(np.float32), (0, 0), 0.6)
    rgb += rng.normal(0, 1.5, rgb.shape).astype(np.float32)
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8), region


def generate(spec: DemoSpec, out_dir: str | os.PathLike) -> pd.DataFrame:
    """Write ``images/``, ``masks/`` and ``labels.csv`` (MHIST columns) under ``out_dir``."""
    out_dir = Path(out_dir)
    plan = _assign(spec)
    for index, (name, row) in enumerate(plan.iterrows()):
        rgb, mask = render(spec, index, bool(row.positive))
        write_png(out_dir / "images" / f"{name}.png", rgb)
        write_png(out_dir / "masks" / f"{name}.png", mask)
    table = pd.DataFrame(
        {
            COLUMNS[0]: [f"{name}.png" for name in plan.index],
            COLUMNS[1]: np.where(plan.positive, spec.positive_class, spec.negative_class),
            COLUMNS[2]: plan.votes.astype(int).to_numpy(),
            COLUMNS[3]: np.where(plan.test, "test", "train"),
        }
    )
    write_csv(out_dir / "labels.csv", table)
    return table


def contact_sheet(out_dir: str | os.PathLike, path: str | os.PathLike, n: int = 16) -> None:
    """Save a grid of ``n`` demo images (both classes, by name) with mask outlines and labels."""
    out_dir = Path(out_dir)
    table = pd.read_csv(out_dir / "labels.csv")
    first = table.groupby(COLUMNS[1], sort=False).head((n + 1) // 2)  # both classes shown
    chosen = pd.concat([first, table.drop(first.index)]).head(n).sort_index()
    cols = int(np.ceil(np.sqrt(len(chosen))))
    rows = int(np.ceil(len(chosen) / cols))
    with figure(path, (2.2 * cols, 2.45 * rows)) as fig:
        axes = fig.subplots(rows, cols, squeeze=False).ravel()
        for ax in axes:
            ax.set_axis_off()
        for ax, (_, row) in zip(axes, chosen.iterrows(), strict=False):
            name = row[COLUMNS[0]]
            ax.imshow(read_rgb(out_dir / "images" / name), interpolation="nearest")
            mask = read_mask(out_dir / "masks" / name)
            if mask.any():
                ax.contour(mask.astype(float), levels=[0.5], colors="#00ff66", linewidths=1.0)
            ax.set_title(f"{Path(name).stem}\n{row[COLUMNS[1]]}", fontsize=8)
