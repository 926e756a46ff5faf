"""Self-supervised pretraining of a torchvision ResNet encoder on a dataset's own images.

Why: the paper starts its networks from ImageNet weights, which offline sites (and this
project's machines) cannot download; self-supervised pretraining on the target tissue itself
gives the classifier and the segmentation encoder a start that has already seen H&E, without a
label. The output is a plain torchvision ResNet state dict, so it loads wherever a local weights
file does (``classifier.weights``, ``segmentation.encoder_weights``; the workflow's keyword for
it is ``pretrained``).

Everything is keyed by a plain config dict (the workflow's ``pretrain`` section without
``extra_images``), merged over :data:`DEFAULTS` by :func:`resolve_config`. ``method`` names the
recipe; one is implemented:

``simclr`` (Chen et al., ICML 2020, "A Simple Framework for Contrastive Learning of Visual
Representations")
    * every image of a batch gives two random views (:class:`Views`); the encoder (the ResNet
      without ``fc``: global-average-pooled features) and a projection head -- the paper's
      2-layer MLP, ``Linear -> BatchNorm -> ReLU -> Linear`` as in its code -- map each view to
      ``z``; the head is discarded after training;
    * NT-Xent loss (:func:`nt_xent`) over the ``2N`` views of a batch at ``temperature``;
    * AdamW (``lr``, ``weight_decay``) with a cosine decay over all steps: the paper's LARS is
      made for batches of thousands, and a CPU or single GPU trains with tens.

Views suited to H&E (:class:`Views`): a ``crop_size`` crop at the image's own resolution
(reflect-padded where the image is smaller -- padding, not an error, as the classifier's crops),
then SimCLR's random resized crop of that window (area ``min_scale``..1, aspect 3/4..4/3) back
to ``crop_size``, horizontal and vertical flips and a random 90-degree rotation (tissue has no
orientation), a stain jitter in haematoxylin-eosin-DAB space (:class:`HEDJitter`, Tellez et al.
2018), a mild colour jitter (p = 0.8, as SimCLR) and a Gaussian blur (SimCLR's sigma 0.1..2).
SimCLR's random greyscale is left out: the stains' colours are what H&E is read by.

Training (:func:`train`) is seeded and deterministic on the CPU: the batches of an epoch come
from ``(seed, epoch)``, each view from ``(seed, epoch, image index, view)``, so the same config
and images give the same encoder bytes and the same metrics apart from the timing columns.
One log line per epoch (loss, images/s, share of the time spent waiting for data); no progress
bar.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import albumentations as A
import cv2
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
import torchvision
from skimage.color import hed2rgb, rgb2hed
from torch import nn
from torch.utils.data import DataLoader, Dataset

from histo_wsss.batching import size_batches
from histo_wsss.classifier import ARCHS, preprocess
from histo_wsss.device import resolve_device
from histo_wsss.io import write_csv
from histo_wsss.training import (
    LoaderClock,
    check_augment,
    deterministic,
    device_label,
    is_int,
    is_num,
    merge_config,
    require,
    save_checkpoint,
    seed_transforms,
)

__all__ = [
    "DEFAULTS",
    "METHODS",
    "METRICS_COLUMNS",
    "HEDJitter",
    "SimCLR",
    "Views",
    "nt_xent",
    "resolve_config",
    "train",
]

_log = logging.getLogger(__name__)

METHODS = ("simclr",)
METRICS_COLUMNS = ("epoch", "loss", "lr", "images_per_s", "waiting_share", "seconds")

DEFAULTS: dict = {
    "method": "simclr",
    "arch": "resnet18",
    "epochs": 20,
    "batch_size": 32,
    "crop_size": 224,
    "lr": 0.001,
    "weight_decay": 0.0001,
    "temperature": 0.2,
    "projection_dim": 128,
    "projection_hidden_dim": None,
    "views": {
        "min_scale": 0.2,
        "flip": True,
        "rotate90": True,
        "stain_scale": 0.1,
        "stain_shift": 0.02,
        "brightness": 0.2,
        "contrast": 0.2,
        "saturation": 0.2,
        "hue": 0.02,
        "blur": 0.5,
    },
    "seed": 0,
    "device": "auto",
    "num_workers": 0,
}


# --------------------------------------------------------------------------------------------
# Config


def resolve_config(cfg: Mapping | None = None) -> dict:
    """Merge ``cfg`` over :data:`DEFAULTS` (``views`` key by key) and validate the values;
    ``ValueError`` naming an unknown key or an invalid value."""
    out = merge_config("pretrain", cfg, DEFAULTS)

    def check(ok: bool, key: str, what: str) -> None:
        value = out["views"][key.split(".", 1)[1]] if key.startswith("views.") else out[key]
        require("pretrain", ok, key, value, what)

    check(out["method"] in METHODS, "method", f"one of {METHODS}")
    check(out["arch"] in ARCHS, "arch", f"one of {ARCHS}")
    check(is_int(out["epochs"]) and out["epochs"] >= 1, "epochs", "an integer >= 1")
    check(
        is_int(out["batch_size"]) and out["batch_size"] >= 2,
        "batch_size",
        "an integer >= 2 (NT-Xent contrasts each view with the other views of its batch)",
    )
    check(is_int(out["crop_size"]) and out["crop_size"] >= 32, "crop_size", "an integer >= 32")
    for key in ("lr", "temperature"):
        check(is_num(out[key]) and out[key] > 0, key, "a number > 0")
    check(is_num(out["weight_decay"]) and out["weight_decay"] >= 0, "weight_decay", "a number >= 0")
    dim = out["projection_dim"]
    check(is_int(dim) and dim >= 1, "projection_dim", "an integer >= 1")
    hidden = out["projection_hidden_dim"]
    check(
        hidden is None or (is_int(hidden) and hidden >= 1),
        "projection_hidden_dim",
        "an integer >= 1 or null (the encoder's feature width)",
    )
    views = out["views"]
    check_augment("pretrain", views)
    check(
        is_num(views["min_scale"]) and 0 < views["min_scale"] <= 1, "views.min_scale", "in (0, 1]"
    )
    for key in ("stain_scale", "stain_shift"):
        check(is_num(views[key]) and 0 <= views[key] < 1, f"views.{key}", "in [0, 1)")
    check(is_num(views["blur"]) and 0 <= views["blur"] <= 1, "views.blur", "a probability")
    check(is_int(out["seed"]) and out["seed"] >= 0, "seed", "an integer >= 0")
    check(isinstance(out["device"], str), "device", "a string")
    workers = out["num_workers"]
    check(is_int(workers) and workers >= 0, "num_workers", "an integer >= 0")
    return out


# --------------------------------------------------------------------------------------------
# Views


class HEDJitter(A.ImageOnlyTransform):
    """Stain jitter in haematoxylin-eosin-DAB space (Tellez et al., "Whole-slide mitosis
    detection in H&E breast histology...", IEEE TMI 2018): the image is unmixed with
    ``skimage.color.rgb2hed`` (Ruifrok & Johnston's colour deconvolution), each stain channel
    ``c`` becomes ``a * c + b`` with ``a ~ U(1 - scale, 1 + scale)``, ``b ~ U(-shift, shift)``,
    and ``hed2rgb`` mixes it back. Unlike an RGB colour jitter it varies the stains the way
    staining protocols and scanners do. uint8 RGB in and out."""

    def __init__(self, scale: float, shift: float, p: float = 1.0) -> None:
        super().__init__(p=p)
        self.scale, self.shift = scale, shift

    def get_params(self) -> dict:
        rng = self.random_generator
        return {
            "factors": rng.uniform(1 - self.scale, 1 + self.scale, 3),
            "offsets": rng.uniform(-self.shift, self.shift, 3),
        }

    def apply(
        self, img: np.ndarray, factors: np.ndarray, offsets: np.ndarray, **params
    ) -> np.ndarray:
        rgb = hed2rgb(rgb2hed(img) * factors + offsets)  # floats in [0, 1]
        return np.rint(rgb * 255).astype(np.uint8)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("scale", "shift")


class Views:
    """The random views of an image for contrastive pretraining (see the module docstring),
    each drawn from its own seeds: ``views(seeds, image)`` -> uint8 ``crop_size`` square."""

    def __init__(self, cfg: Mapping, crop_size: int) -> None:
        ops: list = [
            A.RandomCrop(
                crop_size, crop_size, pad_if_needed=True, border_mode=cv2.BORDER_REFLECT_101
            ),
            A.RandomResizedCrop((crop_size, crop_size), scale=(cfg["min_scale"], 1.0), p=1.0),
        ]
        if cfg["flip"]:
            ops += [A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5)]
        if cfg["rotate90"]:
            ops.append(A.RandomRotate90(p=1.0))
        if cfg["stain_scale"] > 0 or cfg["stain_shift"] > 0:
            ops.append(HEDJitter(cfg["stain_scale"], cfg["stain_shift"], p=1.0))
        jitter = {k: cfg[k] for k in ("brightness", "contrast", "saturation", "hue")}
        if any(v > 0 for v in jitter.values()):
            ops.append(A.ColorJitter(**jitter, p=0.8))
        if cfg["blur"] > 0:
            ops.append(A.GaussianBlur(blur_limit=0, sigma_limit=(0.1, 2.0), p=cfg["blur"]))
        self.transform = A.Compose(ops)

    def __call__(self, seeds: Sequence[int], image: np.ndarray) -> np.ndarray:
        seed_transforms(self.transform, *seeds)
        return self.transform(image=image)["image"]


class _PairDataset(Dataset):
    """In-memory uint8 images -> two normalised views of one image (ImageNet mean/std, as the
    classifier and the segmentation network see their inputs); view ``v`` of item ``index`` in
    ``epoch`` is seeded from ``(seed, epoch, index, v)``."""

    def __init__(self, images: Sequence[np.ndarray], views: Views, seed: int) -> None:
        self.images, self.views, self.seed = images, views, seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = self.images[index]
        first, second = (self.views((self.seed, self.epoch, index, v), image) for v in (0, 1))
        return preprocess(first), preprocess(second)


# --------------------------------------------------------------------------------------------
# Model and loss


class SimCLR(nn.Module):
    """A torchvision ResNet without its ``fc`` (``encoder``) and SimCLR's projection head
    (``head``: Linear -> BatchNorm -> ReLU -> Linear to ``projection_dim``; the hidden width
    is the encoder's feature width unless given)."""

    def __init__(self, arch: str, projection_dim: int, hidden_dim: int | None = None) -> None:
        super().__init__()
        if arch not in ARCHS:
            raise ValueError(f"unknown arch {arch!r}; choose one of {ARCHS}")
        self.encoder = torchvision.models.get_model(arch, weights=None)  # never downloads
        width = self.encoder.fc.in_features
        self.encoder.fc = nn.Identity()
        hidden = hidden_dim or width
        self.head = nn.Sequential(
            nn.Linear(width, hidden),
            nn.BatchNorm1d(hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, projection_dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x))


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's NT-Xent loss of the projections ``z1``, ``z2`` (``(N, d)``: row ``i`` of each
    is a view of image ``i``): the mean over the ``2N`` views of the cross-entropy of finding the
    other view of its image among the ``2N - 1`` others, by cosine similarity / ``temperature``."""
    if z1.shape != z2.shape or z1.ndim != 2 or len(z1) < 2:
        raise ValueError(f"nt_xent needs two (N >= 2, d) projections, got {z1.shape}, {z2.shape}")
    n = len(z1)
    z = F.normalize(torch.cat([z1, z2]).float(), dim=1)
    logits = z @ z.T / temperature
    self_pairs = torch.eye(2 * n, dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(self_pairs, float("-inf"))
    partner = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(z.device)
    return F.cross_entropy(logits, partner)


# --------------------------------------------------------------------------------------------
# Training


def _check_images(images: Sequence[np.ndarray]) -> None:
    for i, image in enumerate(images):
        if not (isinstance(image, np.ndarray) and image.dtype == np.uint8):
            raise ValueError(f"image {i}: expected a uint8 array, got {type(image).__name__}")
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"image {i}: expected an RGB (H, W, 3) array, got {image.shape}")
    if len(images) < 2:
        raise ValueError(f"pretraining needs at least 2 images, got {len(images)}")


def train(
    images: Sequence[np.ndarray],
    cfg: Mapping | None,
    encoder_path: str | os.PathLike,
    metrics_path: str | os.PathLike,
    log: logging.Logger | None = None,
) -> dict:
    """Pretrain an encoder on ``images`` (uint8 RGB arrays of any size, unlabelled); write it and
    the per-epoch metrics.

    ``cfg``: the ``pretrain`` config (:data:`DEFAULTS`, :func:`resolve_config`).
    ``encoder_path``: the encoder's torchvision state dict (no ``fc``, no projection head; CPU
    tensors), written atomically and reproducibly after the last epoch.
    ``metrics_path``: CSV with :data:`METRICS_COLUMNS`, rewritten atomically after every epoch
    (``epoch`` counted from 1, as the log counts; ``loss`` the mean batch loss weighted by batch
    size; ``lr`` the mean learning rate; ``images_per_s``, ``waiting_share`` (share of the epoch
    spent waiting for data) and ``seconds`` are wall-clock figures). Raises
    ``FloatingPointError`` on a non-finite loss. Returns the last epoch's row.
    """
    log = log or _log
    cfg = resolve_config(cfg)
    _check_images(images)
    device = resolve_device(cfg["device"])
    with deterministic(device, cfg["seed"]):
        return _train(cfg, device, images, Path(encoder_path), Path(metrics_path), log)


def _train(
    cfg: dict,
    device: torch.device,
    images: Sequence[np.ndarray],
    encoder_path: Path,
    metrics_path: Path,
    log: logging.Logger,
) -> dict:
    model = SimCLR(cfg["arch"], cfg["projection_dim"], cfg["projection_hidden_dim"]).to(device)
    dataset = _PairDataset(images, Views(cfg["views"], cfg["crop_size"]), cfg["seed"])
    epochs, crop = cfg["epochs"], cfg["crop_size"]
    plan = [  # shuffled per epoch; a last batch of one image joins the one before it
        size_batches(
            range(len(images)),
            [(crop, crop)] * len(images),
            cfg["batch_size"],
            np.random.default_rng([cfg["seed"], epoch]),
        )
        for epoch in range(epochs)
    ]
    steps = len(plan[0])
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"]
    )
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs * steps)
    log.info(
        "%s pretraining of a %s on %s: %d images, %d epochs x %d steps, %d px views",
        cfg["method"], cfg["arch"], device_label(device), len(images), epochs, steps,
        cfg["crop_size"],
    )  # fmt: skip

    rows: list[dict] = []
    for epoch in range(epochs):
        start = time.perf_counter()
        model.train()
        dataset.epoch = epoch
        loader = DataLoader(
            dataset,
            batch_sampler=plan[epoch],
            num_workers=cfg["num_workers"],
            pin_memory=device.type == "cuda",
        )
        clock = LoaderClock(loader)
        total, count, lrs = 0.0, 0, []
        for first, second in clock:
            first = first.to(device, non_blocking=True)
            second = second.to(device, non_blocking=True)
            lrs.append(optimizer.param_groups[0]["lr"])
            optimizer.zero_grad(set_to_none=True)
            z = model(torch.cat([first, second]))  # one pass: BatchNorm sees both views
            loss = nt_xent(z[: len(first)], z[len(first) :], cfg["temperature"])
            value = loss.item()
            if not math.isfinite(value):
                raise FloatingPointError(
                    f"epoch {epoch + 1}: pretraining loss is {value}; try a lower lr"
                )
            loss.backward()
            optimizer.step()
            scheduler.step()
            total += value * len(first)
            count += len(first)
        row = {
            "epoch": epoch + 1,
            "loss": total / count,
            "lr": float(np.mean(lrs)),
            "images_per_s": round(clock.images / max(clock.total, 1e-9), 3),
            "waiting_share": round(clock.wait / max(clock.total, 1e-9), 4),
            "seconds": round(time.perf_counter() - start, 3),
        }
        rows.append(row)
        write_csv(metrics_path, pd.DataFrame(rows, columns=list(METRICS_COLUMNS)))
        log.info(
            "epoch %d/%d: loss %.4f lr %.2e %.1f s (%s)",
            epoch + 1, epochs, row["loss"], row["lr"], row["seconds"], clock.summary(),
        )  # fmt: skip
    state = {k: v.detach().cpu() for k, v in model.encoder.state_dict().items()}
    save_checkpoint(encoder_path, state)
    log.info("encoder (%s, %d tensors) -> %s", cfg["arch"], len(state), encoder_path)
    return rows[-1]
