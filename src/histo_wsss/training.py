"""Machinery shared by the classifier and the segmentation trainers."""

from __future__ import annotations

import copy
import io
import math
import os
import random
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager

import albumentations as A
import cv2
import numpy as np
import torch

from histo_wsss.device import resolve_device
from histo_wsss.io import atomic_path
from histo_wsss.weights import load_file


def is_int(v: object) -> bool:
    """An integer that is not a boolean."""
    return isinstance(v, int | np.integer) and not isinstance(v, bool | np.bool_)


def is_num(v: object) -> bool:
    """A finite real number that is not a boolean."""
    return (is_int(v) or isinstance(v, float | np.floating)) and math.isfinite(float(v))


def require(section: str, ok: bool, key: str, value: object, what: str) -> None:
    """Raise ``ValueError`` naming the config ``section.key`` unless ``ok``."""
    if not ok:
        raise ValueError(f"{section} config: {key} must be {what}, got {value!r}")


def merge_config(section: str, cfg: Mapping | None, defaults: Mapping) -> dict:
    """``cfg`` merged over a deep copy of ``defaults`` (nested dicts key by key); ``ValueError``
    naming an unknown key (``augment.foo`` for nested ones) or a nested value that is no mapping."""
    cfg = dict(cfg or {})
    unknown = sorted(set(cfg) - set(defaults), key=str)
    if unknown:
        raise ValueError(
            f"unknown {section} config key(s): {', '.join(map(str, unknown))} "
            f"(known: {', '.join(defaults)})"
        )
    out = copy.deepcopy(dict(defaults))
    for key, value in cfg.items():
        if isinstance(defaults[key], dict):
            require(section, isinstance(value, Mapping), key, value, "a mapping")
            bad = sorted(set(value) - set(defaults[key]), key=str)
            if bad:
                raise ValueError(
                    f"unknown {section} config key(s): "
                    f"{', '.join(f'{key}.{b}' for b in bad)} "
                    f"(known: {', '.join(f'{key}.{k}' for k in defaults[key])})"
                )
            out[key].update(value)
        else:
            out[key] = value
    return out


def check_augment(section: str, aug: Mapping) -> None:
    """Validate an ``augment`` config section (flips, rotations, colour jitter)."""
    for key in ("flip", "rotate90"):
        require(section, isinstance(aug[key], bool), f"augment.{key}", aug[key], "true or false")
    for key in ("brightness", "contrast", "saturation"):
        ok = is_num(aug[key]) and 0 <= aug[key] < 1
        require(section, ok, f"augment.{key}", aug[key], "in [0, 1)")
    ok = is_num(aug["hue"]) and 0 <= aug["hue"] <= 0.5
    require(section, ok, "augment.hue", aug["hue"], "in [0, 0.5]")


def as_device(device: str | torch.device) -> torch.device:
    return device if isinstance(device, torch.device) else resolve_device(device)


def device_label(device: torch.device) -> str:
    """``device`` for a log line; on the CPU with torch's thread count (results depend on it)."""
    if device.type != "cpu":
        return str(device)
    n = torch.get_num_threads()
    return f"cpu ({n} thread{'s' * (n != 1)})"


def _compose(aug: Mapping, crop_size: int | None, rotate90: bool) -> A.Compose | None:
    ops: list = []
    if crop_size is not None:
        ops.append(
            A.RandomCrop(
                crop_size, crop_size, pad_if_needed=True, border_mode=cv2.BORDER_REFLECT_101
            )
        )
    if aug["flip"]:
        ops += [A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5)]
    if aug["rotate90"] and rotate90:
        ops.append(A.RandomRotate90(p=1.0))  # uniform over 0/90/180/270 degrees
    if any(aug[k] > 0 for k in ("brightness", "contrast", "saturation", "hue")):
        ops.append(
            A.ColorJitter(
                brightness=aug["brightness"],
                contrast=aug["contrast"],
                saturation=aug["saturation"],
                hue=aug["hue"],
                p=1.0,
            )
        )
    return A.Compose(ops) if ops else None


class Augmentation:
    """The albumentations pipeline of an ``augment`` config section, seeded per call.

    With ``crop_size``, a random ``crop_size`` x ``crop_size`` crop comes first (an image
    smaller than that is reflect-padded to it first, its mask alike), so training batches share
    one size whatever the image sizes. Then horizontal + vertical flips, a random 90° rotation
    and colour jitter (image only), as configured. A 90° rotation would change the shape of a
    non-square image (and break its batch): such images (only without ``crop_size``) get the
    pipeline without it; the two flips still give all four symmetries of a rectangle.
    """

    def __init__(self, aug: Mapping, crop_size: int | None = None) -> None:
        self.crop_size = crop_size
        self.square = _compose(aug, crop_size, rotate90=True)
        self.rectangular = _compose(aug, crop_size, rotate90=False)

    def __call__(self, seeds: Sequence[int], **data: np.ndarray) -> dict:
        """Transform ``data`` (``image=``, optionally ``mask=``) with ops seeded from ``seeds``
        (e.g. seed, epoch, index: :func:`seed_transforms`); unchanged when nothing is on."""
        height, width = data["image"].shape[:2]
        square = self.crop_size is not None or height == width
        transform = self.square if square else self.rectangular
        if transform is None:
            return data
        seed_transforms(transform, *seeds)
        return transform(**data)


def training_sizes(sizes: Sequence[tuple[int, int]], crop_size: int | None) -> list[tuple]:
    """The sizes the training images have after :class:`Augmentation` (for batching)."""
    return [(crop_size, crop_size)] * len(sizes) if crop_size else [tuple(s) for s in sizes]


def seed_transforms(transform: A.Compose, *entropy: int) -> None:
    """Seed ``transform`` and each of its ops from ``entropy`` (e.g. seed, epoch, index).

    Each op gets its own seed: albumentations' ``Compose.set_random_seed`` alone gives every op
    the same seed, which would make the horizontal and vertical flips always coincide.
    """
    ops = transform.transforms
    seeds = np.random.SeedSequence(list(entropy)).generate_state(len(ops) + 1)
    transform.set_random_seed(int(seeds[0]))
    for op, s in zip(ops, seeds[1:], strict=True):
        op.set_random_seed(int(s))


@contextmanager
def deterministic(device: torch.device, seed: int) -> Iterator[None]:
    """Seed Python, numpy and torch and use deterministic algorithms for the block.

    torch's deterministic-algorithm flags and cuDNN's benchmark mode are restored afterwards.
    """
    previous = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
    )
    previous_benchmark = torch.backends.cudnn.benchmark
    try:
        if device.type == "cuda":
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        random.seed(seed)
        np.random.seed(seed)  # noqa: NPY002 - for libraries that draw from numpy's global RNG
        torch.manual_seed(seed)
        yield
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])
        torch.backends.cudnn.benchmark = previous_benchmark


class LoaderClock:
    """Iterates ``batches`` (a DataLoader of ``(x, ...)`` tuples) timing the waits for them: the
    training throughput and the share of the loop spent waiting for data."""

    def __init__(self, batches: Iterable[Sequence[torch.Tensor]]) -> None:
        self.batches = batches
        self.images, self.wait, self.total = 0, 0.0, 0.0

    def __len__(self) -> int:
        return len(self.batches)  # for progress bars

    def __iter__(self) -> Iterator[Sequence[torch.Tensor]]:
        start = time.perf_counter()
        batches = iter(self.batches)
        try:
            while True:
                asked = time.perf_counter()
                batch = next(batches, None)
                self.wait += time.perf_counter() - asked
                if batch is None:
                    return
                self.images += len(batch[0])
                yield batch
        finally:
            self.total += time.perf_counter() - start

    def summary(self) -> str:
        """E.g. ``"train 41.2 images/s, 3.1 % waiting for data"``."""
        total = max(self.total, 1e-9)
        rate, waiting = self.images / total, 100 * self.wait / total
        return f"train {rate:.1f} images/s, {waiting:.1f} % waiting for data"


def read_checkpoint(path: str | os.PathLike, kind: str, keys: Sequence[str]) -> Mapping:
    """The checkpoint dict :func:`save_checkpoint` wrote at ``path``; ``ValueError`` naming the
    file when it is missing, unreadable, or not a ``kind`` checkpoint (lacks one of ``keys``)."""
    ckpt = load_file(path, f"{kind} checkpoint", "a torch checkpoint")
    if not isinstance(ckpt, Mapping) or not set(keys) <= set(ckpt):
        got = sorted(map(str, ckpt))[:8] if isinstance(ckpt, Mapping) else type(ckpt).__name__
        raise ValueError(
            f"{path}: not a histo_wsss {kind} checkpoint (expected a dict with keys "
            f"{list(keys)}, got {got})"
        )
    return ckpt


def save_checkpoint(path: str | os.PathLike, checkpoint: dict) -> None:
    """``torch.save`` atomically and reproducibly (same content, same bytes)."""
    # Serialise to memory first: torch.save(path) names the zip's root folder after the file,
    # which here would be the random temporary name (different bytes on every run).
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getvalue())
