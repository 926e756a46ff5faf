"""Macenko stain normalization (torchstain, numpy backend) and tissue masking.

Background-only or otherwise failing images are never fatal: they keep their colours and are
flagged in the QC table with the reason. Images of any size are normalised at their own size
times ``scale``, the workflow's working resolution (1 keeps them as they are; 0.5 halves each
side, so that a training crop spans twice the tissue in each direction): every later stage
works at that size.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torchstain
from skimage import morphology

from histo_wsss.classes import LabelSpace
from histo_wsss.io import read_rgb, write_json, write_png
from histo_wsss.logs import progress

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StainParams:
    """Macenko and tissue-mask parameters (keys of the ``stain`` config section)."""

    io: float = 240.0
    alpha: float = 1.0
    beta: float = 0.15
    luminance_threshold: float = 0.82
    saturation_threshold: float = 0.07
    min_tissue_px: int = 64
    tissue_hole_px: int = 64
    min_tissue_fraction: float = 0.05
    min_stain_angle: float = 5.0
    scale: float = 1.0

    @classmethod
    def from_config(cls, stain: dict) -> StainParams:
        """Take the fields of this class from the ``stain`` config section."""
        return cls(**{k: stain[k] for k in cls.__dataclass_fields__ if k in stain})


@dataclass(frozen=True)
class StainTarget:
    """Reference stain matrix (3x2, columns H and E) and 99th-percentile concentrations."""

    stain_matrix: np.ndarray
    max_concentrations: np.ndarray
    source: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {
            "stain_matrix": np.round(self.stain_matrix, 8).tolist(),
            "max_concentrations": np.round(self.max_concentrations, 8).tolist(),
            "source": list(self.source),
        }

    @classmethod
    def from_json(cls, data: dict) -> StainTarget:
        return cls(
            np.asarray(data["stain_matrix"], dtype=float),
            np.asarray(data["max_concentrations"], dtype=float),
            list(data.get("source", [])),
        )


def value_saturation(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """HSV value and saturation of a uint8 RGB image, bit for bit as ``skimage.color.rgb2hsv``
    computes them, without the hue that the tissue mask does not use (4x faster)."""
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[-1] != 3:
        raise ValueError(f"expected a uint8 HxWx3 RGB image, got {rgb.dtype} {rgb.shape}")
    value = rgb.max(axis=-1) * (1 / 255)
    delta = value - rgb.min(axis=-1) * (1 / 255)
    saturation = np.divide(delta, value, out=np.zeros_like(value), where=delta > 0)
    return value, saturation


def tissue_mask(rgb: np.ndarray, params: StainParams = StainParams()) -> np.ndarray:
    """Boolean mask of tissue: pixels that are not bright and unsaturated (white background).

    Specks smaller than ``min_tissue_px`` are removed; holes smaller than ``tissue_hole_px`` are
    filled: a white area that small, enclosed by tissue, is part of it (a gland's lumen, a
    vessel), not the slide's background.
    """
    value, saturation = value_saturation(rgb)
    background = (value > params.luminance_threshold) & (saturation < params.saturation_threshold)
    tissue = morphology.remove_small_objects(~background, max_size=params.min_tissue_px - 1)
    return fill_holes(tissue, params.tissue_hole_px)


def fill_holes(tissue: np.ndarray, hole_px: int) -> np.ndarray:
    """``tissue`` with the holes it encloses that are smaller than ``hole_px`` pixels filled
    (``stain.tissue_hole_px``)."""
    return morphology.remove_small_holes(tissue, max_size=hole_px - 1)


MACENKO_ERRORS = (ValueError, ArithmeticError, IndexError, np.linalg.LinAlgError, RuntimeWarning)


@contextmanager
def _strict_numpy():
    """Turn numpy's silent NaN/empty-slice results into exceptions (caught as fallbacks)."""
    with np.errstate(divide="raise", invalid="raise"), warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        yield


def _normalizer():
    return torchstain.normalizers.MacenkoNormalizer(backend="numpy")


def fit_stains(rgb: np.ndarray, params: StainParams = StainParams()) -> StainTarget:
    """Estimate an image's Macenko stain matrix and maximal concentrations."""
    norm = _normalizer()
    with _strict_numpy():
        norm.fit(rgb, Io=params.io, alpha=params.alpha, beta=params.beta)
    return StainTarget(np.asarray(norm.HERef, float), np.asarray(norm.maxCRef, float))


def choose_target(
    paths: Sequence[str | Path], params: StainParams = StainParams(), max_images: int = 50
) -> StainTarget:
    """Reference stains from training images: the median over up to ``max_images`` of them.

    Images are taken in sorted order; those with too little tissue or a failing fit are skipped.
    The median stain vectors are renormalised to unit length.
    """
    matrices, concentrations, used = [], [], []
    for path in sorted(map(str, paths)):
        if len(used) == max_images:
            break
        rgb = read_rgb(path, params.scale)
        if tissue_mask(rgb, params).mean() < params.min_tissue_fraction:
            continue
        try:
            fit = fit_stains(rgb, params)
            _check_fit(fit, params)
        except MACENKO_ERRORS as err:
            log.warning("stain target: skipping %s (%s)", path, err)
            continue
        matrices.append(fit.stain_matrix)
        concentrations.append(fit.max_concentrations)
        used.append(Path(path).name)
    if not used:
        raise ValueError("no training image has enough tissue to estimate a stain target")
    matrix = np.median(np.stack(matrices), axis=0)
    matrix /= np.linalg.norm(matrix, axis=0, keepdims=True)
    return StainTarget(matrix, np.median(np.stack(concentrations), axis=0), used)


def stain_angle(matrix: np.ndarray) -> float:
    """Angle in degrees between the H and E vectors of a 3x2 stain matrix."""
    h, e = matrix[:, 0], matrix[:, 1]
    cos = float(h @ e / (np.linalg.norm(h) * np.linalg.norm(e)))
    return float(np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))))


def _check_fit(fit: StainTarget, params: StainParams) -> None:
    """Reject degenerate fits (e.g. of a one-colour image) that torchstain returns silently."""
    angle = stain_angle(fit.stain_matrix)
    if angle < params.min_stain_angle:
        raise ValueError(
            f"degenerate fit: H and E vectors {angle:.1f} deg apart (< {params.min_stain_angle})"
        )
    if not np.all(fit.max_concentrations > 0):
        raise ValueError(f"degenerate fit: max concentrations {fit.max_concentrations}")


def target_from_image(path: str | Path, params: StainParams = StainParams()) -> StainTarget:
    """Reference stains from one named image (the ``stain.target`` config key)."""
    try:
        fit = fit_stains(read_rgb(path, params.scale), params)
        _check_fit(fit, params)
    except MACENKO_ERRORS as err:
        raise ValueError(f"{path}: cannot fit Macenko stains to the target image ({err})") from err
    return StainTarget(fit.stain_matrix, fit.max_concentrations, [Path(path).name])


def normalize(
    rgb: np.ndarray, target: StainTarget, params: StainParams = StainParams()
) -> tuple[np.ndarray, np.ndarray, dict]:
    """Normalize one image to ``target``.

    Returns the normalized image (the input unchanged on fallback), its tissue mask and a QC
    record with ``tissue_fraction``, ``normalized`` and ``reason`` (empty when normalized).
    """
    tissue = tissue_mask(rgb, params)
    fraction = float(tissue.mean())
    record = {"tissue_fraction": round(fraction, 6), "normalized": False, "reason": ""}
    if fraction < params.min_tissue_fraction:
        record["reason"] = f"tissue fraction {fraction:.3f} < {params.min_tissue_fraction}"
        return rgb, tissue, record
    norm = _normalizer()
    norm.HERef, norm.maxCRef = target.stain_matrix, target.max_concentrations
    try:
        _check_fit(fit_stains(rgb, params), params)
        with _strict_numpy():
            out, _, _ = norm.normalize(
                I=rgb, Io=params.io, alpha=params.alpha, beta=params.beta, stains=False
            )
    except MACENKO_ERRORS as err:
        record["reason"] = f"macenko failed: {type(err).__name__}: {err}"
        return rgb, tissue, record
    out = np.asarray(out)
    if out.shape != rgb.shape:
        record["reason"] = f"macenko returned shape {out.shape}, expected {rgb.shape}"
        return rgb, tissue, record
    record["normalized"] = True
    return out.astype(np.uint8), tissue, record


def normalize_images(
    names: Sequence[str],
    images: Sequence[str | Path],
    out_dir: str | Path,
    target: StainTarget,
    params: StainParams = StainParams(),
) -> pd.DataFrame:
    """Normalize a shard of images, resized by ``params.scale``, into ``out_dir/images`` and
    ``out_dir/tissue`` (PNG).

    Tissue masks are stored as 0/255. Returns the shard's QC table, one row per image.
    """
    out_dir = Path(out_dir)
    rows = []
    for name, path in progress(list(zip(names, images, strict=True)), "normalize", "img"):
        out, tissue, record = normalize(read_rgb(path, params.scale), target, params)
        write_png(out_dir / "images" / f"{name}.png", out)
        write_png(out_dir / "tissue" / f"{name}.png", tissue)
        rows.append({"name": name, **record})
    columns = ["name", "tissue_fraction", "normalized", "reason"]
    return pd.DataFrame(rows, columns=columns)


def scale_masks(
    names: Sequence[str],
    masks: Sequence[str | Path],
    out_dir: str | Path,
    scale: float,
    space: LabelSpace,
) -> None:
    """Write real masks resized by ``scale`` (as :func:`normalize_images` resizes their images)
    to ``out_dir/masks`` as label maps (:meth:`histo_wsss.classes.LabelSpace.write_labels`:
    binary masks as 0/255 PNG): every stage that measures against the real masks reads them at
    the working resolution."""
    for name, path in zip(names, masks, strict=True):
        space.write_labels(Path(out_dir) / "masks" / f"{name}.png", space.read_truth(path, scale))


def save_target(path: str | Path, target: StainTarget) -> None:
    write_json(path, target.to_json())
