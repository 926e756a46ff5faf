"""Tests of the CAM -> pseudo-mask refinement (real scikit-image and pydensecrf)."""

from __future__ import annotations

import cv2
import numpy as np
import pydensecrf.densecrf as dcrf
import pytest
from pydensecrf.utils import unary_from_softmax

from histo_wsss.classes import IGNORE
from histo_wsss.demo import DemoSpec, render
from histo_wsss.refine import (
    STEPS,
    RefineParams,
    crf_foreground_probability,
    dense_crf,
    fill_tissue,
    label_cams,
    open_close,
    quantile_threshold,
    refine,
    remove_small,
    resolve,
    sure_background,
)
from histo_wsss.stain import tissue_mask

PINK = (230, 160, 190)
PURPLE = (120, 60, 160)


def two_colour_image(size: int = 224, edge: int = 112, noise: float = 6.0) -> np.ndarray:
    """Left of column ``edge`` pink, right purple, with a little deterministic noise."""
    rgb = np.zeros((size, size, 3), dtype=np.int64)
    rgb[:, :edge] = PINK
    rgb[:, edge:] = PURPLE
    rng = np.random.default_rng(0)
    rgb += np.rint(rng.normal(0.0, noise, rgb.shape)).astype(np.int64)
    return np.clip(rgb, 0, 255).astype(np.uint8)


def soft_cam(size: int, boundary: int, width: float = 6.0) -> np.ndarray:
    """CAM falling smoothly from 1 (left) to 0 (right) around column ``boundary``."""
    cols = np.arange(size, dtype=np.float64)
    return np.tile(1.0 / (1.0 + np.exp((cols - boundary) / width)), (size, 1))


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return np.count_nonzero(a & b) / np.count_nonzero(a | b)


# --- parameters -------------------------------------------------------------------------------


def test_params_defaults_are_the_papers():
    p = RefineParams()
    assert (p.quantile, p.open_px, p.close_px, p.min_object_px, p.crf_iterations) == (
        0.5,
        3,
        5,
        64,
        5,
    )
    assert (p.crf_gaussian_sxy, p.crf_gaussian_compat) == (3, 3)
    assert (p.crf_bilateral_sxy, p.crf_bilateral_srgb, p.crf_bilateral_compat) == (80, 13, 10)
    assert p.final_step == "crf"


def test_params_from_config():
    assert RefineParams.from_config({}) == RefineParams()
    assert RefineParams.from_config(None) == RefineParams()
    p = RefineParams.from_config({"quantile": 0.7, "min_object_px": 32})
    assert p.quantile == 0.7 and p.min_object_px == 32 and p.open_px == 3
    with pytest.raises(ValueError, match="min_object_size"):
        RefineParams.from_config({"min_object_size": 10})
    with pytest.raises(ValueError, match="quantile"):
        RefineParams(quantile=1.0)
    with pytest.raises(ValueError, match="open_px"):
        RefineParams(open_px=0)
    with pytest.raises(ValueError, match="final_step must be one of .* got 'dense_crf'"):
        RefineParams(final_step="dense_crf")
    assert p.background == "threshold" and RefineParams(background="tissue").background == "tissue"
    with pytest.raises(ValueError, match="background must be one of .* got 'white'"):
        RefineParams(background="white")
    assert p.background_quantile is None
    with pytest.raises(ValueError, match=r"background_quantile must be in \(0, quantile = 0.5\)"):
        RefineParams(background_quantile=0.5)
    with pytest.raises(ValueError, match="background_quantile needs background 'threshold'"):
        RefineParams(background="tissue", background_quantile=0.2)


# --- quantile threshold ---------------------------------------------------------------------


def test_quantile_threshold_selects_exactly_the_top_half_of_a_ramp():
    cam = np.arange(64, dtype=np.float64).reshape(8, 8) / 63.0
    mask = quantile_threshold(cam, 0.5)
    assert mask.dtype == bool
    np.testing.assert_array_equal(mask, np.arange(64).reshape(8, 8) >= 32)


def test_quantile_threshold_over_tissue_only():
    ramp = np.arange(64).reshape(8, 8)
    cam = ramp / 63.0
    tissue = np.zeros((8, 8), dtype=bool)
    tissue[:, :4] = True  # values r*8 + 0..3: 32 tissue pixels
    mask = quantile_threshold(cam, 0.5, tissue)
    assert not mask[~tissue].any()  # right half has higher CAM but is not tissue
    tissue_values = np.sort(ramp[tissue])
    np.testing.assert_array_equal(np.sort(ramp[mask]), tissue_values[16:])  # top half of tissue
    # over the whole image the threshold would differ (32 pixels, mostly outside tissue)
    assert not np.array_equal(quantile_threshold(cam, 0.5), mask)


def test_quantile_threshold_ties_and_empty_tissue():
    cam = np.zeros((10, 10))
    cam[:3] = np.linspace(0.1, 1.0, 30).reshape(3, 10)  # 70 % zeros: the median is 0
    np.testing.assert_array_equal(quantile_threshold(cam, 0.5), cam > 0)
    assert not quantile_threshold(cam, 0.5, np.zeros((10, 10), dtype=bool)).any()
    assert not quantile_threshold(np.zeros((10, 10)), 0.5).any()


# --- morphology -----------------------------------------------------------------------------


def test_open_close_speckle_hole_and_square():
    mask = np.zeros((64, 64), dtype=bool)
    mask[2, 2] = True  # 1-px speckle
    mask[58:60, 2:4] = True  # 2x2 speckle
    square = np.zeros_like(mask)
    square[8:28, 8:28] = True  # big square, sharp corners
    blob = np.zeros_like(mask)
    blob[36:56, 30:56] = True
    holed_blob = blob.copy()
    holed_blob[44:47, 40:43] = False  # 3x3 hole
    mask |= square | holed_blob

    out = open_close(mask, 3, 5)
    assert out.dtype == bool
    assert not out[2, 2] and not out[58:60, 2:4].any()  # speckles opened away
    np.testing.assert_array_equal(out[44:47, 40:43], True)  # hole closed
    np.testing.assert_array_equal(out, square | blob)  # square kept exactly (square footprint)

    # the parameters matter: no opening keeps the speckle, no closing keeps the hole
    assert open_close(mask, 1, 5)[2, 2]
    assert not open_close(mask, 3, 1)[44:47, 40:43].any()


def test_open_close_borders_do_not_matter():
    mask = np.zeros((32, 32), dtype=bool)
    mask[:10, :10] = True  # touches the top-left corner
    mask[12:22, 20:30] = True  # 2 px from the right border
    np.testing.assert_array_equal(open_close(mask, 3, 5), mask)


# --- small objects --------------------------------------------------------------------------


def test_remove_small_keeps_64_removes_63():
    mask = np.zeros((40, 40), dtype=bool)
    mask[2:9, 2:11] = True  # 7 x 9 = 63 px
    mask[20:28, 20:28] = True  # 8 x 8 = 64 px
    assert mask[2:9, 2:11].sum() == 63 and mask[20:28, 20:28].sum() == 64
    out = remove_small(mask, 64)
    assert out.dtype == bool
    assert not out[2:9, 2:11].any()
    np.testing.assert_array_equal(out[20:28, 20:28], True)
    assert out.sum() == 64
    assert remove_small(mask, 63).sum() == 127  # both kept at 63
    assert remove_small(mask, 65).sum() == 0  # both removed at 65


def test_remove_small_connectivity():
    mask = np.zeros((20, 20), dtype=bool)
    mask[2:9, 2:11] = True  # 63 px, last pixel (8, 10)
    mask[9, 11] = True  # touches it diagonally only: 64 px 8-connected, 63 + 1 4-connected
    np.testing.assert_array_equal(remove_small(mask, 64), mask)  # default 8-connectivity
    assert not remove_small(mask, 64, connectivity=1).any()


# --- CRF ------------------------------------------------------------------------------------


@pytest.mark.parametrize("shift", [8, -8])
def test_crf_snaps_mask_to_colour_edge(shift):
    size, edge = 224, 112
    rgb = two_colour_image(size, edge)
    truth = np.zeros((size, size), dtype=bool)
    truth[:, :edge] = True
    given = np.zeros_like(truth)
    given[:, : edge + shift] = True  # boundary 8 px off the colour edge
    cam = soft_cam(size, edge + shift)

    out = dense_crf(rgb, cam[None], given.astype(np.uint8), [0], RefineParams())
    assert out.dtype == np.uint8 and set(np.unique(out)) == {0, 1}
    out = out == 1
    assert out.shape == truth.shape
    # per row, the first background column lies within 2 px of the colour edge
    first_bg = np.argmin(out, axis=1)
    assert np.all(~out.all(axis=1))
    assert np.all(np.abs(first_bg - edge) <= 2), np.unique(first_bg)
    assert iou(out, truth) > iou(given, truth) + 0.05


def test_crf_stays_in_tissue_and_empty_mask_stays_empty():
    size = 64
    rgb = two_colour_image(size, 32)
    cam = soft_cam(size, 32)
    given = cam > 0.5
    tissue = np.ones((size, size), dtype=bool)
    tissue[:, :8] = False
    out = dense_crf(rgb, cam[None], given.astype(np.uint8), [0], tissue=tissue)
    assert out.any() and not out[~tissue].any()
    assert not dense_crf(rgb, cam[None], np.zeros(given.shape, np.uint8), [0]).any()


# --- whole chain ----------------------------------------------------------------------------


def blobby_case(size: int = 96):
    """A pink disc on purple with a CAM peaked on it plus some noise, and a tissue mask."""
    yy, xx = np.mgrid[:size, :size]
    disc = (yy - 40) ** 2 + (xx - 50) ** 2 < 22**2
    rgb = np.where(disc[..., None], np.array(PINK), np.array(PURPLE)).astype(np.int64)
    rng = np.random.default_rng(1)
    rgb = np.clip(rgb + rng.normal(0, 8, rgb.shape).round().astype(np.int64), 0, 255)
    cam = np.exp(-((yy - 44) ** 2 + (xx - 54) ** 2) / (2 * 18.0**2))
    cam = np.clip(cam + rng.normal(0, 0.05, cam.shape), 0, 1)
    tissue = np.ones((size, size), dtype=bool)
    tissue[:, -10:] = False
    return rgb.astype(np.uint8), cam, tissue, disc


def test_refine_runs_every_step_in_order():
    rgb, cam, tissue, disc = blobby_case()
    labels = refine(rgb, cam[None], [0], RefineParams(), tissue=tissue)
    assert list(labels) == list(STEPS) == ["threshold", "morphology", "small_objects", "crf"]
    for m in labels.values():
        assert m.dtype == np.uint8 and m.shape == cam.shape and set(np.unique(m)) <= {0, 1}
    steps = {step: m == 1 for step, m in labels.items()}
    for m in steps.values():
        assert not m[~tissue].any()
    assert steps["threshold"].sum() == pytest.approx(0.5 * tissue.sum(), abs=2)
    assert not (steps["small_objects"] & ~steps["morphology"]).any()
    assert steps["crf"].any()
    assert iou(steps["crf"], disc) > iou(steps["threshold"], disc)


def test_negative_image_gives_empty_masks():
    rgb, cam, tissue, _ = blobby_case()
    steps = refine(rgb, cam[None], [], RefineParams(), tissue=tissue)
    assert list(steps) == list(STEPS)
    for m in steps.values():
        assert m.dtype == np.uint8 and m.shape == cam.shape and not m.any()


def test_refine_is_deterministic():
    rgb, cam, tissue, _ = blobby_case()
    a = refine(rgb, cam[None], [0], RefineParams(), tissue=tissue)
    b = refine(rgb.copy(), cam[None].copy(), [0], RefineParams(), tissue=tissue.copy())
    for step in STEPS:
        np.testing.assert_array_equal(a[step], b[step])


def test_refine_closing_does_not_bridge_non_tissue_gaps():
    size = 64
    rgb = two_colour_image(size, 32)
    cam = soft_cam(size, 32)
    tissue = np.ones((size, size), dtype=bool)
    tissue[:, 14:16] = False  # a 2-px non-tissue crack through the high-CAM half
    steps = refine(rgb, cam[None], [0], RefineParams(), tissue=tissue)
    assert open_close(steps["threshold"] == 1, 3, 5)[:, 14:16].all()  # closing would bridge it
    for step in STEPS:
        assert not steps[step][:, 14:16].any(), step


# --- K = 1 is the binary recipe -------------------------------------------------------------


def binary_recipe(rgb, cam, params, tissue):
    """The binary refinement written out from its parts: the quantile threshold, opening and
    closing, small objects, and a two-label DenseCRF with unary ``[1 - p, p]``."""
    threshold = quantile_threshold(cam, params.quantile, tissue)
    morph = open_close(threshold, params.open_px, params.close_px) & tissue
    small = remove_small(morph, params.min_object_px)
    h, w = cam.shape
    p = crf_foreground_probability(cam, small, params.crf_fg_confidence)
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
    crf = (q[1] > q[0]) & tissue if small.any() else np.zeros_like(small)
    return {"threshold": threshold, "morphology": morph, "small_objects": small, "crf": crf}


def blurred_cam(region: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """A CAM-like map: ``region`` blurred, with smooth noise, min-max scaled to [0, 1]."""
    cam = cv2.GaussianBlur(region.astype(np.float32), (0, 0), sigma)
    noise = cv2.GaussianBlur(rng.normal(0, 1, region.shape).astype(np.float32), (0, 0), 8)
    cam = np.clip(cam + 2 * noise, 0, None)
    return (cam - cam.min()) / (cam.max() - cam.min())


@pytest.mark.parametrize(
    "params", [RefineParams(), RefineParams(quantile=0.7, min_object_px=200, open_px=5)]
)
def test_one_class_is_the_binary_recipe_on_demo_images(params):
    """K = 1, background ``threshold``: every step's label map is the binary recipe's mask."""
    spec = DemoSpec(n_images=8, size=128, seed=5)
    rng = np.random.default_rng(0)
    for index in range(3):
        rgb, truth = render(spec, index, True)
        cam = blurred_cam(truth > 0, 6, rng)
        tissue = tissue_mask(rgb)
        labels = refine(rgb, cam[None].astype(np.float32), [0], params, tissue)
        expected = binary_recipe(rgb, cam, params, tissue)
        for step in STEPS:
            np.testing.assert_array_equal(labels[step] == 1, expected[step], err_msg=step)
            assert set(np.unique(labels[step])) <= {0, 1}
        assert not np.array_equal(expected["crf"], expected["small_objects"])


# --- K classes ------------------------------------------------------------------------------

CLASSES = ("tumor", "stroma", "lymphocytes")


@pytest.fixture(scope="module")
def multiclass_images():
    """Multi-class demo images (labels 1..3, 255 off the tissue) with hand-made CAMs: blurred
    true regions of the present classes, and for absent classes a bright map everywhere (which
    the refinement must never use)."""
    spec = DemoSpec(n_images=8, size=128, seed=5, tissues=CLASSES)
    rng = np.random.default_rng(1)
    cases = []
    for index in range(4):
        rgb, mask = render(spec, index)
        present = sorted(int(v) for v in np.unique(mask) if v < len(CLASSES))
        cams = np.full((3, *mask.shape), 0.9, np.float32)
        for c in present:
            cams[c] = blurred_cam(mask == c, 4, rng)
        cases.append((rgb, mask, present, cams, tissue_mask(rgb)))
    assert {len(case[2]) for case in cases} >= {2}  # images with several classes
    return cases


@pytest.mark.parametrize("background", ["threshold", "tissue"])
def test_label_maps_hold_only_the_present_classes(multiclass_images, background):
    params = RefineParams(background=background)
    for rgb, _, present, cams, tissue in multiclass_images:
        steps = refine(rgb, cams, present, params, tissue)
        for step, labels in steps.items():
            assert labels.dtype == np.uint8 and labels.shape == tissue.shape
            assert set(np.unique(labels)) <= {0, *(c + 1 for c in present)}, (step, present)
            assert not labels[~tissue].any()
        assert len(set(np.unique(steps["crf"])) - {0}) >= 1


def test_background_tissue_gives_every_tissue_pixel_a_present_class(multiclass_images):
    params = RefineParams(background="tissue")
    for rgb, mask, present, cams, tissue in multiclass_images:
        steps = refine(rgb, cams, present, params, tissue)
        for step, labels in steps.items():
            assert (labels[tissue] > 0).all(), step
        # the first map: the present class with the highest CAM
        best = np.array(present)[np.argmax(cams[present], axis=0)] + 1
        np.testing.assert_array_equal(steps["threshold"][tissue], best[tissue])
        # with CAMs made from the truth, most tissue pixels are right
        truth = np.where(mask == 255, 255, mask + 1)
        scored = tissue & (truth != 255)
        assert (steps["small_objects"][scored] == truth[scored]).mean() > 0.8


def test_threshold_background_keeps_each_class_above_its_own_quantile(multiclass_images):
    for _, _, present, cams, tissue in multiclass_images:
        labels = label_cams(cams, present, 0.5, tissue, "threshold")
        above = {c: cams[c] > np.quantile(cams[c][tissue], 0.5) for c in present}
        for row, col in zip(*np.nonzero(tissue), strict=True):
            claims = [c for c in present if above[c][row, col]]
            expected = max(claims, key=lambda c: cams[c][row, col]) + 1 if claims else 0
            assert labels[row, col] == expected
        assert (labels[tissue] == 0).any()  # below every threshold: background


def test_resolve_and_fill_tissue():
    cams = np.zeros((3, 2, 3), np.float32)
    cams[0], cams[2] = 0.8, [[0.9, 0.1, 0.9], [0.1, 0.9, 0.1]]
    claims = np.array([np.ones((2, 3), bool), np.ones((2, 3), bool)])
    claims[0, 1, 2] = claims[1, 1, 2] = False
    # classes 0 and 2 claim every pixel but the last; the higher CAM wins
    labels = resolve(cams, claims, [0, 2])
    np.testing.assert_array_equal(labels, [[3, 1, 3], [1, 3, 0]])
    tissue = np.ones((2, 3), bool)
    np.testing.assert_array_equal(fill_tissue(labels, tissue), [[3, 1, 3], [1, 3, 3]])
    tissue[1, 2] = False
    np.testing.assert_array_equal(fill_tissue(labels, tissue), labels)
    empty = np.zeros((2, 3), np.uint8)
    np.testing.assert_array_equal(fill_tissue(empty, tissue), empty)


def test_crf_with_three_classes_and_background_snaps_to_colour_edges():
    """The CRF over 3 + 1 labels (real pydensecrf): four colour stripes (white glass, pink,
    purple, dark blue), label maps and CAMs 6 px off the colour edges; the CRF moves each
    boundary back to its edge."""
    size, edges = 128, (32, 64, 96)
    colours = [(245, 245, 245), PINK, PURPLE, (60, 40, 120)]
    rgb = np.zeros((size, size, 3), np.int64)
    bounds = (0, *edges, size)
    for k, colour in enumerate(colours):
        rgb[:, bounds[k] : bounds[k + 1]] = colour
    rng = np.random.default_rng(0)
    rgb = np.clip(rgb + rng.normal(0, 6, rgb.shape).round().astype(np.int64), 0, 255)
    rgb = rgb.astype(np.uint8)
    shifted = [0, *(e + 6 for e in edges), size]
    given = np.zeros((size, size), np.uint8)
    cams = np.zeros((3, size, size), np.float32)
    cols = np.arange(size)
    for k in range(3):
        given[:, shifted[k + 1] : shifted[k + 2]] = k + 1
        rise = 1 / (1 + np.exp(-(cols - shifted[k + 1]) / 4))
        fall = 1 / (1 + np.exp((cols - shifted[k + 2]) / 4)) if k < 2 else 1
        cams[k] = np.tile(rise * fall, (size, 1))
    out = dense_crf(rgb, cams, given, [0, 1, 2], RefineParams())
    assert set(np.unique(out)) == {0, 1, 2, 3}
    truth = np.searchsorted(np.array(edges), cols, side="right")
    accuracy = (out == truth).mean()
    assert accuracy > 0.97 and accuracy > (given == truth).mean() + 0.05


def test_background_quantile_leaves_the_band_and_non_tissue_unlabelled(multiclass_images):
    params = RefineParams(quantile=0.6, background_quantile=0.2, final_step="small_objects")
    for rgb, _, present, cams, tissue in multiclass_images:
        steps = refine(rgb, cams, present, params, tissue)
        plain = refine(rgb, cams, present, RefineParams(quantile=0.6), tissue)
        sure = sure_background(cams, present, 0.2, tissue)
        below = np.stack([cams[c] <= np.quantile(cams[c][tissue], 0.2) for c in present])
        np.testing.assert_array_equal(sure, tissue & below.all(axis=0))
        for step, labels in steps.items():
            assert set(np.unique(labels)) <= {0, IGNORE, *(c + 1 for c in present)}, step
            classes = (labels > 0) & (labels != IGNORE)
            # the same classes as one threshold gives; background only where sure
            np.testing.assert_array_equal(labels[classes], plain[step][classes])
            np.testing.assert_array_equal(labels == 0, sure & (plain[step] == 0), step)
            assert (labels[~tissue] == IGNORE).all()
        band = steps["threshold"] == IGNORE
        assert band[tissue].mean() > 0.1  # the middle of the CAMs


def test_background_quantile_with_one_class_on_a_ramp():
    cam = np.tile(np.linspace(0, 1, 100, dtype=np.float32), (20, 1))[None]
    rgb = np.full((20, 100, 3), 200, np.uint8)
    params = RefineParams(quantile=0.6, background_quantile=0.2, min_object_px=0)
    labels = refine(rgb, cam, [0], params)["threshold"]
    np.testing.assert_array_equal(labels[0, :20], 0)
    np.testing.assert_array_equal(labels[0, 20:60], IGNORE)
    np.testing.assert_array_equal(labels[0, 60:], 1)
