"""Macenko normalization and tissue masks on real Beer-Lambert-rendered H&E images."""

from pathlib import Path

import numpy as np
import pytest
from skimage import color

from histo_wsss.demo import E_REF, H_REF, DemoSpec, render
from histo_wsss.io import read_rgb
from histo_wsss.stain import (
    StainParams,
    StainTarget,
    choose_target,
    fit_stains,
    normalize,
    normalize_images,
    tissue_mask,
    value_saturation,
)

SPEC = DemoSpec(n_images=8, size=128, seed=3)


def _angle(a, b):
    """Largest angle (degrees) between corresponding stain vectors of two 3x2 matrices."""
    cos = np.sum(a * b, axis=0) / (np.linalg.norm(a, axis=0) * np.linalg.norm(b, axis=0))
    return float(np.degrees(np.arccos(np.clip(cos, -1, 1))).max())


def _image(index, positive=False):
    return render(SPEC, index, positive)[0]


def test_tissue_mask_separates_white_background_from_tissue():
    rgb = _image(0).copy()
    rgb[:, :48] = 245  # white background strip
    tissue = tissue_mask(rgb)
    assert not tissue[:, :46].any()
    assert tissue[:, 52:].mean() > 0.9


def test_tissue_holes_up_to_tissue_hole_px_are_tissue_and_specks_go():
    rgb = np.zeros((128, 128, 3), np.uint8)
    rgb[:] = (120, 60, 160)  # tissue
    rgb[:, :48] = 245  # the slide's white background, touching the border
    rgb[60:70, 80:90] = 245  # a 100-px lumen enclosed by tissue
    rgb[20:22, 20:22] = (120, 60, 160)  # a 4-px speck of tissue in the background
    default = tissue_mask(rgb)
    assert not default[60:70, 80:90].any() and not default[20:22, 20:22].any()
    filled = tissue_mask(rgb, StainParams(tissue_hole_px=101))
    lumen = np.zeros((128, 128), bool)
    lumen[60:70, 80:90] = True
    assert np.array_equal(filled & ~default, lumen)  # only the lumen joins the tissue
    assert not filled[:, :48].any()
    assert np.array_equal(tissue_mask(rgb, StainParams(tissue_hole_px=100)), default)


GLAS_IMAGES = Path(__file__).resolve().parents[2] / "shared" / "data" / "glas-train" / "images"


def _same_as_skimage(rgb):
    hsv = color.rgb2hsv(rgb)
    value, saturation = value_saturation(rgb)
    return np.array_equal(value, hsv[..., 2]) and np.array_equal(saturation, hsv[..., 1])


def test_value_and_saturation_are_skimages_bit_for_bit():
    grid = np.stack(np.meshgrid(*[np.r_[0:256:3, 255]] * 3, indexing="ij"), axis=-1)
    assert _same_as_skimage(grid.reshape(-1, 1, 3).astype(np.uint8))  # black, greys, primaries
    assert _same_as_skimage(_image(4))
    with pytest.raises(ValueError, match="uint8 HxWx3"):
        value_saturation(_image(4).astype(float))


def test_value_and_saturation_match_skimage_on_real_he_images():
    if not GLAS_IMAGES.is_dir():
        pytest.skip(f"real H&E images not found: {GLAS_IMAGES} (../shared is absent)")
    paths = sorted(GLAS_IMAGES.glob("*.png"))[:5]
    assert len(paths) == 5
    for path in paths:
        assert _same_as_skimage(read_rgb(path)), path


def _rotate(vector, degrees, axis):
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    t = np.radians(degrees)
    out = np.abs((np.eye(3) + np.sin(t) * k + (1 - np.cos(t)) * k @ k) @ vector)
    return out / np.linalg.norm(out)


def _restain(rgb, degrees, axis):
    """The same tissue under other stains (Beer-Lambert): unmix with the demo's reference H and
    E vectors (plus a residual), re-mix with both vectors rotated by ``degrees`` about ``axis``."""
    basis = np.stack([H_REF, E_REF, np.cross(H_REF, E_REF)])
    basis /= np.linalg.norm(basis, axis=1, keepdims=True)
    concentrations = -np.log((rgb.astype(float) + 1) / 256) @ np.linalg.inv(basis)
    stains = basis.copy()
    stains[0], stains[1] = _rotate(basis[0], degrees, axis), _rotate(basis[1], -degrees, axis)
    return np.clip(256 * np.exp(-concentrations @ stains) - 1, 0, 255).round().astype(np.uint8)


@pytest.mark.parametrize(("index", "axis"), [(1, (1, 0, 0)), (2, (0, 1, 1)), (3, (1, -1, 0))])
def test_normalization_undoes_a_change_of_stains(index, axis):
    original = _image(index, positive=index % 2 == 1)
    restained = _restain(original, 15, axis)
    target = fit_stains(original)
    assert _angle(fit_stains(restained).stain_matrix, target.stain_matrix) > 3
    out, tissue, record = normalize(restained, target)
    assert record == {
        "tissue_fraction": pytest.approx(tissue.mean()),
        "normalized": True,
        "reason": "",
    }
    assert out.shape == original.shape and out.dtype == np.uint8
    before = np.abs(restained.astype(int) - original)[tissue].mean()
    after = np.abs(out.astype(int) - original)[tissue].mean()
    assert after < 0.6 * before, (before, after)


def test_normalization_brings_haematoxylin_vectors_together():
    images = [_image(i, positive=i % 2 == 0) for i in range(8)]
    target = choose_target_from_arrays(images[:4])
    for img in images[4:]:
        before = _angle(fit_stains(img).stain_matrix[:, :1], target.stain_matrix[:, :1])
        after = _angle(
            fit_stains(normalize(img, target)[0]).stain_matrix[:, :1], target.stain_matrix[:, :1]
        )
        assert after < min(before, 1.5), (before, after)


def choose_target_from_arrays(images):
    fits = [fit_stains(img) for img in images]
    return StainTarget(
        np.median([f.stain_matrix for f in fits], axis=0),
        np.median([f.max_concentrations for f in fits], axis=0),
    )


def test_background_only_image_keeps_its_colours_and_is_flagged():
    rgb = np.full((64, 64, 3), 244, np.uint8)
    rgb[30:33, 30:33] = (150, 60, 140)
    out, _, record = normalize(rgb, fit_stains(_image(0)))
    assert out is rgb
    assert record["normalized"] is False
    assert record["reason"].startswith("tissue fraction 0.00")


def test_failing_macenko_fit_falls_back_with_the_reason():
    rgb = np.full((64, 64, 3), (120, 40, 110), np.uint8)  # tissue-coloured but one colour only
    out, _, record = normalize(rgb, fit_stains(_image(0)))
    assert out is rgb
    assert record["normalized"] is False
    assert record["reason"].startswith("macenko failed: ValueError: degenerate fit")


def test_choose_target_is_deterministic_and_skips_background(tmp_path):
    from histo_wsss.io import write_png

    paths = []
    for i in range(3):
        paths.append(tmp_path / f"img{i}.png")
        write_png(paths[-1], _image(i))
    write_png(tmp_path / "blank.png", np.full((32, 32, 3), 250, np.uint8))
    a = choose_target([*paths, tmp_path / "blank.png"], max_images=10)
    b = choose_target(list(reversed([*paths, tmp_path / "blank.png"])), max_images=10)
    assert a.source == ["img0.png", "img1.png", "img2.png"]
    assert a.to_json() == b.to_json()
    assert np.allclose(np.linalg.norm(a.stain_matrix, axis=0), 1)


def test_normalize_images_writes_images_masks_and_qc_rows(tmp_path):
    from histo_wsss.io import write_png

    names = ["x", "blank"]
    write_png(tmp_path / "in" / "x.png", _image(5))
    write_png(tmp_path / "in" / "blank.png", np.full((40, 40, 3), 250, np.uint8))
    qc = normalize_images(
        names,
        [tmp_path / "in" / f"{n}.png" for n in names],
        tmp_path / "out",
        fit_stains(_image(0)),
    )
    assert list(qc["name"]) == names
    assert list(qc["normalized"]) == [True, False]
    assert read_rgb(tmp_path / "out" / "images" / "x.png").shape == (128, 128, 3)
    assert np.array_equal(
        read_rgb(tmp_path / "out" / "images" / "blank.png"), np.full((40, 40, 3), 250, np.uint8)
    )
    assert (tmp_path / "out" / "tissue" / "blank.png").is_file()


def test_stain_params_from_config_takes_known_keys_only():
    params = StainParams.from_config({"io": 250, "shards": 4, "target": "auto"})
    assert params.io == 250 and params.beta == StainParams().beta


def test_images_and_their_real_masks_are_scaled_alike_on_real_glas(tmp_path):
    """At `stain.scale` 0.5 an image and its real mask come out at one size, half of each side,
    and the mask keeps its share of positive pixels (area averaging, majority vote)."""
    from histo_wsss.classes import LabelSpace
    from histo_wsss.io import read_mask
    from histo_wsss.stain import scale_masks

    masks = GLAS_IMAGES.parent / "masks"
    if not masks.is_dir():
        pytest.skip(f"real H&E images with masks not found: {masks} (../shared is absent)")
    name = next(p.stem for p in sorted(masks.glob("*.png")) if read_mask(p).mean() > 0.2)
    image, mask = GLAS_IMAGES / f"{name}.png", masks / f"{name}.png"
    params = StainParams(scale=0.5)
    normalize_images([name], [image], tmp_path, choose_target([image], params), params)
    scale_masks([name], [mask], tmp_path, 0.5, LabelSpace(("malignant",)))
    small_image = read_rgb(tmp_path / "images" / f"{name}.png")
    small_mask = read_mask(tmp_path / "masks" / f"{name}.png")
    height, width = read_rgb(image).shape[:2]
    assert small_image.shape == (round(height / 2), round(width / 2), 3)
    assert small_mask.shape == small_image.shape[:2]
    assert abs(small_mask.mean() - read_mask(mask).mean()) < 0.01
    assert read_mask(tmp_path / "tissue" / f"{name}.png").shape == small_image.shape[:2]


def test_scale_one_reads_images_and_masks_as_they_are(tmp_path):
    from histo_wsss.io import read_mask, scaled_size, write_png

    rgb, mask = _image(2), _image(3)[..., 0] > 128
    write_png(tmp_path / "a.png", rgb)
    write_png(tmp_path / "m.png", mask)
    assert np.array_equal(read_rgb(tmp_path / "a.png", 1.0), rgb)
    assert np.array_equal(read_mask(tmp_path / "m.png", 1.0), mask)
    assert scaled_size((775, 522), 0.5) == (388, 261)  # sides rounded, as PIL's resize is asked
    assert read_rgb(tmp_path / "a.png", 0.3).shape == (*scaled_size((128, 128), 0.3), 3)
