"""CAM -> binary pseudo-mask refinement (paper section 2.3).

Steps, each a function here and all chained by :func:`refine`:

1. :func:`quantile_threshold` - keep pixels whose CAM is strictly above its ``q``-quantile,
   the quantile taken over tissue pixels only when a tissue mask is given.
2. :func:`open_close` - binary opening with a square ``open_px`` x ``open_px`` footprint, then
   closing with a square ``close_px`` x ``close_px`` footprint (scikit-image).
3. :func:`remove_small` - drop 8-connected components of fewer than ``min_object_px`` pixels.
4. :func:`dense_crf` - fully connected CRF (pydensecrf) on the RGB image.

Masks are boolean ``HxW`` arrays; the CAM is a float ``HxW`` array in [0, 1] the size of the
image; the RGB image is ``HxWx3`` uint8 (stain-normalised upstream). Everything is deterministic.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import pydensecrf.densecrf as dcrf
from pydensecrf.utils import unary_from_softmax
from skimage import morphology

STEPS = ("threshold", "morphology", "small_objects", "crf")
"""Keys of :func:`refine`'s result, in the order the steps run."""

_PROB_EPS = 1e-3  # CRF foreground probabilities are clipped to [eps, 1 - eps]


@dataclass(frozen=True)
class RefineParams:
    """Parameters of the refinement; defaults are the paper's (section 2.3)."""

    quantile: float = 0.5
    open_px: int = 3
    close_px: int = 5
    min_object_px: int = 64
    crf_iterations: int = 5
    crf_gaussian_sxy: float = 3
    crf_gaussian_compat: float = 3
    crf_bilateral_sxy: float = 80
    crf_bilateral_srgb: float = 13
    crf_bilateral_compat: float = 10
    crf_fg_confidence: float = 0.75
    final_step: str = "crf"
    """The step whose mask is the pseudo-mask (the paper: ``crf``; every step is still run)."""

    def __post_init__(self) -> None:
        if self.final_step not in STEPS:
            raise ValueError(f"final_step must be one of {STEPS}, got {self.final_step!r}")
        if not 0.0 < self.quantile < 1.0:
            raise ValueError(f"quantile must be in (0, 1), got {self.quantile}")
        for name in ("open_px", "close_px", "crf_iterations"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if (
            isinstance(self.min_object_px, bool)
            or not isinstance(self.min_object_px, int | np.integer)
            or self.min_object_px < 0
        ):
            raise ValueError(f"min_object_px must be an integer >= 0, got {self.min_object_px!r}")
        for name in (
            "crf_gaussian_sxy",
            "crf_gaussian_compat",
            "crf_bilateral_sxy",
            "crf_bilateral_srgb",
            "crf_bilateral_compat",
        ):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}")
        if not 0.5 < self.crf_fg_confidence < 1.0:
            raise ValueError(f"crf_fg_confidence must be in (0.5, 1), got {self.crf_fg_confidence}")

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | None) -> RefineParams:
        """Build from a plain mapping whose keys are field names; missing keys keep defaults."""
        config = dict(config or {})
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(config) - names)
        if unknown:
            raise ValueError(f"unknown refine parameter(s): {', '.join(unknown)}")
        return cls(**config)


def _check_mask(mask: np.ndarray, shape: tuple[int, ...], name: str) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.dtype != bool:
        raise TypeError(f"{name} must be a boolean array, got dtype {mask.dtype}")
    if mask.shape != shape:
        raise ValueError(f"{name} has shape {mask.shape}, expected {shape}")
    return mask


def _check_cam(cam: np.ndarray) -> np.ndarray:
    cam = np.asarray(cam)
    if cam.ndim != 2 or not np.issubdtype(cam.dtype, np.floating):
        raise ValueError(f"cam must be a 2-D float array, got {cam.dtype} of shape {cam.shape}")
    if not np.all(np.isfinite(cam)):
        raise ValueError("cam contains NaN or infinite values")
    return cam


def quantile_threshold(
    cam: np.ndarray, q: float = 0.5, tissue: np.ndarray | None = None
) -> np.ndarray:
    """Foreground where ``cam > quantile(cam, q)``; the quantile is over tissue pixels if given.

    The comparison is strict so that ties at the threshold (typically a large block of zeros in a
    ReLU-ed CAM) are background. Pixels outside ``tissue`` are never foreground; with no tissue
    pixels the mask is empty. The quantile uses numpy's default (linear) interpolation.
    """
    cam = _check_cam(cam)
    if not 0.0 < q < 1.0:
        raise ValueError(f"q must be in (0, 1), got {q}")
    if tissue is None:
        values = cam.ravel()
    else:
        tissue = _check_mask(tissue, cam.shape, "tissue")
        values = cam[tissue]
    if values.size == 0:
        return np.zeros(cam.shape, dtype=bool)
    mask = cam > np.quantile(values, q)
    if tissue is not None:
        mask &= tissue
    return mask


def open_close(mask: np.ndarray, open_px: int = 3, close_px: int = 5) -> np.ndarray:
    """Opening with a square ``open_px`` footprint, then closing with a square ``close_px`` one.

    ``skimage.morphology.opening`` / ``closing`` with ``np.ones((k, k))`` footprints (a "3 px
    kernel" is a 3x3 square); a size of 1 is the identity. Borders: the opening uses
    ``mode="ignore"`` (pixels beyond the border never erode an object touching it); the closing
    runs on the mask zero-padded by ``close_px``, so it never fills a gap between an object and
    the image border, and objects touching the border are kept as they are.
    """
    mask = _check_mask(mask, np.shape(mask), "mask")
    if open_px < 1 or close_px < 1:
        raise ValueError("open_px and close_px must be >= 1")
    out = morphology.opening(mask, np.ones((open_px, open_px), dtype=bool), mode="ignore")
    padded = np.pad(out, close_px)
    padded = morphology.closing(padded, np.ones((close_px, close_px), dtype=bool), mode="ignore")
    out = padded[(slice(close_px, -close_px),) * out.ndim]
    return np.ascontiguousarray(out, dtype=bool)


def remove_small(mask: np.ndarray, min_px: int = 64, *, connectivity: int = 2) -> np.ndarray:
    """Remove connected components of strictly fewer than ``min_px`` pixels (``min_px`` kept).

    Components are 8-connected by default (``connectivity=2``: diagonal neighbours join);
    pass ``connectivity=1`` for 4-connectivity. Uses ``skimage.morphology.remove_small_objects``
    (scikit-image >= 0.26, whose ``max_size`` is inclusive: ``max_size=min_px - 1``).
    """
    mask = _check_mask(mask, np.shape(mask), "mask")
    if min_px <= 1:
        return mask.copy()
    return morphology.remove_small_objects(mask, max_size=min_px - 1, connectivity=connectivity)


def crf_foreground_probability(cam: np.ndarray, mask: np.ndarray, confidence: float) -> np.ndarray:
    """Foreground probability for the CRF unary: the mean of a mask prior and the CAM.

    ``p = (prior + cam) / 2`` with ``prior = confidence`` inside ``mask`` and
    ``1 - confidence`` outside, clipped to [1e-3, 1 - 1e-3]. With ``confidence = 0.75``, a pixel
    inside the mask has ``p`` in [0.375, 0.875], outside in [0.125, 0.625].
    """
    prior = np.where(mask, confidence, 1.0 - confidence)
    p = 0.5 * (prior + np.clip(cam, 0.0, 1.0))
    return np.clip(p, _PROB_EPS, 1.0 - _PROB_EPS).astype(np.float32)


def dense_crf(
    rgb: np.ndarray,
    cam: np.ndarray,
    mask: np.ndarray,
    params: RefineParams | None = None,
    tissue: np.ndarray | None = None,
) -> np.ndarray:
    """Refine ``mask`` with a two-label DenseCRF on ``rgb``; returns a boolean mask.

    Unary: ``unary_from_softmax([1 - p, p])`` with ``p`` from :func:`crf_foreground_probability`
    (``params.crf_fg_confidence``). Pairwise: Gaussian (``crf_gaussian_sxy``,
    ``crf_gaussian_compat``) and bilateral (``crf_bilateral_sxy``, ``crf_bilateral_srgb`` on
    0-255 RGB, ``crf_bilateral_compat``); ``crf_iterations`` mean-field steps; label = argmax.
    The result is restricted to ``tissue`` if given. An empty ``mask`` gives an empty result.
    """
    params = params or RefineParams()
    cam = _check_cam(cam)
    h, w = cam.shape
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8 or rgb.shape != (h, w, 3):
        raise ValueError(f"rgb must be uint8 of shape {(h, w, 3)}, got {rgb.dtype} {rgb.shape}")
    mask = _check_mask(mask, cam.shape, "mask")
    if tissue is not None:
        tissue = _check_mask(tissue, cam.shape, "tissue")
    if not mask.any():
        return np.zeros((h, w), dtype=bool)

    p = crf_foreground_probability(cam, mask, params.crf_fg_confidence)
    d = dcrf.DenseCRF2D(w, h, 2)
    d.setUnaryEnergy(np.ascontiguousarray(unary_from_softmax(np.stack([1.0 - p, p]))))
    d.addPairwiseGaussian(sxy=params.crf_gaussian_sxy, compat=params.crf_gaussian_compat)
    d.addPairwiseBilateral(
        sxy=params.crf_bilateral_sxy,
        srgb=params.crf_bilateral_srgb,
        rgbim=np.ascontiguousarray(rgb),
        compat=params.crf_bilateral_compat,
    )
    q = np.asarray(d.inference(params.crf_iterations), dtype=np.float32).reshape(2, h, w)
    out = q[1] > q[0]  # argmax; ties go to background
    if tissue is not None:
        out &= tissue
    return out


def empty_steps(shape: tuple[int, int]) -> dict[str, np.ndarray]:
    """All-background masks for every step (negative-class images)."""
    return {step: np.zeros(shape, dtype=bool) for step in STEPS}


def refine(
    rgb: np.ndarray,
    cam: np.ndarray,
    params: RefineParams | None = None,
    tissue: np.ndarray | None = None,
    positive: bool = True,
) -> dict[str, np.ndarray]:
    """Run every step; return ``{"threshold", "morphology", "small_objects", "crf"}`` masks.

    The pseudo-mask is ``result[params.final_step]``. For ``positive=False`` every mask is
    empty (the caller decides which images are of the negative class). Masks stay inside
    ``tissue``.
    """
    params = params or RefineParams()
    cam = _check_cam(cam)
    if not positive:
        return empty_steps(cam.shape)
    threshold = quantile_threshold(cam, params.quantile, tissue)
    morph = open_close(threshold, params.open_px, params.close_px)
    if tissue is not None:
        morph &= tissue  # closing may bridge into non-tissue gaps
    small = remove_small(morph, params.min_object_px)
    crf = dense_crf(rgb, cam, small, params, tissue)
    return {"threshold": threshold, "morphology": morph, "small_objects": small, "crf": crf}
