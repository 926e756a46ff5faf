"""CAMs -> pseudo-mask label maps (paper section 2.3), for K classes.

A pseudo-mask is a label map (:mod:`histo_wsss.classes`: 0 background, ``c`` in 1..K class
``c - 1``) that holds only the classes *present* in the image (its tags). The CAMs are a float
``(K, H, W)`` array in [0, 1], each class's map min-max normalised on its own
(:func:`histo_wsss.cam.compute_cams`); the RGB image is ``HxWx3`` uint8 (stain-normalised
upstream); the tissue mask is boolean ``HxW``. Steps, each a function here and all chained by
:func:`refine`:

1. :func:`label_cams` - the first label map, by ``background``:

   * ``threshold`` (the paper's recipe): per present class, keep the pixels whose CAM is
     strictly above its ``q``-quantile over tissue (:func:`quantile_threshold`); a pixel kept by
     several classes takes the one whose CAM is highest there; a pixel kept by none is
     background.
   * ``tissue`` (datasets whose every tissue pixel belongs to a class: WSSS4LUAD, the
     multi-class demo): every tissue pixel takes the present class whose CAM is highest there;
     non-tissue is background.

2. :func:`open_close` per class - binary opening with a square ``open_px`` x ``open_px``
   footprint, then closing with a square ``close_px`` x ``close_px`` footprint (scikit-image);
   where two classes' closed masks overlap, the higher CAM wins.
3. :func:`remove_small` per class - drop 8-connected components of fewer than
   ``min_object_px`` pixels.
4. :func:`dense_crf` - fully connected CRF (pydensecrf) on the RGB image over 1 + (number of
   present classes) labels.

Every step's classes stay inside the tissue. With ``background: tissue`` a tissue pixel that a step
leaves without a class (opened away, a small object removed, background after the CRF) takes
the class of the nearest pixel that has one (:func:`fill_tissue`). For K = 1 with ``threshold``
every step is the binary recipe (one class: no overlaps; the CRF's two labels).

Unlabelled band (``background_quantile``, with ``background: threshold``): the paper's single
threshold calls every pixel below it background, however weak the CAM's evidence. With a second,
lower quantile only the tissue pixels whose every present class's CAM is at or below it are
background (:func:`sure_background`); a pixel that a step leaves without a class and that is
not sure background -- the CAMs' middle band, and non-tissue such as gland lumens -- is
unlabelled (:data:`histo_wsss.classes.IGNORE`), left out of the segmentation's loss and of
every score: confident foreground and background as in AffinityNet / IRN (Ahn et al. 2018,
2019). Each step's map is banded so.
Known background (``known_background``: pixels a real mask says hold no class, e.g. a patch
tagged with none) is background in every step and left out of the tissue the steps use.
Everything is deterministic.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import pydensecrf.densecrf as dcrf
from pydensecrf.utils import unary_from_softmax
from scipy import ndimage
from skimage import morphology

from histo_wsss.classes import IGNORE

STEPS = ("threshold", "morphology", "small_objects", "crf")
"""Keys of :func:`refine`'s result, in the order the steps run."""
BACKGROUNDS = ("threshold", "tissue")
"""What is background: below every present class's CAM threshold, or non-tissue only."""

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
    background: str = "threshold"
    """One of :data:`BACKGROUNDS` (module docstring); ``threshold`` is the paper's."""
    background_quantile: float | None = None
    """Below ``quantile``: the unlabelled band's lower end (module docstring); None: the paper's
    single threshold, no band."""

    def __post_init__(self) -> None:
        if self.background not in BACKGROUNDS:
            raise ValueError(f"background must be one of {BACKGROUNDS}, got {self.background!r}")
        if self.final_step not in STEPS:
            raise ValueError(f"final_step must be one of {STEPS}, got {self.final_step!r}")
        if not 0.0 < self.quantile < 1.0:
            raise ValueError(f"quantile must be in (0, 1), got {self.quantile}")
        if self.background_quantile is not None:
            if self.background != "threshold":
                raise ValueError(
                    "background_quantile needs background 'threshold' (with 'tissue' every "
                    "tissue pixel has a class)"
                )
            if not 0.0 < self.background_quantile < self.quantile:
                raise ValueError(
                    f"background_quantile must be in (0, quantile = {self.quantile}), got "
                    f"{self.background_quantile}"
                )
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


def _check_cams(cams: np.ndarray) -> np.ndarray:
    cams = np.asarray(cams)
    if cams.ndim != 3 or not np.issubdtype(cams.dtype, np.floating):
        raise ValueError(
            f"cams must be a (K, H, W) float array, got {cams.dtype} of shape {cams.shape}"
        )
    if not np.all(np.isfinite(cams)):
        raise ValueError("cams contain NaN or infinite values")
    return cams


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


def resolve(cams: np.ndarray, claims: np.ndarray, present: Sequence[int]) -> np.ndarray:
    """uint8 label map from per-class ``claims`` (boolean ``(P, H, W)``, one per ``present``
    class index): a pixel claimed by several classes takes the one whose CAM is highest there
    (ties: the first), a pixel claimed by none is background 0."""
    scores = np.where(claims, cams[list(present)], -np.inf)
    winner = np.argmax(scores, axis=0)
    lut = np.array([c + 1 for c in present], dtype=np.uint8)
    return np.where(claims.any(axis=0), lut[winner], 0).astype(np.uint8)


def class_masks(labels: np.ndarray, present: Sequence[int]) -> np.ndarray:
    """Boolean ``(P, H, W)``: the pixels of each ``present`` class (index ``c``: label
    ``c + 1``)."""
    return np.stack([labels == c + 1 for c in present])


def fill_tissue(labels: np.ndarray, tissue: np.ndarray) -> np.ndarray:
    """``labels`` where every background pixel inside ``tissue`` takes the label of the nearest
    (Euclidean) pixel that has a class; unchanged when no pixel has one."""
    holes = tissue & (labels == 0)
    if not holes.any() or not (labels > 0).any():
        return labels
    _, (rows, cols) = ndimage.distance_transform_edt(labels == 0, return_indices=True)
    out = labels.copy()
    out[holes] = labels[rows[holes], cols[holes]]
    return out


def sure_background(
    cams: np.ndarray, present: Sequence[int], q: float, tissue: np.ndarray
) -> np.ndarray:
    """Tissue pixels at or below the ``q``-quantile (over tissue) of every ``present`` class's
    CAM: the background of the unlabelled band (module docstring)."""
    above = np.stack([quantile_threshold(cams[c], q, tissue) for c in present])
    return tissue & ~above.any(axis=0)


def label_cams(
    cams: np.ndarray,
    present: Sequence[int],
    q: float = 0.5,
    tissue: np.ndarray | None = None,
    background: str = "threshold",
) -> np.ndarray:
    """The first label map (step 1 of the module docstring) of the ``present`` classes."""
    cams = _check_cams(cams)
    shape = cams.shape[1:]
    tissue = np.ones(shape, dtype=bool) if tissue is None else _check_mask(tissue, shape, "tissue")
    if background == "tissue":
        claims = np.broadcast_to(tissue, (len(present), *shape))
    else:
        claims = np.stack([quantile_threshold(cams[c], q, tissue) for c in present])
    return resolve(cams, claims, present)


def crf_unary(
    cams: np.ndarray,
    labels: np.ndarray,
    present: Sequence[int],
    confidence: float,
    tissue: np.ndarray | None = None,
) -> np.ndarray:
    """Probabilities ``(1 + P, H, W)`` of background and each ``present`` class for the CRF.

    A class's is :func:`crf_foreground_probability` of its CAM and its pixels in ``labels``.
    Background's is ``1 - `` the highest of them or, given ``tissue`` (``background:
    tissue``), 1 - 1e-3 outside the tissue and 1e-3 inside. For one class without tissue this is
    the binary ``[1 - p, p]``. (They need not sum to 1: a per-pixel factor adds the same constant
    to every label's energy and changes no mean-field step.)
    """
    probs = np.stack(
        [crf_foreground_probability(cams[c], labels == c + 1, confidence) for c in present]
    )
    if tissue is None:
        background = 1.0 - probs.max(axis=0)
    else:
        background = np.where(tissue, _PROB_EPS, 1.0 - _PROB_EPS).astype(np.float32)
    return np.concatenate([background[None], probs])


def dense_crf(
    rgb: np.ndarray,
    cams: np.ndarray,
    labels: np.ndarray,
    present: Sequence[int],
    params: RefineParams | None = None,
    tissue: np.ndarray | None = None,
) -> np.ndarray:
    """Refine the label map ``labels`` with a DenseCRF on ``rgb`` over background and the
    ``present`` classes; returns a uint8 label map.

    Unary: ``unary_from_softmax`` of :func:`crf_unary` (``params.crf_fg_confidence``; the
    tissue sets the background's with ``params.background`` ``tissue``). Pairwise: Gaussian
    (``crf_gaussian_sxy``, ``crf_gaussian_compat``) and bilateral (``crf_bilateral_sxy``,
    ``crf_bilateral_srgb`` on 0-255 RGB, ``crf_bilateral_compat``); ``crf_iterations``
    mean-field steps; label = argmax (ties to background, then to the lower class). The result
    is restricted to ``tissue`` if given. A map without any class gives an empty result.
    """
    params = params or RefineParams()
    cams = _check_cams(cams)
    _, h, w = cams.shape
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8 or rgb.shape != (h, w, 3):
        raise ValueError(f"rgb must be uint8 of shape {(h, w, 3)}, got {rgb.dtype} {rgb.shape}")
    labels = np.asarray(labels)
    if labels.shape != (h, w):
        raise ValueError(f"labels has shape {labels.shape}, expected {(h, w)}")
    if tissue is not None:
        tissue = _check_mask(tissue, (h, w), "tissue")
    if not ((labels > 0) & (labels != IGNORE)).any():
        return np.zeros((h, w), dtype=np.uint8)

    in_tissue = None
    if params.background == "tissue":
        in_tissue = np.ones((h, w), dtype=bool) if tissue is None else tissue
    p = crf_unary(cams, labels, present, params.crf_fg_confidence, in_tissue)
    d = dcrf.DenseCRF2D(w, h, len(p))
    d.setUnaryEnergy(np.ascontiguousarray(unary_from_softmax(p)))
    d.addPairwiseGaussian(sxy=params.crf_gaussian_sxy, compat=params.crf_gaussian_compat)
    d.addPairwiseBilateral(
        sxy=params.crf_bilateral_sxy,
        srgb=params.crf_bilateral_srgb,
        rgbim=np.ascontiguousarray(rgb),
        compat=params.crf_bilateral_compat,
    )
    q = np.asarray(d.inference(params.crf_iterations), dtype=np.float32).reshape(len(p), h, w)
    lut = np.array([0, *(c + 1 for c in present)], dtype=np.uint8)
    out = lut[np.argmax(q, axis=0)]  # ties go to the first: background
    if tissue is not None:
        out[~tissue] = 0
    return out


def empty_steps(shape: tuple[int, int]) -> dict[str, np.ndarray]:
    """All-background label maps for every step (images without tags)."""
    return {step: np.zeros(shape, dtype=np.uint8) for step in STEPS}


def refine(
    rgb: np.ndarray,
    cams: np.ndarray,
    present: Sequence[int],
    params: RefineParams | None = None,
    tissue: np.ndarray | None = None,
    known_background: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Run every step; return ``{"threshold", "morphology", "small_objects", "crf"}`` uint8
    label maps holding only 0 and the ``present`` classes' labels (class indices into ``cams``;
    empty: every map is background), and with ``params.background_quantile``
    :data:`~histo_wsss.classes.IGNORE` where unlabelled.

    The pseudo-mask is ``result[params.final_step]``. Classes stay inside ``tissue``.
    ``known_background`` (e.g. the patches whose real mask holds no class) is background in
    every step, sure background with an unlabelled band, and left out of the tissue the steps
    use, the threshold's quantile included.
    """
    params = params or RefineParams()
    cams = _check_cams(cams)
    shape = cams.shape[1:]
    present = sorted(set(int(c) for c in present))
    if not present:
        return empty_steps(shape)
    if present[0] < 0 or present[-1] >= len(cams):
        raise ValueError(f"present classes {present} outside the {len(cams)} CAM channels")
    inside = np.ones(shape, dtype=bool) if tissue is None else _check_mask(tissue, shape, "tissue")
    known = np.zeros(shape, dtype=bool)
    if known_background is not None:
        known = _check_mask(known_background, shape, "known_background")
        inside = inside & ~known
        tissue = inside
    q_sure = params.background_quantile
    sure = None if q_sure is None else sure_background(cams, present, q_sure, inside) | known

    def finish(labels: np.ndarray) -> np.ndarray:
        labels = np.where(inside, labels, 0).astype(np.uint8)
        if params.background == "tissue":
            return fill_tissue(labels, inside)
        return labels if sure is None else np.where((labels == 0) & ~sure, IGNORE, labels)

    threshold = finish(label_cams(cams, present, params.quantile, tissue, params.background))
    closed = np.stack(
        [open_close(m, params.open_px, params.close_px) for m in class_masks(threshold, present)]
    )
    # closing may bridge into non-tissue gaps (restricted by finish) or into another class
    morph = finish(resolve(cams, closed, present))
    kept = [remove_small(m, params.min_object_px) for m in class_masks(morph, present)]
    small = finish(resolve(cams, np.stack(kept), present))
    crf = finish(dense_crf(rgb, cams, small, present, params, tissue))
    return {"threshold": threshold, "morphology": morph, "small_objects": small, "crf": crf}
