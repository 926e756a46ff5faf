"""Images of any size through every stage: each output has its image's own size."""

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from synthetic import square_items
from torchvision.models import resnet18

from histo_wsss import classifier, segmentation
from histo_wsss.batching import same_size_runs, size_batches
from histo_wsss.cam import save_cams
from histo_wsss.classes import LabelSpace
from histo_wsss.classifier import preprocess
from histo_wsss.demo import DemoSpec, render
from histo_wsss.figures import error_maps, pseudo_mask_steps, segmentation_panels
from histo_wsss.io import read_mask, write_png
from histo_wsss.pseudo_masks import Item, refine_images
from histo_wsss.refine import STEPS, RefineParams
from histo_wsss.stain import StainParams, choose_target, normalize_images, tissue_mask
from histo_wsss.training import Augmentation, training_sizes

ODD = [(97, 131), (131, 97), (45, 33)]  # odd sides, portrait and landscape, smaller than a crop
NO_COLOUR = {"flip": True, "rotate90": True, "brightness": 0, "contrast": 0, "saturation": 0}
NO_COLOUR["hue"] = 0


def _demo(size, index=0, positive=True):
    """A synthetic H&E image and its boolean mask, cropped to ``size``."""
    rgb, truth = render(DemoSpec(n_images=4, size=160, seed=3), index, positive)
    h, w = size
    return np.ascontiguousarray(rgb[:h, :w]), np.ascontiguousarray(truth[:h, :w] > 0)


# --------------------------------------------------------------------------------------------
# Batching and random crops


def test_same_size_runs_cut_at_size_changes_and_full_batches():
    sizes = [(4, 4), (4, 4), (4, 4), (5, 3), (4, 4), (4, 4)]
    runs = list(same_size_runs(range(6), 2, lambda i: sizes[i]))
    assert runs == [[0, 1], [2], [3], [4, 5]]
    with pytest.raises(ValueError, match="batch_size"):
        list(same_size_runs(range(3), 0, lambda i: sizes[i]))


def test_a_crop_larger_than_the_image_holds_the_whole_image_and_its_mask():
    """Reflect padding adds pixels around the image and leaves the image itself unchanged."""
    h, w = 45, 33
    rng = np.random.default_rng(0)
    image = rng.integers(0, 200, (h, w, 3), dtype=np.uint8)
    mask = np.zeros((h, w), np.uint8)
    mask[5:20, 3:9] = 1
    image[mask > 0] = 250
    augment = Augmentation({**NO_COLOUR, "flip": False, "rotate90": False}, crop_size=64)
    out = augment((0, 0, 0), image=image, mask=mask)
    assert out["image"].shape == (64, 64, 3) and out["mask"].shape == (64, 64)
    found = cv2.matchTemplate(out["image"], image, cv2.TM_SQDIFF)
    y, x = np.unravel_index(int(np.argmin(found)), found.shape)
    # the image appears unchanged inside the padded crop (compared exactly: OpenCV 5's
    # matchTemplate sums in floating point, so its best match is near 0, not 0)
    assert np.array_equal(out["image"][y : y + h, x : x + w], image)
    assert np.array_equal(out["mask"][y : y + h, x : x + w], mask)
    assert np.array_equal(out["mask"] > 0, out["image"][..., 0] == 250)  # padded alike


@pytest.mark.parametrize("size", [(131, 97), (45, 33)])
def test_crops_of_any_image_are_square_and_move_image_and_mask_together(size):
    image, mask = _demo(size)
    image[mask] = 255  # the mask shows in the image, so alignment can be read back
    augment = Augmentation(NO_COLOUR, crop_size=48)
    for index in range(12):
        out = augment((1, 0, index), image=image, mask=mask.astype(np.uint8))
        assert out["image"].shape == (48, 48, 3)
        assert np.array_equal(out["mask"] > 0, (out["image"] == 255).all(-1))


# --------------------------------------------------------------------------------------------
# Stain normalization, CAMs, pseudo-masks


def test_stain_normalization_keeps_each_images_size(tmp_path):
    paths = []
    for i, size in enumerate(ODD):
        rgb, _ = _demo(size, index=i)
        write_png(tmp_path / f"im{i}.png", rgb)
        paths.append(tmp_path / f"im{i}.png")
    target = choose_target(paths[:2])
    qc = normalize_images(["a", "b", "c"], paths, tmp_path / "out", target, StainParams())
    assert qc["normalized"].all()
    for name, size in zip("abc", ODD, strict=True):
        with Image.open(tmp_path / "out" / "images" / f"{name}.png") as img:
            assert img.size[::-1] == size
        assert read_mask(tmp_path / "out" / "tissue" / f"{name}.png").shape == size


def test_cams_have_each_images_size_and_do_not_depend_on_the_batch(tmp_path):
    sizes = [(97, 131), (97, 131), (45, 33), (97, 131)]
    rng = np.random.default_rng(0)
    items = []
    for i, (h, w) in enumerate(sizes):
        write_png(tmp_path / f"{i}.png", rng.integers(0, 255, (h, w, 3), np.uint8))
        items.append((f"im{i}", str(tmp_path / f"{i}.png"), ["lesion"]))
    torch.manual_seed(0)
    model = resnet18(weights=None, num_classes=1)
    cfg = {"method": "gradcam++", "n_samples": 1, "noise_sigma": 0, "seed": 0}
    cfg |= {"batch_size": 4, "smooth_activations": False}
    cpu = torch.device("cpu")
    save_cams(model, items, tmp_path / "batched", cfg, cpu, ["lesion"])
    save_cams(model, items, tmp_path / "alone", {**cfg, "batch_size": 1}, cpu, ["lesion"])
    for (name, _, _), size in zip(items, sizes, strict=True):
        cam = np.load(tmp_path / "batched" / f"{name}.npy")
        assert cam.shape == (1, *size) and cam.max() == 1
        alone = np.load(tmp_path / "alone" / f"{name}.npy").astype(np.float32)
        np.testing.assert_allclose(cam.astype(np.float32), alone, atol=2e-3)  # float16 files


def test_pseudo_masks_have_each_images_size(tmp_path):
    items = []
    for i, size in enumerate(ODD):
        rgb, truth = _demo(size, index=i)
        write_png(tmp_path / f"{i}.png", rgb)
        write_png(tmp_path / f"{i}_tissue.png", tissue_mask(rgb))
        write_png(tmp_path / f"{i}_truth.png", truth)
        cam = cv2.GaussianBlur(truth.astype(np.float32), (0, 0), 4)
        np.save(tmp_path / f"{i}.npy", (cam / max(cam.max(), 1e-6)).astype(np.float16)[None])
        files = [str(tmp_path / f"{i}{s}") for s in (".png", "_tissue.png", ".npy")]
        items.append(Item(f"im{i}", *files, (0,), str(tmp_path / f"{i}_truth.png")))
    params = RefineParams(min_object_px=16)
    table, _ = refine_images(items, params, tmp_path / "out", True, LabelSpace(("lesion",)))
    for item, size in zip(items, ODD, strict=True):
        assert read_mask(tmp_path / "out" / "masks" / f"{item.name}.png").shape == size
        for step in STEPS[:-1]:
            assert read_mask(tmp_path / "out" / "steps" / step / f"{item.name}.png").shape == size
    assert (table["crf_iou"] > 0.3).all()  # the refinement still follows the blurred truth


# --------------------------------------------------------------------------------------------
# Classifier


CLASSIFIER = {
    "arch": "resnet18",
    "epochs": 2,
    "batch_size": 4,
    "lr": 0.01,
    "unfreeze": {"layer4": 0, "layer3": 0, "layer2": 0, "layer1": 0, "stem": 0},
    "augment": NO_COLOUR,
    "device": "cpu",
}
MIXED = [((97, 131), 1), ((45, 33), 0), ((64, 64), 1), ((131, 97), 0), ((45, 33), 1)]


def test_classifier_trains_on_crops_of_any_size_and_predicts_whole_images(tmp_path):
    items = [(image, label) for image, _, label in square_items(tmp_path, MIXED * 2, 0, side=16)]
    best = classifier.train(
        items[:6], items[6:], {**CLASSIFIER, "crop_size": 40}, tmp_path / "m.pt", tmp_path / "m.csv"
    )
    assert best["epoch"] in (1, 2)
    model = classifier.load_checkpoint(tmp_path / "m.pt")
    paths = [p for p, _ in items]
    batched = classifier.predict(model, paths, batch_size=4)
    alone = classifier.predict(model, paths, batch_size=1)
    assert batched.shape == (10, 1)  # one column per foreground class
    np.testing.assert_allclose(batched, alone, atol=1e-5)


def test_classifier_without_crops_batches_by_size_and_needs_a_size_seen_twice(tmp_path):
    items = [(image, label) for image, _, label in square_items(tmp_path, MIXED * 2, 1, side=16)]
    classifier.train(items[:8], items[8:], CLASSIFIER, tmp_path / "m.pt", tmp_path / "m.csv")
    assert len(pd.read_csv(tmp_path / "m.csv")) == 2
    unique = [items[0], items[1], items[2]]  # three sizes, one image each
    with pytest.raises(ValueError, match="no trainable batch.*set crop_size"):
        classifier.train(unique, items[8:], CLASSIFIER, tmp_path / "n.pt", tmp_path / "n.csv")


def test_with_crops_every_image_is_batched():
    sizes = [(97, 131), (45, 33), (64, 64)]
    crops = training_sizes(sizes, 48)
    assert crops == [(48, 48)] * 3
    assert sorted(sum(size_batches(range(3), crops, 2, np.random.default_rng(0)), [])) == [0, 1, 2]
    assert size_batches(range(3), training_sizes(sizes, None), 2, np.random.default_rng(0)) == []


# --------------------------------------------------------------------------------------------
# Segmentation


SEGMENTATION = {
    "encoder": "resnet18",
    "device": "cpu",
    "crop_size": 48,
    "epochs": 8,
    "batch_size": 5,
    "lr": 0.05,
    "positive_only_epochs": 1,
    "negative_ramp_epochs": 2,
    "negative_max_prob": 1.0,
    "augment": NO_COLOUR,
}
TRAIN = [((75, 100), 1), ((64, 64), 1), ((50, 83), 0), ((97, 61), 1), ((41, 45), 1)] * 3
VAL = [((75, 100), 1), ((64, 64), 0), ((97, 61), 1), ((41, 45), 0)]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """DeepLabV3+ trained on 48 x 48 crops of images of five sizes, two smaller than a crop."""
    root = tmp_path_factory.mktemp("any_size_seg")
    (root / "train").mkdir()
    (root / "val").mkdir()
    train_items = square_items(root / "train", TRAIN, 0, side=20)
    val_items = square_items(root / "val", VAL, 1, side=20)
    best = segmentation.train(train_items, val_items, SEGMENTATION, root / "m.pt", root / "m.csv")
    return best, segmentation.load_checkpoint(root / "m.pt"), pd.read_csv(root / "m.csv")


def test_segmentation_trains_on_crops_of_every_image_and_learns(trained):
    best, _, metrics = trained
    assert metrics["n_train_images"].iloc[-1] == len(TRAIN)  # no size left out
    assert best["val_iou_vs_pseudo_pooled"] > 0.5


def test_deeplab_padding_changes_the_result_inside_the_image_only_a_little(trained):
    """An odd-sized image is padded to the encoder stride and cropped back. Compared with the
    larger image it was cut from (whose pixels need no padding), inside the image: the logits
    move by at most 5 % of their range on average (the ASPP's global pooling branch spreads the
    padding's effect over the whole map, so it is not zero away from the edges; measured 3.5 %),
    and the IoU of the predicted mask with the truth drops by at most 0.05 (measured 0.005)."""
    _, model, _ = trained
    rng = np.random.default_rng(5)
    image = rng.integers(40, 90, (96, 128, 3), dtype=np.uint8)
    truth = np.zeros((96, 128), dtype=bool)
    for y, x in [(10, 14), (50, 60), (30, 95)]:
        image[y : y + 20, x : x + 20] = 230
        truth[y : y + 20, x : x + 20] = True
    inside = np.s_[5:86, 7:114]  # 81 x 107: padded to 96 x 112
    with torch.no_grad():
        full = segmentation.forward_padded(model, preprocess(image)[None])[0][0, 0].numpy()
        cut = np.ascontiguousarray(image[inside])
        part = segmentation.forward_padded(model, preprocess(cut)[None])[0][0, 0].numpy()
    assert part.shape == (81, 107)
    spread = full.max() - full.min()
    assert np.abs(part - full[inside]).mean() <= 0.05 * spread

    def iou(logits):
        pred = logits >= 0  # probability >= 0.5
        return (pred & truth[inside]).sum() / (pred | truth[inside]).sum()

    assert iou(full[inside]) > 0.5  # the model finds the squares: the comparison means something
    assert iou(part) >= iou(full[inside]) - 0.05


def test_segmentation_predicts_each_image_at_its_size(trained, tmp_path):
    _, model, _ = trained
    items = square_items(tmp_path, [(size, 1) for size in ODD + [(97, 131)]], 2, side=16)
    paths = [image for image, _, _ in items]
    batched = list(segmentation.predict(model, paths, batch_size=4))
    alone = list(segmentation.predict(model, paths, batch_size=1))
    for (_, prob, head), (_, prob1, head1), size in zip(
        batched, alone, ODD + [(97, 131)], strict=True
    ):
        assert prob.shape == (1, *size)  # (K, H, W): one class
        np.testing.assert_allclose(prob, prob1, atol=1e-5)
        np.testing.assert_allclose(head, head1, atol=1e-5)


# --------------------------------------------------------------------------------------------
# Figures


def test_figures_draw_rows_of_different_sizes(tmp_path):
    examples, files = [], {}
    for i, size in enumerate(ODD):
        rgb, truth = _demo(size, index=i)
        prob = cv2.GaussianBlur(truth.astype(np.float32), (0, 0), 3)
        examples.append({"name": f"im{i}", "image": rgb, "prob": prob, "pseudo": truth})
        examples[-1] |= {"truth": truth, "pred": prob >= 0.5, "reference": truth}
        for kind, array in [("image", rgb), ("mask", truth)]:
            write_png(tmp_path / f"{kind}{i}.png", array)
            files.setdefault(kind, {})[f"im{i}"] = str(tmp_path / f"{kind}{i}.png")
        np.save(tmp_path / f"cam{i}.npy", prob.astype(np.float16))
        files.setdefault("cam", {})[f"im{i}"] = str(tmp_path / f"cam{i}.npy")
    segmentation_panels(examples, tmp_path / "panels.png")
    error_maps(examples, tmp_path / "errors.png")
    steps = {"threshold": files["mask"]}
    names = list(files["image"])
    pseudo_mask_steps(
        names, files["image"], files["cam"], steps, "threshold", files["mask"], tmp_path / "s.png"
    )
    for name in ("panels.png", "errors.png", "s.png"):
        with Image.open(tmp_path / name) as img:
            assert img.format == "PNG" and img.height > 300
