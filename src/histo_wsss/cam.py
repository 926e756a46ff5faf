"""Class activation maps (CAMs) of a multi-label image classifier, one per (image, class).

The classifier returns K logits per image (output shape ``(B, K)``; K = 1 for the binary case).
The score whose evidence a CAM shows (the "ground-truth class" score of the paper, §2.2) is the
logit ``S = y_c`` of a class ``c`` in the image's tags (pytorch-grad-cam's
``ClassifierOutputTarget(c)``; for K = 1 the one logit of the positive class). A batch is a
list of (image, class) pairs: an image with two tags is two targets.

Notation: ``A_k(i, j)`` is channel ``k`` of the target layer's output (for torchvision ResNets
``model.layer4[-1]``, see :func:`resnet_target_layer`), ``g_k(i, j) = dS / dA_k(i, j)``.
Every method returns ``ReLU(sum_k w_k A_k)`` bilinearly upsampled to the input size and min-max
normalised per image to [0, 1]; they differ in the channel weights ``w_k``:

``"gradcam"`` (Selvaraju et al. 2017; ``pytorch_grad_cam.GradCAM``)
    ``w_k = mean_ij g_k(i, j)``.

``"gradcam++"`` (Chattopadhyay et al. 2018; ``pytorch_grad_cam.GradCAMPlusPlus``)
    ``w_k = sum_ij alpha_k(i, j) ReLU(g_k(i, j))`` with
    ``alpha_k(i, j) = g^2 / (2 g^2 + sum_ab A_k(a, b) g^3)`` (``0`` where ``g = 0``). The higher
    derivatives are the powers of the first one: the exponential-score trick of the paper with
    its ``exp(S)`` factor dropped (as pytorch-grad-cam does).

``"smoothgradcam++"`` (Omeiza et al. 2019; :class:`SmoothGradCAMPlusPlus`)
    Grad-CAM++ with the three derivative terms replaced by their averages over ``n`` noisy
    copies ``x_m = x + eps_m`` of the input, ``eps_m ~ N(0, sigma_x^2)`` i.i.d. per element with
    ``sigma_x = noise_sigma * (max(x) - min(x))`` (SmoothGrad's "noise level", the range taken
    over all channels and pixels of that one image)::

        D1 = mean_m g_m,   D2 = mean_m g_m^2,   D3 = mean_m g_m^3     (elementwise, per image)
        alpha_k(i, j) = D2 / (2 D2 + sum_ab A_k(a, b) D3 + 1e-6)      (0 where D2 = 0)
        w_k = sum_ij alpha_k(i, j) ReLU(D1_k(i, j))

    where ``g_m`` is the gradient of ``S(x_m)`` w.r.t. the target layer's output at ``x_m``.
    ``A`` is the target layer's output for the CLEAN input (as in torch-cam's
    ``SmoothGradCAMpp``, whose docstring restates the paper's equations), or, with
    ``smooth_activations=True``, its mean over the noisy copies. The numerator is ``D2``
    (Grad-CAM++'s); torch-cam notes that the paper prints ``D1`` there and corrects it the same
    way. The ``eps`` and the ``D2 = 0`` mask are those of pytorch-grad-cam's Grad-CAM++, so
    ``n_samples=1, noise_sigma=0`` reproduces ``"gradcam++"`` exactly. The map is computed once
    from the averaged terms (not an average of per-sample maps).

    Caveat: when the target layer feeds the logit only through global average pooling and a
    linear layer (ResNet ``layer4[-1]`` -> ``avgpool`` -> ``fc``), ``g`` equals
    ``fc.weight / (h w)`` whatever the input, so the noise changes nothing and, with clean
    activations, Smooth Grad-CAM++ equals Grad-CAM++ (at ``n_samples`` times the cost).
    ``smooth_activations=True`` is the variant in which the noise acts on such models.

Noise and seeding: each image has its own ``torch.Generator`` seeded with ``seed`` (an ``int``
shared by every image, or one seed per image) and draws its ``n_samples`` noise tensors in order
on the CPU. A map therefore depends only on the image, its class, the model and its seed, not
on the batch it is computed in nor on ``samples_per_pass``; an image's tags share its noise.

Cost: the graph starts at the first target layer, not at the input. The layers before it run
without autograd, once per noisy copy of each image however many tags the image has; their
output is then copied once per (image, class) pair, and only the rest of the network (after
ResNet's ``layer4``: pooling and the linear head; after ``layer3``: ``layer4`` too) runs
forward and backward per pair. A batch of ``N`` images costs
``ceil(n_samples / samples_per_pass)`` such passes of ``samples_per_pass * N`` noisy images
(default 1: memory of one batch), plus one gradient-free pass of the clean images, which also
gives their logits (:func:`cams_and_logits`). The weights' ``requires_grad`` is off meanwhile:
frozen models work, and no weight gradients are computed or left in ``.grad``.

Window CAMs (:func:`window_cams`, ``cam.window_size``): any of the methods above on each
window of an image, weighted by the classifier's probability on the window and averaged where
windows overlap, for a classifier that learnt from patches of that size.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from pytorch_grad_cam import GradCAM, GradCAMPlusPlus
from pytorch_grad_cam.base_cam import BaseCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from scipy.special import expit
from torch import nn

from histo_wsss.batching import same_size_runs
from histo_wsss.classes import LabelSpace
from histo_wsss.classifier import preprocess
from histo_wsss.io import atomic_path, read_rgb
from histo_wsss.logs import progress
from histo_wsss.patches import grid

__all__ = [
    "CAM_METHODS",
    "SmoothGradCAMPlusPlus",
    "cams_and_logits",
    "compute_cams",
    "save_cams",
    "window_cams",
    "RESNET_LAYERS",
    "resnet_target_layer",
]

CAM_METHODS = ("gradcam", "gradcam++", "smoothgradcam++")
PEAK_COLUMNS = ("name", "class", "peak_row", "peak_col")


class SmoothGradCAMPlusPlus(BaseCAM):
    """Smooth Grad-CAM++ (Omeiza et al. 2019) on pytorch-grad-cam's :class:`BaseCAM`.

    See the module docstring for exactly what is averaged. ``seed`` is an ``int`` (every image's
    generator is seeded with it) or a sequence with one seed per image of the next call; fresh
    generators are made on every call, so repeated calls give identical maps.
    """

    def __init__(
        self,
        model: nn.Module,
        target_layers: list[nn.Module],
        n_samples: int = 8,
        noise_sigma: float = 0.15,
        seed: int | Sequence[int] = 0,
        samples_per_pass: int = 1,
        smooth_activations: bool = False,
        reshape_transform=None,
    ) -> None:
        super().__init__(model, target_layers, reshape_transform=reshape_transform)
        if n_samples < 1:
            raise ValueError(f"n_samples must be >= 1, got {n_samples}")
        if noise_sigma < 0:
            raise ValueError(f"noise_sigma must be >= 0, got {noise_sigma}")
        if samples_per_pass < 1:
            raise ValueError(f"samples_per_pass must be >= 1, got {samples_per_pass}")
        self.n_samples = int(n_samples)
        self.noise_sigma = float(noise_sigma)
        self.seed = seed
        self.samples_per_pass = int(samples_per_pass)
        self.smooth_activations = bool(smooth_activations)
        self._moments: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    def _generators(self, batch_size: int) -> list[torch.Generator]:
        seeds = (
            [int(self.seed)] * batch_size
            if isinstance(self.seed, int | np.integer)
            else [int(s) for s in self.seed]
        )
        if len(seeds) != batch_size:
            raise ValueError(f"got {len(seeds)} seeds for a batch of {batch_size} images")
        return [torch.Generator(device="cpu").manual_seed(s) for s in seeds]

    def forward(
        self,
        input_tensor: torch.Tensor,
        targets: list | None,
        eigen_smooth: bool = False,
    ) -> np.ndarray:
        if targets is None:
            raise ValueError("SmoothGradCAMPlusPlus needs explicit targets (one per map)")
        input_tensor = input_tensor.to(self.device)
        batch = input_tensor.shape[0]
        gens = self._generators(batch)
        flat = input_tensor.detach().reshape(batch, -1)
        std = (self.noise_sigma * (flat.amax(1) - flat.amin(1))).cpu()
        std = std.reshape((batch,) + (1,) * (input_tensor.ndim - 1))
        shape = tuple(input_tensor.shape[1:])

        sums: list[list[torch.Tensor]] | None = None  # per layer: [sum g, sum g^2, sum g^3, sum A]
        done = 0
        while done < self.n_samples:
            k = min(self.samples_per_pass, self.n_samples - done)
            # noise[m][i] is image i's (done + m)-th draw from its own generator
            noise = torch.stack(
                [torch.stack([torch.randn(shape, generator=g) for g in gens]) for _ in range(k)]
            )
            noise = (noise * std).to(device=input_tensor.device, dtype=input_tensor.dtype)
            noisy = (input_tensor.unsqueeze(0) + noise).reshape((k * batch,) + shape)
            outputs = self.activations_and_grads(noisy)  # k * (maps per pass) rows
            if len(targets) * k != len(outputs):
                raise ValueError(f"got {len(targets)} targets for {len(outputs) // k} maps")
            self.model.zero_grad()
            loss = sum(target(out) for target, out in zip(targets * k, outputs, strict=True))
            loss.backward()
            grads = self.activations_and_grads.gradients
            acts = self.activations_and_grads.activations
            if len(grads) != len(self.target_layers):
                raise RuntimeError(
                    "no gradient reached a target layer: is the score connected to it?"
                )
            step = []
            for g, a in zip(grads, acts, strict=True):
                g = g.reshape((k, len(targets)) + tuple(g.shape[1:]))
                g2 = g * g
                step.append([g.sum(0), g2.sum(0), (g2 * g).sum(0)])
                if self.smooth_activations:
                    step[-1].append(a.reshape(g.shape).sum(0))
            if sums is None:
                sums = step
            else:
                for acc, new in zip(sums, step, strict=True):
                    for t, u in zip(acc, new, strict=True):
                        t.add_(u)
            done += k
        del outputs, loss

        assert sums is not None
        self._moments = [tuple((t / self.n_samples).numpy() for t in acc[:3]) for acc in sums]
        with torch.no_grad():  # the clean image's logits and activations, no gradients
            self.outputs = self.activations_and_grads(input_tensor)
        if self.smooth_activations:
            self.activations_and_grads.gradients = []
            self.activations_and_grads.activations = [acc[3] / self.n_samples for acc in sums]
        # pytorch-grad-cam's per-layer map, ReLU, min-max and upsampling, then layer mean
        cam_per_layer = self.compute_cam_per_layer(input_tensor, targets, eigen_smooth)
        return self.aggregate_multi_layers(cam_per_layer)

    def get_cam_weights(self, input_tensor, target_layer, targets, activations, grads):
        index = next(i for i, layer in enumerate(self.target_layers) if layer is target_layer)
        d1, d2, d3 = self._moments[index]
        spatial_axes = tuple(range(2, activations.ndim))
        sum_activations = np.sum(activations, axis=spatial_axes, keepdims=True)
        aij = d2 / (2 * d2 + sum_activations * d3 + 1e-6)
        aij = np.where(d2 != 0, aij, 0)
        return np.sum(np.maximum(d1, 0) * aij, axis=spatial_axes)


RESNET_LAYERS = ("layer1", "layer2", "layer3", "layer4")


def resnet_target_layer(model: nn.Module, name: str = "layer4") -> nn.Module:
    """The last residual block of stage ``name`` of a torchvision ResNet (by default
    ``model.layer4[-1]``, the paper's; ``layer3`` maps at twice the resolution)."""
    if name not in RESNET_LAYERS:
        raise ValueError(f"unknown ResNet stage {name!r}; choose from {RESNET_LAYERS}")
    stage = getattr(model, name, None)
    if stage is None:
        raise ValueError(
            f"{type(model).__name__} has no attribute '{name}': not a torchvision ResNet"
        )
    return stage[-1]


def _minmax(maps: np.ndarray) -> np.ndarray:
    """Per-map min-max normalisation to [0, 1]; a constant (e.g. all-zero) map becomes zeros.

    pytorch-grad-cam already min-max scales, but as ``(m - min) / (max + 1e-7)``, which is not
    exactly 1 at the maximum and shrinks maps whose raw values are tiny; scaling again is exact.
    """
    maps = np.asarray(maps, dtype=np.float64)
    if not np.isfinite(maps).all():
        raise RuntimeError("non-finite CAM values (check the model's outputs and gradients)")
    lo = maps.min(axis=(1, 2), keepdims=True)
    rng = maps.max(axis=(1, 2), keepdims=True) - lo
    out = np.divide(maps - lo, rng, out=np.zeros_like(maps), where=rng > 0)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


class _GraphCut:
    """Forward hooks that start the autograd graph at the first target layer and copy its
    output once per (image, class) pair (see the module docstring's "Cost").

    ``pairs[p]`` is the image of pair ``p`` among ``n_images``; a batch of ``r * n_images``
    rows (``r`` noisy copies, copy-major) becomes ``r * len(pairs)`` rows. Registered before
    pytorch-grad-cam's own hooks (``prepend``), so those record the per-pair tensors. The other
    target layers must come after the first in the forward pass: one that runs before it would
    get no gradient, which is an error naming it.
    """

    def __init__(self, layers: Sequence[nn.Module], pairs: Sequence[int], n_images: int) -> None:
        self.pairs = torch.as_tensor(list(pairs), dtype=torch.long)
        self.n_images = n_images
        self.handles = [layers[0].register_forward_hook(self._cut, prepend=True)]
        self.handles += [
            layer.register_forward_hook(self._check(i)) for i, layer in enumerate(layers[1:], 1)
        ]

    def _cut(self, module, inputs, output: torch.Tensor) -> torch.Tensor:
        copies = output.shape[0] // self.n_images
        offsets = self.n_images * torch.arange(copies)[:, None]
        rows = (offsets + self.pairs[None]).reshape(-1).to(output.device)
        return output.detach()[rows].requires_grad_(True)

    @staticmethod
    def _check(position: int):
        def hook(module, inputs, output: torch.Tensor) -> None:
            if torch.is_grad_enabled() and not output.requires_grad:
                raise ValueError(
                    f"target layer {position} ({type(module).__name__}) runs before target "
                    "layer 0: list the target layers in forward order"
                )

        return hook

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def compute_cams(*args, **kwargs) -> np.ndarray:
    """The maps of :func:`cams_and_logits` (same arguments)."""
    return cams_and_logits(*args, **kwargs)[0]


def cams_and_logits(
    model: nn.Module,
    target_layer: nn.Module | Sequence[nn.Module],
    images: torch.Tensor,
    classes: Sequence[int],
    method: str = "smoothgradcam++",
    n_samples: int = 8,
    noise_sigma: float = 0.15,
    seed: int | Sequence[int] = 0,
    samples_per_pass: int = 1,
    smooth_activations: bool = False,
    image_of: Sequence[int] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """CAMs of a batch of (image, class) pairs: pair ``p``'s map is that of image
    ``image_of[p]`` for the logit of class ``classes[p]`` (pytorch-grad-cam's
    ``ClassifierOutputTarget``). An image with several tags is passed once and listed in
    ``image_of`` once per tag: its forward passes are shared by its maps.

    Args:
        model: classifier with output shape ``(B, K)``; used in eval mode (BatchNorm running
            statistics). Its train/eval mode and its parameters' ``requires_grad`` flags are
            restored on return; no hooks are left on it.
        target_layer: module whose output is ``A``, or a list of modules in forward order
            (pytorch-grad-cam pairs layers with hooked tensors by position) whose maps are
            averaged.
        images: ``(N, 3, H, W)`` float tensor, already normalised as for the classifier; moved to
            the model's device.
        classes: ``P`` class indices in ``0 .. K - 1``, one per map.
        method: one of :data:`CAM_METHODS`.
        n_samples, noise_sigma, seed, samples_per_pass, smooth_activations: Smooth Grad-CAM++
            settings (ignored by the other methods), see the module docstring; ``seed`` is per
            image (``N`` seeds, or one ``int``).
        image_of: ``P`` indices into ``images``; ``None``: map ``i`` is image ``i``'s
            (``P = N``).

    Returns:
        ``np.float32`` array ``(P, H, W)`` in [0, 1], each map min-max normalised (max 1 unless
        the map is constant, e.g. all zero where no channel supports the score), and the
        ``(P,)`` float32 logits of each pair's class on the clean image (no noise), from the
        pass the maps come from: :func:`window_cams` weighs its windows by them.
    """
    if method not in CAM_METHODS:
        raise ValueError(f"unknown CAM method {method!r}; choose one of {CAM_METHODS}")
    if images.ndim != 4:
        raise ValueError(f"images must be (N, C, H, W), got shape {tuple(images.shape)}")
    if any(isinstance(c, bool) or not isinstance(c, int | np.integer) or c < 0 for c in classes):
        raise ValueError(f"classes must be class indices (integers >= 0), got {list(classes)}")
    n_images = images.shape[0]
    image_of = range(n_images) if image_of is None else image_of
    if len(classes) != len(image_of):
        raise ValueError(f"got {len(classes)} classes for {len(image_of)} maps")
    if not all(isinstance(i, int | np.integer) and 0 <= i < n_images for i in image_of):
        raise ValueError(f"image_of must index the {n_images} images, got {list(image_of)}")
    layers = [target_layer] if isinstance(target_layer, nn.Module) else list(target_layer)
    targets = [ClassifierOutputTarget(int(c)) for c in classes]

    params = list(model.parameters())
    device = params[0].device if params else images.device
    was_training = model.training
    flags = [p.requires_grad for p in params]
    x = images.detach().to(device)
    cut = _GraphCut(layers, image_of, n_images)
    try:
        for p in params:
            p.requires_grad_(False)
        if method == "gradcam":
            cam = GradCAM(model, layers)
        elif method == "gradcam++":
            cam = GradCAMPlusPlus(model, layers)
        else:
            cam = SmoothGradCAMPlusPlus(
                model,
                layers,
                n_samples=n_samples,
                noise_sigma=noise_sigma,
                seed=seed,
                samples_per_pass=samples_per_pass,
                smooth_activations=smooth_activations,
            )
        try:
            with torch.enable_grad():
                maps = cam(x, targets)
            # one row per pair: the graph cut copies an image's row for each of its classes
            logits = cam.outputs.detach()[torch.arange(len(targets)), list(classes)]
        finally:
            cam.activations_and_grads.release()
            cam.outputs = None  # pytorch-grad-cam keeps the last outputs (and their graph)
    finally:
        cut.remove()
        for p, flag in zip(params, flags, strict=True):
            p.requires_grad_(flag)
        model.train(was_training)
    return _minmax(maps), logits.float().cpu().numpy()


def image_seed(seed: int, name: str) -> int:
    """Noise seed of one image: a function of the config seed and the image name only, so an
    image's CAM does not depend on its shard, its batch or the other images."""
    return int(np.random.SeedSequence([seed, zlib.crc32(name.encode())]).generate_state(1)[0])


def _cam_kwargs(cfg: dict) -> dict:
    """:func:`compute_cams` settings of a ``cam`` config section."""
    keys = ("method", "n_samples", "noise_sigma", "smooth_activations")
    return {key: cfg[key] for key in keys}


def window_cams(
    model: nn.Module,
    layers: Sequence[nn.Module],
    image: np.ndarray,
    classes: Sequence[int],
    size: int,
    stride: int,
    cfg: dict,
    name: str,
) -> np.ndarray:
    """Window CAMs of one image: the CAM of each ``size`` x ``size`` window (every ``stride``
    px, the last at the border; :func:`histo_wsss.patches.grid`) for each of ``classes``,
    times the classifier's sigmoid probability of that class on the window, averaged where
    windows overlap, then min-max normalised per class (as :func:`compute_cams`).

    Why: a classifier trained on patches (``classifier.train_on: patches``) has seen only
    patch-size inputs; on a whole image one map must share its [0, 1] range between every
    object, while per window it ranks within the window and the probability says whether the
    window holds the class at all (docs/results.md, the gland protocol). A side shorter than
    ``size`` is one window of that side. ``cfg`` is the ``cam`` section: ``batch_size``
    windows share a pass; Smooth Grad-CAM++'s noise of a window is seeded from ``cfg["seed"]``,
    the image's ``name`` and the window's corner. Returns ``(len(classes), H, W)`` float32.
    """
    if not 1 <= stride <= size:
        raise ValueError(f"window stride must be in [1, window size = {size}], got {stride}")
    height, width = image.shape[:2]
    side = (min(size, height), min(size, width))
    corners = [(y, x) for y in grid(height, side[0], stride) for x in grid(width, side[1], stride)]
    x_image = preprocess(image)
    total = np.zeros((len(classes), height, width))
    count = np.zeros((height, width))
    step = cfg["batch_size"]
    for start in range(0, len(corners), step):
        at = corners[start : start + step]
        crops = torch.stack([x_image[:, y : y + side[0], x : x + side[1]] for y, x in at])
        maps, logits = cams_and_logits(
            model,
            layers,
            crops,
            [k for _ in at for k in classes],
            seed=[image_seed(cfg["seed"], f"{name}_y{y}_x{x}") for y, x in at],
            image_of=[i for i in range(len(at)) for _ in classes],
            **_cam_kwargs(cfg),
        )
        maps = maps.reshape(len(at), len(classes), *side)
        probs = expit(logits.reshape(len(at), len(classes)))
        for (y, x), window, prob in zip(at, maps, probs, strict=True):
            total[:, y : y + side[0], x : x + side[1]] += window * prob[:, None, None]
            count[y : y + side[0], x : x + side[1]] += 1
    return _minmax(total / count)


def _image_cams(model, layers, tagged, cfg):
    """``(name, image, tags, maps)`` of whole images, batched by size (:func:`save_cams`)."""
    for batch in same_size_runs(tagged, cfg["batch_size"], lambda item: item[1].shape):
        names, images, targets = zip(*batch, strict=True)
        maps = compute_cams(
            model,
            layers,
            preprocess(np.stack(images)),
            [k for tags in targets for k in tags],
            seed=[image_seed(cfg["seed"], n) for n in names],
            image_of=[i for i, tags in enumerate(targets) for _ in tags],
            **_cam_kwargs(cfg),
        )
        for name, image, tags in batch:
            yield name, image, tags, maps[: len(tags)]
            maps = maps[len(tags) :]


def save_cams(
    model: nn.Module,
    items: Sequence[tuple[str, str, Sequence[str]]],
    out_dir: str | Path,
    cfg: dict,
    device: torch.device,
    classes: Sequence[str],
) -> pd.DataFrame:
    """CAMs of ``(name, image path, tags)`` items, one per class of the image's tags, saved as
    float16 ``(K, H, W)`` ``.npy`` files (channel ``k``: class ``classes[k]``; zeros for the
    classes not in the tags).

    ``cfg`` is the ``cam`` config section (``layers``: the ResNet stages whose maps are
    averaged, ``["layer4"]`` when absent, in any order; ``window_size``: when set, window CAMs,
    :func:`window_cams`, with ``window_stride``, half the size when null). Every image is read
    and mapped at its own size; without windows, consecutive images of one size share a batch
    of up to ``cfg["batch_size"]`` images, each with all its tags (:func:`compute_cams` shares
    an image's forward passes between its tags) and its noise seed (:func:`image_seed`); an
    item without tags gets no file. Returns one row per (image, tag): name, class and the
    peak's row and column.
    """
    model.to(device).eval()
    stages = {name: resnet_target_layer(model, name) for name in cfg.get("layers", ["layer4"])}
    layers = [stages[name] for name in RESNET_LAYERS if name in stages]  # forward order
    index = {c: k for k, c in enumerate(classes)}
    out_dir = Path(out_dir)
    size = cfg.get("window_size")
    rows = []

    def tagged():
        for name, path, tags in progress(items, "cams", "img"):
            if tags:
                yield name, read_rgb(path), [index[tag] for tag in tags]

    if size:
        stride = cfg.get("window_stride") or max(1, size // 2)
        mapped = (
            (name, image, tags, window_cams(model, layers, image, tags, size, stride, cfg, name))
            for name, image, tags in tagged()
        )
    else:
        mapped = _image_cams(model, layers, tagged(), cfg)
    for name, image, tags, maps in mapped:
        stack = np.zeros((len(classes), *image.shape[:2]), np.float16)
        for k, cam in zip(tags, maps, strict=True):
            stack[k] = cam
            row, col = np.unravel_index(int(np.argmax(cam)), cam.shape)
            rows.append({"name": name, "class": classes[k], "peak_row": row, "peak_col": col})
        with atomic_path(out_dir / f"{name}.npy") as tmp:
            np.save(tmp, stack)
    return pd.DataFrame(rows, columns=PEAK_COLUMNS)


def peak_hits(peaks: pd.DataFrame, masks: dict[str, str], space: LabelSpace) -> pd.Series:
    """Whether each CAM's peak (``peak_row``, ``peak_col``) lies inside its class's label in
    the image's real label map (``masks``: working-scale masks, :meth:`LabelSpace.read_labels`)."""
    label = {c: k + 1 for k, c in enumerate(space.classes)}
    hits, last = [], (None, None)
    for name, cls, row, col in zip(*(peaks[c] for c in PEAK_COLUMNS), strict=True):
        if name != last[0]:  # an image's rows are adjacent: read its map once
            last = (name, space.read_labels(masks[name]))
        hits.append(bool(last[1][row, col] == label[cls]))
    return pd.Series(hits, index=peaks.index, dtype=bool)


def peak_summary(
    split: pd.DataFrame, peaks: pd.DataFrame, masks: dict[str, str], space: LabelSpace
) -> dict:
    """How well the CAMs localise: per split, the share of CAMs whose peak lies inside their
    class's real label (``share``, over every (image, tag) CAM; K = 1: the share of positive
    images), ``n_positive`` tagged images, and per class its CAMs' ``n_images`` and ``share``.

    ``split`` is :func:`histo_wsss.splits.read_split`'s table, ``peaks`` the rows of
    :func:`save_cams`, ``masks`` the real masks at the working scale (empty: no real masks, no
    ``peak_in_mask``). ``n_images`` counts every image, ``n_cams`` every (image, tag) CAM.
    """
    summary = {"n_images": len(split), "n_cams": len(peaks), "has_ground_truth": bool(masks)}
    if not masks:
        return summary
    table = peaks.merge(split[["name", "split"]], on="name", how="left", validate="m:1")
    table["peak_in_mask"] = peak_hits(table, masks, space)
    tagged = split[split["positive"] == 1].groupby("split").size()

    def share(rows: pd.DataFrame) -> float:
        return round(float(rows["peak_in_mask"].mean()), 4)

    summary["peak_in_mask"] = {
        part: {
            "n_positive": int(tagged[part]),
            "share": share(rows),
            "classes": {
                c: {"n_images": len(of_class), "share": share(of_class)}
                for c, of_class in rows.groupby("class", sort=False)
            },
        }
        for part, rows in table.groupby("split")
    }
    return summary
