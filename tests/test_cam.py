import cv2
import numpy as np
import pytest
import torch
import torchvision
from pytorch_grad_cam import GradCAMPlusPlus
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

from histo_wsss.cam import (
    CAM_METHODS,
    SmoothGradCAMPlusPlus,
    cams_and_logits,
    compute_cams,
    image_seed,
    peak_hits,
    resnet_target_layer,
    save_cams,
    window_cams,
)
from histo_wsss.classes import LabelSpace
from histo_wsss.classifier import preprocess
from histo_wsss.io import read_rgb, write_png
from histo_wsss.patches import grid

SQUARE = 16


class BrightSquareNet(nn.Module):
    """Evidence known by construction: the logit grows with the area of bright pixels.

    ``detect`` fires only where a whole 3x3x3 neighbourhood is bright, ``pool`` downsamples by 4
    (so the CAM must be upsampled), ``features`` (the usual target layer) has positive weights
    and ``fc`` a positive weight: the first logit's evidence is exactly the bright square. With
    ``n_classes=2`` the second logit is the first one negated: no channel supports it.
    """

    def __init__(self, n_classes: int = 1) -> None:
        super().__init__()
        self.detect = nn.Conv2d(3, 1, 3, padding=1)
        self.relu = nn.ReLU()
        self.pool = nn.AvgPool2d(4)
        self.features = nn.Conv2d(1, 4, 3, padding=1)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, n_classes)
        gen = torch.Generator().manual_seed(0)
        with torch.no_grad():
            self.detect.weight.fill_(1.0 / 27)
            self.detect.bias.fill_(-0.5)
            self.features.weight.copy_(0.5 + torch.rand(4, 1, 3, 3, generator=gen))
            self.features.bias.zero_()
            weight = 0.5 + torch.rand(1, 4, generator=gen)
            self.fc.weight.copy_(torch.cat([weight, -weight])[:n_classes])
            self.fc.bias.fill_(-1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.features(self.pool(self.relu(self.detect(x))))
        return self.fc(self.gap(a).flatten(1))


def square_image(height: int, width: int, rng: np.random.Generator):
    """Dark noisy background (-1..-0.6), a bright (0.8..1) SQUARE x SQUARE square at random."""
    img = rng.uniform(-1.0, -0.6, size=(3, height, width))
    top = int(rng.integers(0, height - SQUARE + 1))
    left = int(rng.integers(0, width - SQUARE + 1))
    img[:, top : top + SQUARE, left : left + SQUARE] = rng.uniform(0.8, 1.0, (3, SQUARE, SQUARE))
    mask = np.zeros((height, width), dtype=bool)
    mask[top : top + SQUARE, left : left + SQUARE] = True
    return torch.tensor(img, dtype=torch.float32), mask


def square_batch(n: int, height: int, width: int, seed: int):
    rng = np.random.default_rng(seed)
    images, masks = zip(*(square_image(height, width, rng) for _ in range(n)), strict=True)
    return torch.stack(images), np.stack(masks)


@pytest.fixture(scope="module")
def resnet() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None, num_classes=1).eval()


@pytest.fixture(scope="module")
def resnet3() -> nn.Module:
    """A three-class (multi-label) classifier."""
    torch.manual_seed(1)
    return torchvision.models.resnet18(weights=None, num_classes=3).eval()


@pytest.mark.parametrize("method", CAM_METHODS)
@pytest.mark.parametrize(("height", "width"), [(64, 96), (96, 64)])
def test_cam_localises_known_evidence(method, height, width):
    net = BrightSquareNet()
    images, masks = square_batch(3, height, width, seed=height + width)
    cams = compute_cams(net, net.features, images, [0, 0, 0], method=method, n_samples=4)
    assert cams.shape == (3, height, width)
    assert cams.dtype == np.float32
    for cam, mask in zip(cams, masks, strict=True):
        assert cam.min() >= 0.0 and cam.max() == pytest.approx(1.0)
        peak = np.unravel_index(np.argmax(cam), cam.shape)
        assert mask[peak], f"argmax {peak} outside the square"
        inside = cam[mask].sum() / cam.sum()
        assert inside > 0.6, f"only {inside:.2f} of the CAM mass inside the square"
        assert cam[mask].mean() > 5 * cam[~mask].mean()


@pytest.mark.parametrize("method", CAM_METHODS)
def test_a_class_without_support_gives_zero_map(method):
    """Class 1 of the two-class BrightSquareNet is the negated logit of class 0: no channel
    supports it. The same image twice, once per class, gives each class's map."""
    net = BrightSquareNet(n_classes=2)
    images, _ = square_batch(1, 64, 96, seed=1)
    cams = compute_cams(net, net.features, images.repeat(2, 1, 1, 1), [1, 0], method=method)
    assert np.isfinite(cams).all()
    assert np.all(cams[0] == 0.0)
    assert cams[1].max() == pytest.approx(1.0)
    one = BrightSquareNet()
    alone = compute_cams(one, one.features, images, [0], method=method)
    np.testing.assert_allclose(cams[1], alone[0], atol=1e-5)  # the one-class net's map


def test_one_class_target_is_the_binary_logit(resnet):
    """K = 1: the target, ClassifierOutputTarget(0), is the classifier's one logit, as the binary
    workflow's own target was (``+logit`` of a positive image): same maps."""
    assert ClassifierOutputTarget(0)(torch.tensor([1.5])).item() == 1.5
    x = torch.randn(2, 3, 64, 80, generator=torch.Generator().manual_seed(4))
    layer = resnet_target_layer(resnet)
    cam = GradCAMPlusPlus(resnet, [layer])
    direct = cam(x, [lambda out: out.reshape(())] * 2)  # the binary target: the one logit
    cam.activations_and_grads.release()
    got = compute_cams(resnet, layer, x, [0, 0], method="gradcam++")
    np.testing.assert_allclose(got, direct, atol=1e-5)


# The noise only matters where the gradient at the target layer depends on the input: not for a
# layer that reaches the logit through global average pooling + linear (see cam.py's docstring).
# The seeding tests therefore use ResNet's layer3 (its gradient passes layer4's ReLUs) with clean
# activations, and layer4 with smooth_activations=True.
SMOOTH = {"method": "smoothgradcam++", "n_samples": 4, "noise_sigma": 0.15}


@pytest.mark.parametrize("smooth_activations", [False, True])
def test_batched_equals_one_by_one(resnet3, smooth_activations):
    resnet = resnet3
    images = torch.randn(4, 3, 64, 80, generator=torch.Generator().manual_seed(3))
    images[3] = images[0]  # an image with two tags: two (image, class) pairs
    labels = [2, 0, 1, 1]
    kwargs = dict(SMOOTH, smooth_activations=smooth_activations)
    layer = resnet.layer3[-1] if not smooth_activations else resnet_target_layer(resnet)
    # one seed shared by all images
    batched = compute_cams(resnet, layer, images, labels, seed=7, **kwargs)
    for i in range(4):
        single = compute_cams(resnet, layer, images[i : i + 1], labels[i : i + 1], seed=7, **kwargs)
        np.testing.assert_allclose(batched[i], single[0], atol=1e-5)
    # one seed per image
    seeds = [11, 12, 13, 14]
    batched = compute_cams(resnet, layer, images, labels, seed=seeds, **kwargs)
    for i in range(4):
        single = compute_cams(
            resnet, layer, images[i : i + 1], labels[i : i + 1], seed=seeds[i], **kwargs
        )
        np.testing.assert_allclose(batched[i], single[0], atol=1e-5)
    # several noise copies per pass: same draws, same maps
    chunked = compute_cams(resnet, layer, images, labels, seed=seeds, samples_per_pass=3, **kwargs)
    np.testing.assert_allclose(chunked, batched, atol=1e-5)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"method": "gradcam"},
        {"method": "gradcam++"},
        SMOOTH,
        dict(SMOOTH, smooth_activations=True),
    ],
)
def test_the_logits_are_the_clean_images_of_each_pair(resnet3, kwargs):
    """With the maps come the logits of each (image, class) pair on the clean image, the noisy
    copies' notwithstanding: what window CAMs weigh their windows by, without a pass of their
    own."""
    images = torch.randn(2, 3, 64, 80, generator=torch.Generator().manual_seed(5))
    classes, image_of = [2, 0, 1], [0, 0, 1]
    layer = resnet3.layer3[-1]
    maps, logits = cams_and_logits(resnet3, layer, images, classes, image_of=image_of, **kwargs)
    with torch.no_grad():
        expected = resnet3(images)[image_of, classes].numpy()
    assert logits.shape == (3,) and logits.dtype == np.float32
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)
    again = compute_cams(resnet3, layer, images, classes, image_of=image_of, **kwargs)
    np.testing.assert_array_equal(maps, again)


def test_an_images_tags_share_its_forward_passes(resnet3):
    """The cost model of cam.py's docstring: the layers before the target layer run once per
    noisy copy of each image, without an autograd graph; only the rest runs per (image, class)
    pair, with one gradient-free pass of the clean images for their logits. Each map equals
    the one computed alone."""
    seen = {"layer3": [], "fc": []}

    def record(name):
        def hook(module, inputs, output):
            seen[name].append((output.shape[0], output.requires_grad))

        return hook

    handles = [getattr(resnet3, n).register_forward_hook(record(n)) for n in seen]
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(15))
    pairs, seeds = [(0, 0), (0, 1), (0, 2), (1, 1)], [5, 6]
    kwargs = dict(SMOOTH, smooth_activations=True)
    layer = resnet_target_layer(resnet3)
    try:
        maps = compute_cams(
            resnet3, layer, x, [c for _, c in pairs], image_of=[i for i, _ in pairs],
            seed=seeds, **kwargs,
        )  # fmt: skip
    finally:
        for handle in handles:
            handle.remove()
    # 4 noisy copies, then the clean images
    assert seen == {"layer3": [(2, False)] * 5, "fc": [(4, True)] * 4 + [(4, False)]}
    for p, (i, c) in enumerate(pairs):
        alone = compute_cams(resnet3, layer, x[i : i + 1], [c], seed=seeds[i], **kwargs)
        np.testing.assert_allclose(maps[p], alone[0], atol=1e-5)
    assert len({m.tobytes() for m in maps[:3]}) == 3


@pytest.mark.parametrize("smooth_activations", [False, True])
def test_determinism_and_seed_dependence(resnet, smooth_activations):
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    layer = resnet.layer3[-1] if not smooth_activations else resnet_target_layer(resnet)
    kwargs = dict(SMOOTH, smooth_activations=smooth_activations)
    a = compute_cams(resnet, layer, x, [0, 0], seed=0, **kwargs)
    b = compute_cams(resnet, layer, x, [0, 0], seed=0, **kwargs)
    c = compute_cams(resnet, layer, x, [0, 0], seed=1, **kwargs)
    assert np.array_equal(a, b)
    diff = np.abs(a - c)
    assert diff.max() > 1e-3, "a different seed should change Smooth Grad-CAM++"
    assert diff.mean() < 0.05, "... but only slightly"
    plain = compute_cams(resnet, layer, x, [0, 0], method="gradcam++")
    assert np.abs(a - plain).max() > 1e-3, "with noise it should differ from Grad-CAM++"


def test_smooth_without_noise_equals_gradcam_plus_plus(resnet3):
    resnet = resnet3
    x = torch.randn(2, 3, 64, 80, generator=torch.Generator().manual_seed(6))
    layer = resnet_target_layer(resnet)
    ref = compute_cams(resnet, layer, x, [2, 0], method="gradcam++")
    for smooth_activations in (False, True):
        got = compute_cams(
            resnet,
            layer,
            x,
            [2, 0],
            method="smoothgradcam++",
            n_samples=1,
            noise_sigma=0.0,
            smooth_activations=smooth_activations,
        )
        np.testing.assert_allclose(got, ref, atol=1e-5)
    # also against pytorch-grad-cam's own class, called directly
    cam = GradCAMPlusPlus(resnet, [layer])
    direct = cam(x, [ClassifierOutputTarget(2), ClassifierOutputTarget(0)])
    cam.activations_and_grads.release()
    np.testing.assert_allclose(got, direct, atol=1e-5)

    net = BrightSquareNet()
    images, _ = square_batch(2, 64, 96, seed=8)
    ref = compute_cams(net, net.detect, images, [0, 0], method="gradcam++")
    got = compute_cams(
        net, net.detect, images, [0, 0], method="smoothgradcam++", n_samples=1, noise_sigma=0.0
    )
    np.testing.assert_allclose(got, ref, atol=1e-5)
    assert ref.max() == pytest.approx(1.0)


def _reference_smooth_gradcam_pp(model, layer, image, n, sigma, seed, smooth_activations):
    """Smooth Grad-CAM++ of one positive image, straight from the formulas in cam.py."""
    captured = {}

    def hook(module, inputs, output):
        if output.requires_grad:
            output.retain_grad()
        captured["a"] = output

    handle = layer.register_forward_hook(hook)
    try:
        gen = torch.Generator().manual_seed(seed)
        std = sigma * float(image.max() - image.min())
        grads, acts = [], []
        for _ in range(n):
            noisy = image + std * torch.randn(image.shape, generator=gen)
            model.zero_grad()
            model(noisy[None]).sum().backward()
            grads.append(captured["a"].grad[0].double())
            acts.append(captured["a"][0].detach().double())
        with torch.no_grad():
            model(image[None])
        clean = captured["a"][0].double()
    finally:
        handle.remove()
        model.zero_grad()
    g = torch.stack(grads)
    d1, d2, d3 = g.mean(0), (g**2).mean(0), (g**3).mean(0)
    a = torch.stack(acts).mean(0) if smooth_activations else clean
    alpha = d2 / (2 * d2 + a.sum((1, 2), keepdim=True) * d3 + 1e-6)
    alpha = torch.where(d2 != 0, alpha, torch.zeros_like(alpha))
    w = (alpha * d1.clamp_min(0)).sum((1, 2))
    cam = torch.relu((w[:, None, None] * a).sum(0)).numpy()
    cam = cv2.resize((cam - cam.min()) / (cam.max() - cam.min()), image.shape[:0:-1])
    return (cam - cam.min()) / (cam.max() - cam.min())


@pytest.mark.parametrize("smooth_activations", [False, True])
def test_smooth_gradcam_pp_matches_formulas(resnet, smooth_activations):
    """Pins what is averaged: D1, D2, D3 = means of g, g^2, g^3 over the noisy copies."""
    x = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(13))
    layer = resnet.layer3[-1]
    kwargs = dict(n_samples=3, noise_sigma=0.2, smooth_activations=smooth_activations)
    got = compute_cams(resnet, layer, x, [0, 0], seed=21, **kwargs)
    for i in range(2):
        ref = _reference_smooth_gradcam_pp(resnet, layer, x[i], 3, 0.2, 21, smooth_activations)
        np.testing.assert_allclose(got[i], ref, atol=1e-4)


def test_gap_linear_head_makes_noise_irrelevant(resnet):
    """Documented caveat: at ResNet's layer4 the gradient is fc.weight / (h w) for any input."""
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(9))
    layer = resnet_target_layer(resnet)
    ref = compute_cams(resnet, layer, x, [0, 0], method="gradcam++")
    noisy = compute_cams(resnet, layer, x, [0, 0], method="smoothgradcam++", n_samples=3)
    np.testing.assert_allclose(noisy, ref, atol=1e-4)
    smoothed = compute_cams(
        resnet, layer, x, [0, 0], method="smoothgradcam++", n_samples=3, smooth_activations=True
    )
    assert np.abs(smoothed - ref).max() > 1e-3


def test_resnet18_non_square_batch(resnet):
    x = torch.randn(2, 3, 96, 128, generator=torch.Generator().manual_seed(10))
    for method in CAM_METHODS:
        cams = compute_cams(
            resnet, resnet_target_layer(resnet), x, [0, 0], method=method, n_samples=2
        )
        assert cams.shape == (2, 96, 128)
        assert cams.dtype == np.float32
        assert np.isfinite(cams).all() and cams.min() >= 0.0 and cams.max() <= 1.0
        assert cams.reshape(2, -1).max(1) == pytest.approx([1.0, 1.0])


def test_model_state_is_restored_and_no_grad_context_is_fine():
    net = BrightSquareNet()
    bn = nn.BatchNorm2d(3)
    model = nn.Sequential(bn, net).train()
    net.fc.weight.requires_grad_(False)
    images, masks = square_batch(2, 64, 96, seed=11)
    stats = bn.running_mean.clone()
    with torch.no_grad():
        cams = compute_cams(model, net.features, images, [0, 0], n_samples=2)
    assert cams.shape == (2, 64, 96) and cams.max() == pytest.approx(1.0)
    assert model.training and bn.training
    assert torch.equal(bn.running_mean, stats)  # evaluated in eval mode
    assert [p.requires_grad for p in model.parameters()] == [
        p is not net.fc.weight for p in model.parameters()
    ]
    assert all(p.grad is None for p in model.parameters())
    assert not net.features._forward_hooks


def test_rejects_bad_arguments(resnet):
    net = BrightSquareNet()
    images, _ = square_batch(2, 64, 64, seed=12)
    with pytest.raises(ValueError, match="unknown CAM method"):
        compute_cams(net, net.features, images, [0, 0], method="scorecam")
    with pytest.raises(ValueError, match="got 1 classes for 2 maps"):
        compute_cams(net, net.features, images, [0], method="gradcam")
    with pytest.raises(ValueError, match="got 2 classes for 3 maps"):
        compute_cams(net, net.features, images, [0, 0], image_of=[0, 1, 1])
    with pytest.raises(ValueError, match="must index the 2 images"):
        compute_cams(net, net.features, images, [0, 0], image_of=[0, 2])
    with pytest.raises(ValueError, match="target layer 1 .* runs before target layer 0"):
        compute_cams(net, [net.features, net.detect], images, [0, 0], method="gradcam")
    with pytest.raises(ValueError, match="class indices"):
        compute_cams(net, net.features, images, [0, -1], method="gradcam")
    with pytest.raises(ValueError, match="class indices"):
        compute_cams(net, net.features, images, [0, 0.5], method="gradcam")
    with pytest.raises(ValueError):
        compute_cams(net, net.features, images, [0, 0], seed=[1, 2, 3])
    with pytest.raises(IndexError):  # the one-logit net has no class 1
        compute_cams(net, net.features, images, [0, 1], method="gradcam")
    with pytest.raises(ValueError, match="layer4"):
        resnet_target_layer(net)


CAM_CFG = {
    "method": "smoothgradcam++",
    "n_samples": 2,
    "noise_sigma": 0.1,
    "seed": 3,
    "batch_size": 8,
    "smooth_activations": True,
}


def _write_images(tmp_path, sizes):
    rng = np.random.default_rng(0)
    paths = {}
    for name, (h, w) in sizes.items():
        write_png(tmp_path / f"{name}.png", rng.integers(0, 255, (h, w, 3), np.uint8))
        paths[name] = str(tmp_path / f"{name}.png")
    return paths


def test_save_cams_writes_float16_maps_at_each_images_size(tmp_path, resnet):
    paths = _write_images(tmp_path, {"a": (64, 64), "b": (64, 64), "c": (48, 80)})
    items = [(name, path, ["lesion"]) for name, path in paths.items()]
    model, cfg, cpu = resnet, CAM_CFG, torch.device("cpu")
    peaks = save_cams(model, items, tmp_path / "cams", cfg, cpu, ["lesion"])
    assert list(peaks["name"]) == ["a", "b", "c"] and set(peaks["class"]) == {"lesion"}
    for name, (h, w) in [("a", (64, 64)), ("c", (48, 80))]:
        cam = np.load(tmp_path / "cams" / f"{name}.npy")
        assert cam.dtype == np.float16 and cam.shape == (1, h, w)
        assert 0 <= cam.min() and cam.max() <= 1
    # K = 1 is the binary workflow's CAM: Smooth Grad-CAM++ of the one logit, with the image's
    # seed, computed here straight from the class and the binary target
    x = preprocess(read_rgb(paths["c"])[None])
    direct = SmoothGradCAMPlusPlus(
        model, [model.layer4[-1]], n_samples=2, noise_sigma=0.1, seed=image_seed(3, "c"),
        smooth_activations=True,
    )  # fmt: skip
    with torch.enable_grad():
        old = direct(x.requires_grad_(True), [lambda out: out.reshape(())])[0]
    direct.activations_and_grads.release()
    old = (old - old.min()) / (old.max() - old.min())
    np.testing.assert_allclose(np.load(tmp_path / "cams" / "c.npy")[0], old, atol=1e-3)
    # an image's CAM does not depend on the batch it was in
    alone = save_cams(model, items[2:], tmp_path / "alone", cfg, cpu, ["lesion"])
    assert np.array_equal(
        np.load(tmp_path / "alone" / "c.npy"), np.load(tmp_path / "cams" / "c.npy")
    )
    assert alone.iloc[0].to_dict() == peaks.iloc[2].to_dict()
    # an empty shard (more shards than images) still has the table's columns; an image without
    # tags gets no CAM
    none = save_cams(model, [("a", paths["a"], [])], tmp_path / "none", cfg, cpu, ["lesion"])
    assert none.empty and list(none.columns) == list(peaks.columns)
    assert not (tmp_path / "none").exists()
    assert image_seed(3, "a") == image_seed(3, "a") != image_seed(3, "b") != image_seed(4, "b")
    # peak_hits reads each real label map at the peak
    space = LabelSpace(("lesion",))
    masks = {}
    for row in peaks.itertuples():
        mask = np.zeros((64, 64) if row.name != "c" else (48, 80), np.uint8)
        if row.name != "b":
            mask[row.peak_row, row.peak_col] = 1
        space.write_labels(tmp_path / f"m{row.name}.png", mask)
        masks[row.name] = str(tmp_path / f"m{row.name}.png")
    assert peak_hits(peaks, masks, space).tolist() == [True, False, True]
    # the maps of several stages are averaged: layer3 + layer4 differs from layer4 alone, and
    # naming layer4 is the default
    layer4 = {**cfg, "layers": ["layer4"]}
    named = save_cams(model, items[2:], tmp_path / "l4", layer4, "cpu", ["lesion"])
    assert np.array_equal(np.load(tmp_path / "l4" / "c.npy"), np.load(tmp_path / "cams" / "c.npy"))
    assert named.iloc[0].to_dict() == peaks.iloc[2].to_dict()
    layer34 = {**cfg, "layers": ["layer3", "layer4"]}
    save_cams(model, items[2:], tmp_path / "l34", layer34, "cpu", ["lesion"])
    assert not np.array_equal(
        np.load(tmp_path / "l34" / "c.npy"), np.load(tmp_path / "cams" / "c.npy")
    )
    with pytest.raises(ValueError, match="unknown ResNet stage 'fc'"):
        save_cams(model, items[2:], tmp_path / "fc", {**cfg, "layers": ["fc"]}, "cpu", ["lesion"])


CLASSES = ("tumor", "stroma", "lymphocytes")


def test_save_cams_maps_each_tag_of_an_image(tmp_path, resnet3):
    """K = 3: a channel per class, the map of each tag (as computed alone, where one batch
    holds two images and their three tags), zeros for the classes not in the tags; one peak
    row per (image, tag)."""
    paths = _write_images(tmp_path, {"a": (64, 64), "b": (64, 64), "c": (48, 80)})
    tags = {"a": ["tumor", "lymphocytes"], "b": ["stroma"], "c": CLASSES}
    items = [(name, paths[name], tags[name]) for name in paths]
    cpu = torch.device("cpu")
    # batches of 2 images: a and b together (three maps), c alone (another size)
    peaks = save_cams(resnet3, items, tmp_path / "k3", {**CAM_CFG, "batch_size": 2}, cpu, CLASSES)
    assert list(zip(peaks["name"], peaks["class"], strict=True)) == [
        ("a", "tumor"), ("a", "lymphocytes"), ("b", "stroma"),
        ("c", "tumor"), ("c", "stroma"), ("c", "lymphocytes"),
    ]  # fmt: skip
    for name, image_tags in tags.items():
        cams = np.load(tmp_path / "k3" / f"{name}.npy")
        assert cams.dtype == np.float16 and cams.shape == (3, *read_rgb(paths[name]).shape[:2])
        for k, cls in enumerate(CLASSES):
            if cls not in image_tags:
                assert not cams[k].any(), (name, cls)
                continue
            alone = compute_cams(
                resnet3,
                resnet3.layer4[-1],
                preprocess(read_rgb(paths[name])[None]),
                [k],
                n_samples=2,
                noise_sigma=0.1,
                seed=image_seed(3, name),
                smooth_activations=True,
            )[0]
            np.testing.assert_allclose(cams[k], alone, atol=1e-3)
            peak = peaks[(peaks["name"] == name) & (peaks["class"] == cls)].iloc[0]
            assert cams[k][peak["peak_row"], peak["peak_col"]] == cams[k].max()
        assert len({cams[k].tobytes() for k, c in enumerate(CLASSES) if c in image_tags}) == len(
            image_tags
        )  # each tag's own map


def test_window_cams_weigh_each_windows_cam_by_its_probability(tmp_path, resnet3):
    """K = 3, a 96 x 128 image, 64-px windows every 32 px (layer3): each tag's map is the mean,
    where windows overlap, of every window's CAM (as computed alone on the crop) times the
    sigmoid of that class's logit on the crop, min-max normalised; the windows' batching changes
    nothing, and one window larger than the image is the whole image's CAM."""
    paths = _write_images(tmp_path, {"c": (96, 128)})
    rgb = read_rgb(paths["c"])
    tags = [0, 2]
    cfg = {**CAM_CFG, "method": "gradcam++", "window_size": 64, "window_stride": 32}
    cfg["layers"] = ["layer3"]
    cpu = torch.device("cpu")
    items = [("c", paths["c"], [CLASSES[k] for k in tags])]
    save_cams(resnet3, items, tmp_path / "win", {**cfg, "batch_size": 3}, cpu, CLASSES)
    saved = np.load(tmp_path / "win" / "c.npy").astype(np.float32)
    assert not saved[1].any()
    x = preprocess(rgb)
    layer = [resnet3.layer3[-1]]
    total, count = np.zeros((2, 96, 128)), np.zeros((96, 128))
    for y in grid(96, 64, 32):
        for z in grid(128, 64, 32):
            crop = x[None, :, y : y + 64, z : z + 64]
            with torch.no_grad():
                prob = torch.sigmoid(resnet3(crop))[0, tags].numpy()
            cams = compute_cams(resnet3, layer, crop, tags, "gradcam++", image_of=[0, 0])
            total[:, y : y + 64, z : z + 64] += cams * prob[:, None, None]
            count[y : y + 64, z : z + 64] += 1
    expected = total / count
    lo = expected.min(axis=(1, 2), keepdims=True)
    expected = (expected - lo) / (expected.max(axis=(1, 2), keepdims=True) - lo)
    np.testing.assert_allclose(saved[tags], expected, atol=2e-3)
    one_by_one = window_cams(resnet3, layer, rgb, tags, 64, 32, {**cfg, "batch_size": 1}, "c")
    np.testing.assert_allclose(one_by_one, saved[tags], atol=2e-3)
    whole = window_cams(resnet3, layer, rgb, tags, 160, 160, cfg, "c")
    alone = compute_cams(resnet3, layer, x[None], tags, "gradcam++", image_of=[0, 0])
    np.testing.assert_allclose(whole, alone, atol=1e-5)
    with pytest.raises(ValueError, match=r"window stride must be in \[1, window size = 64\]"):
        window_cams(resnet3, layer, rgb, tags, 64, 65, cfg, "c")


def test_smooth_window_cams_are_seeded_per_window(tmp_path, resnet):
    """Smooth Grad-CAM++ in windows: the same seed gives the same maps, another seed others."""
    paths = _write_images(tmp_path, {"a": (128, 128)})
    cfg = {**CAM_CFG, "window_size": 64, "window_stride": 64}
    layer = [resnet.layer3[-1]]
    rgb = read_rgb(paths["a"])
    first = window_cams(resnet, layer, rgb, [0], 64, 64, cfg, "a")
    assert np.array_equal(first, window_cams(resnet, layer, rgb, [0], 64, 64, cfg, "a"))
    other = window_cams(resnet, layer, rgb, [0], 64, 64, {**cfg, "seed": 4}, "a")
    assert not np.allclose(first, other)


def test_the_cam_is_constant_across_each_border_strip_of_half_a_feature_cell(resnet):
    """Why the thresholded masks have straight-edged notches at the image border
    (docs/pseudo_masks.md): the map is upsampled from the layer's grid with pixel centres
    aligned (pytorch-grad-cam's cv2.resize), so within half a cell of the border (16 px for
    layer4's 32-px cells) it repeats the edge row or column; a threshold contour crosses that
    strip as a straight segment at right angles to the border."""
    x = torch.randn(1, 3, 96, 128, generator=torch.Generator().manual_seed(3))
    cam = compute_cams(resnet, resnet_target_layer(resnet), x, [0], method="gradcam")[0]
    half = 16
    for strip in (cam[:half], cam[-half:][::-1], cam[:, :half].T, cam[:, -half:][:, ::-1].T):
        assert (strip == strip[0]).all()  # every row of the strip equals the edge's
    assert not np.array_equal(cam[half], cam[half - 1])  # inside, the map varies
    assert not np.array_equal(cam[:, half], cam[:, half - 1])
