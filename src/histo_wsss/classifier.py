"""The image-level classifier of paper §2.2: a torchvision ResNet with one sigmoid logit per
foreground class (K = 1 for a binary dataset, the paper's case; K tissue classes multi-label).

Everything is keyed by a plain config dict (the workflow's ``classifier`` section), merged over
:data:`DEFAULTS` by :func:`resolve_config` (an unknown key is an error naming it).

Training (:func:`train`):

* images of any size are read once and kept in memory as uint8;
* training images are augmented with albumentations (:class:`histo_wsss.training.Augmentation`:
  with ``crop_size``, a random square crop, reflect-padded where an image is smaller; then
  horizontal + vertical flips, random 90° rotation -- square images only --, colour jitter with
  the config's magnitudes); every image of every epoch gets its own random streams, seeded from
  ``(seed, epoch, index)``, so the augmentation does not depend on ``num_workers`` or on the
  batch order;
* every batch holds images of one size (:func:`histo_wsss.batching.size_batches`: shuffled per
  epoch, seeded from ``(seed, epoch)``; a last batch of one image joins the previous one of its
  size, a size seen once is left out -- never with ``crop_size``, where every crop has one
  size); validation and :func:`predict` run on whole images at their own resolution (the
  network is fully convolutional, global average pooling before ``fc``), batching consecutive
  images of one size (:func:`histo_wsss.batching.same_size_runs`);
* images are scaled to [0, 1] and normalised with the ImageNet mean/std (:func:`preprocess`,
  also used by :func:`predict`);
* SGD (``lr``, ``momentum``, ``weight_decay``) with ``torch.optim.lr_scheduler.OneCycleLR``
  (``max_lr=lr``, PyTorch's defaults otherwise: 30 % warm-up, cosine annealing, start at
  ``lr/25``, end at ``lr/25e4``) stepped after every batch over ``epochs * steps`` steps; the
  momentum is NOT cycled (``cycle_momentum=False``), it stays at ``momentum``;
* loss: :class:`histo_wsss.losses.ClassificationLoss` (BCE + Focal Tversky); its Tversky index
  is computed over a batch, so the reported ``train_loss`` is the mean of the batch losses
  (weighted by batch size) and ``val_loss`` is the loss of the whole validation set as one batch;
* progressive unfreezing (:func:`set_trainable`): block ``b`` trains after ``unfreeze[b]``
  epochs, i.e. from epoch ``unfreeze[b] + 1`` as the log and the metrics CSV count epochs
  (from 1); the ``fc`` head always trains;
* validation after every epoch: loss, accuracy at 0.5, ROC AUC (NaN when the validation split
  has one class only); for K classes each class's accuracy and AUC and their means (the mean
  AUC over the classes whose AUC is defined); the best epoch by ``selection_metric``
  (``auc``/``accuracy``: highest, ``loss``: lowest; NaN never selected; ties keep the earlier
  epoch) is saved as the checkpoint;
* deterministic on the CPU: the same config and data give the same checkpoint bytes and the same
  metrics CSV except the wall-clock ``seconds`` column.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torchvision
from sklearn.metrics import roc_auc_score
from torch import nn
from torch.utils.data import DataLoader, Dataset

from histo_wsss.batching import same_size_runs, size_batches
from histo_wsss.device import resolve_device
from histo_wsss.figures import figure
from histo_wsss.io import read_rgb, write_csv
from histo_wsss.logs import progress
from histo_wsss.losses import ClassificationLoss
from histo_wsss.training import (
    Augmentation,
    LoaderClock,
    as_device,
    check_augment,
    deterministic,
    device_label,
    is_int,
    is_num,
    merge_config,
    read_checkpoint,
    require,
    save_checkpoint,
    training_sizes,
)
from histo_wsss.weights import load_state as load_weights
from histo_wsss.weights import parse as parse_weights
from histo_wsss.weights import recorded_config, resnet_arch

__all__ = [
    "ARCHS",
    "BLOCKS",
    "CHECKPOINT_KEYS",
    "DEFAULTS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "METRICS_COLUMNS",
    "SELECTION_METRICS",
    "build_model",
    "evaluate",
    "evaluation_line",
    "is_improvement",
    "learning_curve",
    "load_checkpoint",
    "predict",
    "preprocess",
    "resolve_config",
    "set_trainable",
    "train",
    "trainable_blocks",
]

_log = logging.getLogger(__name__)

ARCHS = ("resnet18", "resnet34", "resnet50", "resnet101")
BLOCKS = ("stem", "layer1", "layer2", "layer3", "layer4")  # stem = conv1 + bn1
SELECTION_METRICS = {"auc": "val_auc", "accuracy": "val_accuracy", "loss": "val_loss"}
METRICS_COLUMNS = (
    "epoch",
    "train_loss",
    "val_loss",
    "val_accuracy",
    "val_auc",
    "lr",
    "trainable",
    "seconds",
)
CHECKPOINT_KEYS = ("arch", "state_dict", "epoch", "metrics", "config")
WEIGHTS = "null, 'none', 'imagenet' or the path of a state-dict file"
CROP = "null (whole images) or an integer >= 32"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

DEFAULTS: dict = {
    "arch": "resnet18",
    "weights": None,
    "crop_size": None,
    "epochs": 25,
    "batch_size": 32,
    "lr": 0.01,
    "momentum": 0.9,
    "weight_decay": 0.01,
    "unfreeze": {"layer4": 5, "layer3": 10, "layer2": 15, "layer1": 20, "stem": 20},
    "bce_weight": 1.0,
    "tversky_weight": 1.0,
    "tversky_alpha": 0.7,
    "tversky_beta": 0.3,
    "tversky_gamma": 1.33,
    "augment": {
        "flip": True,
        "rotate90": True,
        "brightness": 0.1,
        "contrast": 0.1,
        "saturation": 0.1,
        "hue": 0.02,
    },
    "selection_metric": "auc",
    "seed": 0,
    "device": "auto",
    "num_workers": 0,
}


# --------------------------------------------------------------------------------------------
# Config


def resolve_config(cfg: Mapping | None = None) -> dict:
    """Merge ``cfg`` over :data:`DEFAULTS` (nested dicts key by key) and validate the values.

    Raises ``ValueError`` naming an unknown key (``unfreeze.layer5`` for nested ones) or an
    invalid value. Returns a new dict; ``weights`` becomes ``None`` (``null``/``none``: random
    init), ``"imagenet"`` or a path string (:func:`histo_wsss.weights.parse`).
    """
    out = merge_config("classifier", cfg, DEFAULTS)

    require("classifier", out["arch"] in ARCHS, "arch", out["arch"], f"one of {ARCHS}")
    w = out["weights"]
    require("classifier", w is None or isinstance(w, str | os.PathLike), "weights", w, WEIGHTS)
    out["weights"] = parse_weights(w)
    c = out["crop_size"]
    require("classifier", c is None or (is_int(c) and c >= 32), "crop_size", c, CROP)
    for key in ("epochs", "batch_size"):
        require("classifier", is_int(out[key]) and out[key] >= 1, key, out[key], "an integer >= 1")
    require("classifier", is_num(out["lr"]) and out["lr"] > 0, "lr", out["lr"], "a number > 0")
    m = out["momentum"]
    require("classifier", is_num(m) and 0 <= m < 1, "momentum", m, "a number in [0, 1)")
    for key in ("weight_decay", "bce_weight", "tversky_weight", "tversky_alpha", "tversky_beta"):
        require("classifier", is_num(out[key]) and out[key] >= 0, key, out[key], "a number >= 0")
    if out["bce_weight"] == 0 and out["tversky_weight"] == 0:
        raise ValueError("classifier config: bce_weight and tversky_weight are both 0")
    g = out["tversky_gamma"]
    require("classifier", is_num(g) and g > 0, "tversky_gamma", g, "a number > 0")
    for block, start in out["unfreeze"].items():
        require(
            "classifier",
            start is None or (is_int(start) and start >= 0),
            f"unfreeze.{block}",
            start,
            "a number of epochs >= 0 or null (never)",
        )
    check_augment("classifier", out["augment"])
    sm = out["selection_metric"]
    require(
        "classifier",
        sm in SELECTION_METRICS,
        "selection_metric",
        sm,
        f"one of {tuple(SELECTION_METRICS)}",
    )
    require(
        "classifier",
        is_int(out["seed"]) and out["seed"] >= 0,
        "seed",
        out["seed"],
        "an integer >= 0",
    )
    require("classifier", isinstance(out["device"], str), "device", out["device"], "a string")
    nw = out["num_workers"]
    require("classifier", is_int(nw) and nw >= 0, "num_workers", nw, "an integer >= 0")
    return out


# --------------------------------------------------------------------------------------------
# Model


def _resnet(arch: str, n_classes: int = 1) -> nn.Module:
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; choose one of {ARCHS}")
    model = getattr(torchvision.models, arch)(weights=None)  # weights=None: never downloads
    model.fc = nn.Linear(model.fc.in_features, n_classes)
    return model


def _first(keys: Iterable[str], n: int = 5) -> str:
    keys = sorted(keys)
    more = f", ... ({len(keys)} in all)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def build_model(
    arch: str, weights: str | os.PathLike | None = None, n_classes: int = 1
) -> nn.Module:
    """A torchvision ResNet (``arch`` in :data:`ARCHS`) whose ``fc`` gives ``n_classes`` logits.

    ``weights`` (see :mod:`histo_wsss.weights`): ``None``/``"none"``: random initialisation
    (logged as a WARNING); ``"imagenet"``: torchvision's ImageNet weights from torch's hub cache
    (downloaded there when absent); otherwise a local torchvision state-dict file. Every backbone
    tensor is loaded strictly (``*.num_batches_tracked`` may be absent, as in old torchvision
    files); the file's ``fc`` is dropped (and logged) when its shapes differ from the one-logit
    head. A missing or unreadable file, or one whose keys/shapes do not match ``arch``, raises
    ``ValueError`` naming the file and the first mismatched keys; a failed download raises
    ``RuntimeError`` saying how to pass a local file instead.
    """
    model = _resnet(arch, n_classes)
    weights = parse_weights(weights)
    if weights is None:
        _log.warning("%s: no weights given, the classifier starts from random weights", arch)
        return model
    state, path = load_weights(arch, weights)

    own = model.state_dict()
    is_fc = lambda k: k.startswith("fc.")  # noqa: E731
    optional = {k for k in own if k.endswith(".num_batches_tracked")}
    missing = {k for k in own if not is_fc(k) and k not in state and k not in optional}
    unexpected = {k for k in state if not is_fc(k) and k not in own}
    shapes = {
        k
        for k in state
        if not is_fc(k) and k in own and tuple(state[k].shape) != tuple(own[k].shape)
    }
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing keys ({len(missing)}): {_first(missing)}")
        if unexpected:
            parts.append(f"unexpected keys ({len(unexpected)}): {_first(unexpected)}")
        if shapes:
            k = sorted(shapes)[0]
            parts.append(
                f"shape mismatches ({len(shapes)}): {_first(shapes)} "
                f"(e.g. {k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)})"
            )
        held = resnet_arch(state)
        if held is not None and held != arch:
            raise ValueError(
                f"{path}: the file holds {held} weights, the network is a {arch} "
                f"(classifier.arch / segmentation.encoder): " + "; ".join(parts)
            )
        raise ValueError(f"{path}: weights do not match {arch}: " + "; ".join(parts))

    merged = {k: state.get(k, own[k]) for k in own if not is_fc(k)}
    fc_file = {k: v for k, v in state.items() if is_fc(k)}
    fc_own = {k: v for k, v in own.items() if is_fc(k)}
    if set(fc_file) == set(fc_own) and all(fc_file[k].shape == fc_own[k].shape for k in fc_own):
        merged.update(fc_file)
        _log.info("%s: loaded %s weights including the fc head", path, arch)
    else:
        merged.update(fc_own)
        desc = ", ".join(f"{k} {tuple(v.shape)}" for k, v in sorted(fc_file.items())) or "none"
        _log.info(
            "%s: loaded %s backbone weights; dropped the file's fc (%s), the %d-logit fc is "
            "randomly initialised",
            path,
            arch,
            desc,
            n_classes,
        )
    model.load_state_dict(merged, strict=True)
    return model


def _block_modules(model: nn.Module, block: str) -> list[nn.Module]:
    if block == "stem":
        return [model.conv1, model.bn1]
    return [getattr(model, block)]


def trainable_blocks(epoch: int, unfreeze: Mapping[str, int | None]) -> list[str]:
    """Blocks that train at the loop's ``epoch`` index (from 0: the log's epoch ``epoch + 1``),
    in network order; ``"fc"`` is always last.

    Block ``b`` trains after ``unfreeze[b]`` epochs (``None``: never); a block missing from
    ``unfreeze`` never trains.
    """
    on = [b for b in BLOCKS if unfreeze.get(b) is not None and epoch >= unfreeze[b]]
    return on + ["fc"]


def set_trainable(model: nn.Module, epoch: int, unfreeze: Mapping[str, int | None]) -> list[str]:
    """Put ``model`` in training mode with only the blocks scheduled for ``epoch`` trainable.

    Sets ``requires_grad`` of every parameter of each block (``stem`` = ``conv1`` + ``bn1``,
    ``layer1`` .. ``layer4``) by :func:`trainable_blocks`; ``fc`` always trains. The BatchNorm
    layers of frozen blocks are switched to eval mode, so they normalise with (and do not update)
    their running statistics: a frozen block is then a fixed function, as with pretrained
    weights. Call it at the start of every training epoch (``model.train()`` would undo the BN
    part). Returns the trainable block names.
    """
    model.train()
    on = trainable_blocks(epoch, unfreeze)
    for block in BLOCKS:
        trains = block in on
        for module in _block_modules(model, block):
            for p in module.parameters():
                p.requires_grad_(trains)
            if not trains:
                for sub in module.modules():
                    if isinstance(sub, nn.modules.batchnorm._BatchNorm):
                        sub.eval()
    for p in model.fc.parameters():
        p.requires_grad_(True)
    return on


# --------------------------------------------------------------------------------------------
# Data


def preprocess(images: np.ndarray) -> torch.Tensor:
    """uint8 RGB ``(H, W, 3)`` or ``(N, H, W, 3)`` -> float32 ``(3, H, W)`` / ``(N, 3, H, W)``.

    Scales to [0, 1] and normalises with the ImageNet mean/std (as in training).
    """
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim not in (3, 4) or images.shape[-1] != 3:
        raise ValueError(
            f"expected uint8 RGB images (H, W, 3) or (N, H, W, 3), got {images.dtype} "
            f"{images.shape}"
        )
    mean = np.asarray(IMAGENET_MEAN, np.float32)
    std = np.asarray(IMAGENET_STD, np.float32)
    x = (images.astype(np.float32) / np.float32(255.0) - mean) / std
    x = np.moveaxis(x, -1, -3)
    return torch.from_numpy(np.ascontiguousarray(x))


def _image_batches(images: Iterable[np.ndarray], batch_size: int) -> Iterator[np.ndarray]:
    """uint8 batches of consecutive images of one size, at most ``batch_size`` each."""
    for run in same_size_runs(images, batch_size, np.shape):
        yield np.stack(run)


def _split_items(items: Iterable, split: str) -> tuple[list[str], np.ndarray]:
    """Paths and int64 ``(N, K)`` targets of ``(image_path, label)`` items: a label is 0/1 (one
    class) or a sequence of K 0/1 values (multi-label), the same K for every item."""
    paths, labels = [], []
    for i, item in enumerate(items):
        try:
            path, label = item
        except (TypeError, ValueError) as err:
            raise ValueError(
                f"{split} item {i}: expected (image_path, label01), got {item!r}"
            ) from err
        vector = [label] if np.ndim(label) == 0 else list(label)
        if not vector or any(v not in (0, 1) or isinstance(v, str) for v in vector):
            raise ValueError(
                f"{split} item {i} ({path}): label must be 0 or 1 or a sequence of 0/1 per "
                f"class, got {label!r}"
            )
        if labels and len(vector) != len(labels[0]):
            raise ValueError(
                f"{split} item {i} ({path}): {len(vector)} class label(s), item 0 has "
                f"{len(labels[0])}"
            )
        paths.append(str(path))
        labels.append([int(v) for v in vector])
    if not paths:
        raise ValueError(f"the {split} split is empty")
    return paths, np.asarray(labels, dtype=np.int64)


class _ImageDataset(Dataset):
    """In-memory uint8 images -> (normalised tensor, (K,) float targets), augmented.

    The augmentation of item ``index`` in ``epoch`` is seeded from ``(seed, epoch, index)``
    (one seed per transform, :func:`histo_wsss.training.seed_transforms`).
    """

    def __init__(
        self, images: Sequence[np.ndarray], labels: np.ndarray, augment: Augmentation, seed: int
    ) -> None:
        self.images, self.labels, self.augment, self.seed = images, labels, augment, seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = self.augment((self.seed, self.epoch, index), image=self.images[index])["image"]
        label = torch.tensor(self.labels[index], dtype=torch.float32)
        return preprocess(np.ascontiguousarray(image)), label


def _logits(model: nn.Module, batches: Iterable[np.ndarray], device: torch.device) -> torch.Tensor:
    """Logits (CPU, float32, shape (N, K)) of uint8 image batches; eval mode, no grad."""
    was_training = model.training
    model.eval()
    out = []
    try:
        with torch.inference_mode():
            for batch in batches:
                out.append(model(preprocess(batch).to(device)).float().cpu())
    finally:
        model.train(was_training)
    return torch.cat(out) if out else torch.zeros((0, model.fc.out_features))


# --------------------------------------------------------------------------------------------
# Metrics


def _binary_scores(y: np.ndarray, p: np.ndarray, threshold: float) -> dict:
    """:func:`evaluate`'s scores of one class: 1-D 0/1 ``y`` and probabilities ``p``."""
    if y.size == 0:
        raise ValueError("evaluate: no samples")
    if not np.isin(y, (0, 1)).all():
        raise ValueError(f"labels must be 0 or 1, got values {sorted(set(y.tolist()))[:5]}")
    if not (np.isfinite(p).all() and (p >= 0).all() and (p <= 1).all()):
        raise ValueError("probs must be finite and in [0, 1]")
    y = y.astype(bool)
    pred = p >= threshold
    tp, fn = int((pred & y).sum()), int((~pred & y).sum())
    tn, fp = int((~pred & ~y).sum()), int((pred & ~y).sum())
    recalls = [tp / (tp + fn)] if tp + fn else []
    recalls += [tn / (tn + fp)] if tn + fp else []
    both = bool(y.any() and (~y).any())
    return {
        "n": int(y.size),
        "threshold": float(threshold),
        "accuracy": (tp + tn) / y.size,
        "balanced_accuracy": float(np.mean(recalls)),
        "auc": float(roc_auc_score(y, p)) if both else math.nan,
        "confusion": {"tn": tn, "fp": fp, "fn": fn, "tp": tp},
    }


def evaluate(
    labels: Sequence,
    probs: Sequence,
    threshold: float = 0.5,
    classes: Sequence[str] | None = None,
) -> dict:
    """Metrics of class probabilities, predicting a class when ``p >= threshold``.

    ``labels`` and ``probs``: 1-D (one class) or ``(N, K)`` (K classes, multi-label). For one
    class: ``n``, ``threshold``, ``accuracy``, ``balanced_accuracy`` (mean recall over the
    values present in ``labels``), ``auc`` (ROC AUC; NaN when ``labels`` has one value only)
    and ``confusion`` ``{"tn", "fp", "fn", "tp"}``. For K > 1 classes: those of each class
    under ``classes`` (``{name: scores}``, names from ``classes``), their means ``accuracy``,
    ``balanced_accuracy`` and ``auc`` (over the classes whose AUC is defined; NaN when none
    is), and ``exact_match``, the share of images with every class right. Plain Python numbers.
    """
    y = np.asarray(labels)
    p = np.asarray(probs, dtype=np.float64)
    if p.shape != y.shape or y.ndim not in (1, 2):
        raise ValueError(f"labels {y.shape} and probs {p.shape} must be 1-D or (N, K) alike")
    if y.ndim == 1 or y.shape[1] == 1:
        return _binary_scores(y.reshape(len(y)), p.reshape(len(p)), threshold)
    names = list(classes) if classes is not None else [f"class{k}" for k in range(y.shape[1])]
    if len(names) != y.shape[1]:
        raise ValueError(f"{len(names)} class names for {y.shape[1]} columns")
    per = {c: _binary_scores(y[:, k], p[:, k], threshold) for k, c in enumerate(names)}
    aucs = [v["auc"] for v in per.values() if not math.isnan(v["auc"])]
    return {
        "n": int(len(y)),
        "threshold": float(threshold),
        "accuracy": float(np.mean([v["accuracy"] for v in per.values()])),
        "balanced_accuracy": float(np.mean([v["balanced_accuracy"] for v in per.values()])),
        "auc": float(np.mean(aucs)) if aucs else math.nan,
        "exact_match": float(((p >= threshold) == y.astype(bool)).all(axis=1).mean()),
        "classes": per,
    }


def evaluation_line(scores: Mapping) -> str:
    """An :func:`evaluate` dict in words, for the log."""
    if "classes" in scores:
        each = "; ".join(
            f"{c}: accuracy {v['accuracy']:.4f}, ROC AUC {v['auc']:.4f}"
            for c, v in scores["classes"].items()
        )
        return (
            f"{scores['n']} images, {len(scores['classes'])} classes: mean accuracy "
            f"{scores['accuracy']:.4f}, mean balanced accuracy "
            f"{scores['balanced_accuracy']:.4f}, mean ROC AUC {scores['auc']:.4f}, every class "
            f"right {scores['exact_match']:.4f} (a class from p >= {scores['threshold']}; "
            f"{each})"
        )
    c = scores["confusion"]
    return (
        f"{scores['n']} images: accuracy {scores['accuracy']:.4f}, balanced accuracy "
        f"{scores['balanced_accuracy']:.4f}, ROC AUC {scores['auc']:.4f} (positive from p >= "
        f"{scores['threshold']}: {c['tp']} true and {c['fp']} false positives, {c['tn']} true "
        f"and {c['fn']} false negatives)"
    )


def is_improvement(metric: str, row: Mapping, best: Mapping | None) -> bool:
    """Whether epoch ``row`` beats ``best`` (``None``: nothing yet) on ``metric``.

    ``auc``/``accuracy``: higher is better, ``loss``: lower. A tie on ``auc`` or ``accuracy`` is
    broken by a lower val loss (an AUC of 1.0 is often reached while the probabilities are still
    badly calibrated); a complete tie does not improve. NaN never improves.
    """
    if metric not in SELECTION_METRICS:
        raise ValueError(
            f"unknown selection metric {metric!r}; choose one of {tuple(SELECTION_METRICS)}"
        )
    column = SELECTION_METRICS[metric]
    value = row[column]
    if value is None or math.isnan(value):
        return False
    if best is None or math.isnan(best[column]):
        return True
    sign = -1 if metric == "loss" else 1
    key = (sign * value, -row["val_loss"])
    return key > (sign * best[column], -best["val_loss"])


# --------------------------------------------------------------------------------------------
# Training


def train(
    train_items: Sequence[tuple[str | os.PathLike, int]],
    val_items: Sequence[tuple[str | os.PathLike, int]],
    cfg: Mapping | None,
    checkpoint_path: str | os.PathLike,
    metrics_path: str | os.PathLike,
    log: logging.Logger | None = None,
    classes: Sequence[str] | None = None,
) -> dict:
    """Train the classifier; write the best checkpoint and the per-epoch metrics CSV.

    ``train_items`` / ``val_items``: ``(image_path, label)`` pairs (RGB images of any size), a
    label 0/1 (one class) or a sequence of K 0/1 targets, one per class in ``classes`` (the
    names of the per-class metrics columns). ``cfg``: the ``classifier`` config (see
    :data:`DEFAULTS`, :func:`resolve_config`).

    ``checkpoint_path`` is (re)written, atomically, whenever an epoch beats the best so far by
    ``selection_metric``: ``torch.save`` of ``{"arch", "state_dict" (CPU tensors), "epoch",
    "metrics" (that epoch's row without ``seconds``), "config" (the resolved config, a local
    ``weights`` file by its name only: the checkpoint does not depend on the folder a run lives
    in)}``.
    ``metrics_path`` (CSV, columns :data:`METRICS_COLUMNS`, one row per epoch) is rewritten
    atomically after every epoch; ``epoch`` counts from 1 as the log does, ``lr`` is the mean
    learning rate over the epoch's steps, ``trainable`` the trainable blocks joined by ``+``,
    ``seconds`` wall-clock; for K > 1 classes each class's ``val_accuracy_<class>`` and
    ``val_auc_<class>`` follow ``val_auc`` (their mean).

    ``selection_metric: auc`` with a validation split where no class has both values is refused
    (its AUC is undefined). Raises ``FloatingPointError`` on a non-finite training loss. Returns
    the best epoch's metrics (the checkpoint's ``metrics``). Deterministic for a given config
    and data on the CPU (``seconds`` aside); the global determinism setting is restored on
    return.
    """
    log = log or _log
    cfg = resolve_config(cfg)
    train_paths, train_labels = _split_items(train_items, "train")
    val_paths, val_labels = _split_items(val_items, "val")
    metric = cfg["selection_metric"]
    if metric == "auc" and (val_labels.min(axis=0) == val_labels.max(axis=0)).all():
        only = f"label {int(val_labels[0, 0])}" if val_labels.shape[1] == 1 else "one value of each"
        raise ValueError(
            f"selection_metric 'auc' needs both classes in the validation split, which has only "
            f"{only} ({len(val_labels)} images); use 'accuracy' or 'loss'"
        )
    if train_labels.shape[1] != val_labels.shape[1]:
        raise ValueError(
            f"train items have {train_labels.shape[1]} class label(s), val items "
            f"{val_labels.shape[1]}"
        )
    classes = list(classes) if classes is not None else None
    if classes is not None and len(classes) != train_labels.shape[1]:
        raise ValueError(f"{len(classes)} class names for {train_labels.shape[1]} labels")
    if len(train_paths) < 2:
        raise ValueError("the train split needs at least 2 images")
    device = resolve_device(cfg["device"])

    log.info("loading %d train and %d val images", len(train_paths), len(val_paths))
    train_images = [read_rgb(p) for p in train_paths]
    val_images = [read_rgb(p) for p in val_paths]

    with deterministic(device, cfg["seed"]):
        return _train(
            cfg, device, train_images, train_labels, val_images, val_labels,
            Path(checkpoint_path), Path(metrics_path), log, classes,
        )  # fmt: skip


def _batch_plan(images: Sequence[np.ndarray], cfg: Mapping) -> list[list[list[int]]]:
    """Every epoch's training batches: same-size images, shuffled with ``(seed, epoch)``."""
    sizes = training_sizes([im.shape[:2] for im in images], cfg["crop_size"])
    indices, seed = range(len(images)), cfg["seed"]
    plan = [
        size_batches(indices, sizes, cfg["batch_size"], np.random.default_rng([seed, epoch]))
        for epoch in range(cfg["epochs"])
    ]
    if not plan[0]:
        raise ValueError(
            "no trainable batch: a batch needs at least 2 train images of one size "
            f"({len(set(sizes))} sizes among {len(images)} images); set crop_size"
        )
    return plan


def _train(
    cfg: dict,
    device: torch.device,
    train_images: list[np.ndarray],
    train_labels: np.ndarray,
    val_images: list[np.ndarray],
    val_labels: np.ndarray,
    checkpoint_path: Path,
    metrics_path: Path,
    log: logging.Logger,
    classes: list[str] | None,
) -> dict:
    n_classes = train_labels.shape[1]
    model = build_model(cfg["arch"], cfg["weights"], n_classes).to(device)
    names = classes or [f"class{k}" for k in range(n_classes)]
    per_class = (
        [f"val_{m}_{c}" for c in names for m in ("accuracy", "auc")] if n_classes > 1 else []
    )
    columns = [*METRICS_COLUMNS[:5], *per_class, *METRICS_COLUMNS[5:]]
    augment = Augmentation(cfg["augment"], cfg["crop_size"])
    dataset = _ImageDataset(train_images, train_labels, augment, cfg["seed"])
    batch_size, epochs = cfg["batch_size"], cfg["epochs"]
    plan = _batch_plan(train_images, cfg)
    steps = len(plan[0])
    left_out = len(train_images) - sum(map(len, plan[0]))
    if left_out:
        log.info("%d train image(s) of a size seen once left out (set crop_size)", left_out)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=cfg["lr"], momentum=cfg["momentum"], weight_decay=cfg["weight_decay"]
    )
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=cfg["lr"], total_steps=epochs * steps, cycle_momentum=False
    )
    loss_fn = ClassificationLoss(
        alpha=cfg["tversky_alpha"],
        beta=cfg["tversky_beta"],
        gamma=cfg["tversky_gamma"],
        bce_weight=cfg["bce_weight"],
        tversky_weight=cfg["tversky_weight"],
    )
    val_targets = torch.from_numpy(val_labels.astype(np.float32))
    val_batches = list(_image_batches(val_images, batch_size))
    metric, column = cfg["selection_metric"], SELECTION_METRICS[cfg["selection_metric"]]
    log.info(
        "training %s on %s: %d train / %d val images, %d epochs x %d steps, selecting on %s",
        cfg["arch"], device_label(device), len(train_images) - left_out, len(val_images),
        epochs, steps, column,
    )  # fmt: skip

    rows: list[dict] = []
    best: dict | None = None
    for epoch in range(epochs):
        start = time.perf_counter()
        blocks = set_trainable(model, epoch, cfg["unfreeze"])
        dataset.epoch = epoch
        loader = DataLoader(
            dataset,
            batch_sampler=plan[epoch],
            num_workers=cfg["num_workers"],
            pin_memory=device.type == "cuda",
        )
        total, count, lrs = 0.0, 0, []
        clock = LoaderClock(loader)
        bar = progress(clock, f"epoch {epoch + 1}/{epochs}", "batch", lines=0)
        for x, y in bar:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            lrs.append(optimizer.param_groups[0]["lr"])
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model(x), y)
            value = loss.item()
            if not math.isfinite(value):
                raise FloatingPointError(
                    f"epoch {epoch + 1}: training loss is {value}; try a lower lr"
                )
            loss.backward()
            optimizer.step()
            scheduler.step()
            total += value * len(x)
            count += len(x)
            bar.set_postfix(loss=f"{total / count:.4f}")
        bar.close()

        logits = _logits(model, val_batches, device)
        val_loss = float(loss_fn(logits, val_targets))
        scores = evaluate(val_labels, torch.sigmoid(logits).numpy(), classes=names)
        row = {
            "epoch": epoch + 1,
            "train_loss": total / count,
            "val_loss": val_loss,
            "val_accuracy": scores["accuracy"],
            "val_auc": scores["auc"],
            **{
                f"val_{m}_{c}": v[m]
                for c, v in scores.get("classes", {}).items()
                for m in ("accuracy", "auc")
            },
            "lr": float(np.mean(lrs)),
            "trainable": "+".join(blocks),
            "seconds": round(time.perf_counter() - start, 3),
        }
        rows.append(row)
        write_csv(metrics_path, pd.DataFrame(rows, columns=columns))
        improved = is_improvement(metric, row, best)
        if improved:
            best = {k: v for k, v in row.items() if k != "seconds"}
            save_checkpoint(
                checkpoint_path,
                {
                    "arch": cfg["arch"],
                    "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                    "epoch": epoch + 1,
                    "metrics": best,
                    "config": recorded_config(cfg, "weights"),
                },
            )
        log.info(
            "epoch %d/%d: train_loss %.4f val_loss %.4f val_accuracy %.4f val_auc %.4f lr %.2e "
            "[%s] %.1f s (%s)%s",
            *(epoch + 1, epochs, row["train_loss"], val_loss, row["val_accuracy"]),
            *(row["val_auc"], row["lr"], row["trainable"], row["seconds"], clock.summary()),
            " (best so far, saved)" if improved else "",
        )
    if best is None:
        raise RuntimeError(f"no epoch had a finite {column}; no checkpoint was written")
    log.info("best epoch %d: %s %.4f -> %s", best["epoch"], column, best[column], checkpoint_path)
    return best


# --------------------------------------------------------------------------------------------
# Inference


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu") -> nn.Module:
    """The classifier saved by :func:`train` at ``path``, on ``device``, in eval mode.

    ``device``: a ``torch.device`` or a name for :func:`histo_wsss.device.resolve_device`.
    Raises ``ValueError`` naming the file when it is missing, unreadable, or not such a
    checkpoint.
    """
    path = Path(path)
    ckpt = read_checkpoint(path, "classifier", CHECKPOINT_KEYS)
    if ckpt["arch"] not in ARCHS:
        raise ValueError(f"{path}: unknown arch {ckpt['arch']!r} in checkpoint")
    fc = ckpt["state_dict"].get("fc.weight") if isinstance(ckpt["state_dict"], dict) else None
    model = _resnet(ckpt["arch"], fc.shape[0] if fc is not None else 1)
    try:
        model.load_state_dict(ckpt["state_dict"], strict=True)
    except (RuntimeError, TypeError, AttributeError) as err:
        raise ValueError(f"{path}: state_dict does not match {ckpt['arch']}: {err}") from err
    return model.to(as_device(device)).eval()


def predict(
    model: nn.Module,
    paths: Sequence[str | os.PathLike],
    batch_size: int = 32,
    device: str | torch.device = "cpu",
) -> np.ndarray:
    """Class probabilities (float32, shape ``(len(paths), K)``) of the images at ``paths``.

    Reads the images one by one, each at its own size, and batches consecutive images of one
    size (up to ``batch_size``); normalises them as in training, runs ``model`` on ``device`` in
    eval mode without gradients (its mode is restored afterwards).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = as_device(device)
    paths = [str(p) for p in paths]
    model.to(device)
    batches = _image_batches(map(read_rgb, paths), batch_size)
    return torch.sigmoid(_logits(model, batches, device)).numpy().astype(np.float32)


# --------------------------------------------------------------------------------------------
# Figure


def learning_curve(
    metrics_csv: str | os.PathLike, path: str | os.PathLike, dpi: int = 120
) -> list[int]:
    """Plot the metrics CSV of :func:`train` (losses, val accuracy, val AUC, LR vs epoch).

    Dotted vertical lines mark the epochs at which the trainable blocks change (a frozen block
    starts training); the title lists them, or names the blocks that trained throughout when
    none changed. Returns those epochs. Saved atomically with the Agg canvas, the default style, a
    fixed ``dpi`` and no timestamps/software metadata, so the same CSV gives the same file (PNG,
    PDF or SVG, by the suffix of ``path``).
    """
    table = pd.read_csv(metrics_csv)
    missing = [c for c in METRICS_COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(f"{metrics_csv}: not a classifier metrics CSV (missing {missing})")
    epochs = table["epoch"].to_numpy()
    trainable = table["trainable"].tolist()
    changes = [
        int(e)
        for e, prev, cur in zip(epochs[1:], trainable, trainable[1:], strict=False)
        if prev != cur
    ]
    with figure(path, (10, 7), dpi) as fig:
        axes = fig.subplots(2, 2, sharex=True).ravel()
        axes[0].plot(epochs, table["train_loss"], "o-", label="train")
        axes[0].plot(epochs, table["val_loss"], "s-", label="val")
        axes[0].set_ylabel("loss (BCE + focal Tversky)")
        axes[0].legend()
        axes[1].plot(epochs, table["val_accuracy"], "o-", color="C2")
        axes[1].set_ylabel("val accuracy (threshold 0.5)")
        axes[1].set_ylim(-0.02, 1.02)
        axes[2].plot(epochs, table["val_auc"], "o-", color="C3")
        axes[2].set_ylabel("val ROC AUC")
        axes[2].set_ylim(-0.02, 1.02)
        axes[3].plot(epochs, table["lr"], "o-", color="C4")
        axes[3].set_ylabel("learning rate (epoch mean)")
        for ax in axes:
            for e in changes:
                ax.axvline(e, color="0.6", linestyle=":", linewidth=1)
            ax.grid(True, alpha=0.3)
        for ax in axes[2:]:
            ax.set_xlabel("epoch")
        fig.suptitle(
            "classifier learning curve "
            + (
                f"(dotted: a frozen block starts training at epoch {', '.join(map(str, changes))})"
                if changes
                else f"(trainable throughout: {trainable[0]})"
            )
        )
    return changes
