"""The segmentation network of paper §2.4, trained on the pseudo-masks of §2.3.

Everything is keyed by a plain config dict (the workflow's ``segmentation`` section), merged
over :data:`DEFAULTS` (the paper's values) by :func:`resolve_config`; an unknown key is an error
naming it.

Classes
    The network segments the dataset's K foreground classes (:mod:`histo_wsss.classes`; K = 1:
    the binary case, the paper's). Each class has its own output channel with its own sigmoid
    (multi-label, like the classifier): background is no channel of its own, it is "no class
    above the threshold". The predicted label of a pixel is 0 (background) where the highest
    class probability is below ``threshold`` (0.5), else 1 + the most probable class
    (:func:`histo_wsss.evaluation.predicted_labels`); for K = 1 that is ``p >= threshold``, the
    binary rule, so the binary network, loss and scores are exactly what they were before K
    classes existed. The training targets are label maps (0 background, ``c`` class ``c - 1``,
    255 unlabelled): channel ``c`` is 1 where the label is ``c + 1``; unlabelled pixels are
    left out of every loss term and every score.

Model (:func:`build_model`)
    ``smp.DeepLabV3Plus`` or ``smp.Unet`` (segmentation-models-pytorch) with K output channels (one
    logit map per class) and smp's classification head on the deepest encoder features
    (``aux_params``: global average pooling, dropout :data:`HEAD_DROPOUT` = smp's default 0.2 -- the
    paper names none --, a linear layer giving K image-level logits, one per class, trained on the
    image's tags; sigmoids are applied in the loss and at prediction). The encoder starts from
    random weights (a WARNING is logged), from torchvision's ImageNet weights (``imagenet``, from
    torch's hub cache, downloaded there when absent) or from a local torchvision ResNet state-dict
    file (:mod:`histo_wsss.weights`); smp's own weight downloads are never used.

Input sizes (:func:`forward_padded`)
    smp's DeepLabV3Plus refuses inputs whose sides are not multiples of the encoder's output
    stride (16 here); smp's Unet declares ``requires_divisible_input_shape = False`` and resizes
    its decoder features to the skip connections itself, so it gives full-size outputs for any
    size. :func:`forward_padded` therefore pads only models that require it: reflect padding
    (``replicate`` for sides too short to reflect) split as evenly as possible between both sides
    up to the next multiple, and crops the mask logits back. The head then pools over the padded
    feature map (the reflected border adds a little weight to the image edge). Training,
    validation and :func:`predict` all go through it, so any image size works: every image is
    predicted whole at its own resolution (pad-and-crop, no tiling, no resizing), and its
    probability map and mask have its size. Training may use random square crops instead of
    whole images (``crop_size``; an image smaller than the crop is reflect-padded, its mask
    alike).

Loss (:class:`SegmentationLoss`)
    ``dice_weight * Dice + lovasz_weight * Lovasz`` on the masks plus ``bce_head_weight * BCE``
    of the head on the image's tags, with smp's ``DiceLoss(mode="multilabel",
    from_logits=True)``, ``LovaszLoss(mode="multilabel", per_image=False)`` (both with
    ``ignore_index=255``: the unlabelled pixels' logits enter neither) and
    ``BCEWithLogitsLoss``. smp's multilabel Dice is the binary Dice of each class channel
    (pooled over the batch; 0 for a class without target pixels in the batch) averaged over the
    K classes; its multilabel Lovasz is one binary Lovasz hinge over every (pixel, class) pair of
    the batch. For K = 1 both are exactly smp's ``mode="binary"`` losses, the binary network's.
    Both mask losses are computed over the whole batch as one set of pixels (smp's Dice pools
    the batch anyway). ``per_image=False`` is deliberate: on an all-negative image the binary Lovasz
    hinge degenerates to ``relu(1 + max logit)`` -- the hinge of the single highest-scoring pixel
    (the Lovasz extension of "IoU is 0 as soon as one pixel is predicted") -- and ``per_image=True``
    would give that one pixel the same weight as a whole positive image in the batch mean; pooled
    over the batch, a negative image's pixels are simply more background whose false positives lower
    the batch IoU, the same view as the pooled validation IoU. The reference code also uses smp's
    default ``per_image=False``. smp's Dice is 0 for a batch without positive pixels.
    ``pixel_bce_weight`` (0 in the paper) adds smp's ``SoftBCEWithLogitsLoss`` of every labelled
    pixel; with ``easy_example_mining`` it is weighted by :func:`easy_example_weights` (OEEM,
    the field's weakly supervised GlaS baseline, which weighs its cross-entropy so).

Curriculum (:func:`negative_probability`, :func:`epoch_items`)
    Epochs are 0-based. ``P = positive_only_epochs``, ``R = negative_ramp_epochs``,
    ``m = negative_max_prob``::

        p(e) = 0                                     for e < P
        p(e) = m * min(1, (e - P + 1) / (R - P))     for e >= P   (p(e) = m when R <= P)

    i.e. with 1-based epoch numbers ``E = e + 1``: no negatives in epochs 1..P, then a linear
    rise reaching ``m`` at epoch ``E = R`` (paper values: 0.012 at the 11th epoch, 0.3 from the
    35th on; 0-based: 0.012 at ``e = 10``, 0.3 from ``e = 34`` -- so also from ``e = R`` on).
    Every epoch keeps all positive images and each negative image independently with
    probability ``p(e)``. A *negative* image is one without tags (the binary format's negative
    class); with K classes every other image is positive, whatever its classes. A dataset whose
    every image holds a class (the multi-class demo, WSSS4LUAD) has no negatives, and the
    curriculum changes nothing there: its background is learnt from the background pixels of the
    tagged images (or, with ``pseudo_masks.background: tissue``, only the non-tissue is).

Training (:func:`train`)
    * images and label maps are read once and kept in memory (uint8;
      :meth:`histo_wsss.classes.LabelSpace.read_labels`);
    * batches hold images of ONE size only (:func:`histo_wsss.batching.size_batches`): the
      epoch's images are shuffled, grouped by size and cut into ``batch_size`` chunks; a
      trailing chunk of one image joins the previous chunk of its size (BatchNorm cannot train
      on one image: the ASPP pooling branch sees one value per channel), a size seen only once
      in the epoch is skipped (logged; never with ``crop_size``, where every crop has one
      size); the batch order is shuffled. ``n_train_images`` counts the images actually used;
    * augmentation applied jointly to image and mask with albumentations
      (:class:`histo_wsss.training.Augmentation`: the random crop with ``crop_size``, horizontal
      + vertical flips, ``RandomRotate90`` -- square images or crops only, it would change the
      shape of others --; ``ColorJitter`` touches the image only), every image of every
      epoch with its own seeds derived from ``(seed, epoch, index)``, independent of the batch
      order and ``num_workers``; normalisation as the classifier
      (:func:`histo_wsss.classifier.preprocess`, ImageNet mean/std);
    * SGD (``lr``, ``momentum``, ``weight_decay``) at a constant learning rate (the paper names
      no schedule), ``clip_grad_norm_(grad_clip)`` on every step;
    * validation after every epoch on ALL validation images (positives and negatives), whole,
      in eval mode, predicting the label rule above, against the masks the network
      trains on (``targets``: the pseudo-masks, or the real masks with ``ground_truth``), which
      the names say (:func:`histo_wsss.evaluation.val_iou_columns`; ``<ref>`` is ``pseudo`` or
      ``truth``): a pseudo-mask-trained network's scores against the real masks are the
      evaluation's (``truth_*``), never these;

      - ``val_iou_vs_<ref>_pooled``: pooled IoU -- ``tp / (tp + fp + fn)`` of the pixel counts
        summed over every validation image (:func:`histo_wsss.metrics.scores_from_counts`), so
        false positives on negative images count; for K classes
        ``val_mean_class_iou_vs_<ref>_pooled``, the mean over the K classes of each class's
        pooled IoU (one class against the rest, from the label confusion matrix summed over
        the images), which is the same number for K = 1;
      - ``val_iou_vs_<ref>_positive_mean``: mean of the per-image IoUs of the positive (label 1)
        images (the reference code's metric; 1.0 for an empty prediction on an empty mask); NaN
        without positive validation images; for K classes
        ``val_mean_class_iou_vs_<ref>_positive_mean``: per image with tags, the mean IoU of its
        tags' classes, averaged over those images;
      - ``val_head_accuracy``: share of (image, class) pairs whose head probability ``>= 0.5``
        agrees with the tag (K = 1: of images whose head agrees with the label);
      - ``val_loss``: the loss of each validation batch (same-size images, up to ``batch_size``,
        in the given order) weighted by its size;
    * the checkpoint is (re)written atomically whenever the pooled IoU beats the
      best so far (:func:`is_improvement`: strictly higher, ties keep the earlier epoch);
      training stops early once ``patience`` epochs in a row have not improved
      (:func:`should_stop`);
    * the metrics CSV (:func:`metrics_columns`) is rewritten atomically after every epoch;
    * deterministic on the CPU: seeds from ``seed``, ``torch.use_deterministic_algorithms(True,
      warn_only=True)`` while training (restored afterwards); the same config and data give the
      same metrics CSV apart from the wall-clock ``seconds`` column, and the same checkpoint.
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
import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from histo_wsss.batching import same_size_runs, size_batches
from histo_wsss.classes import IGNORE, LabelSpace
from histo_wsss.classifier import ARCHS as TORCHVISION_RESNETS
from histo_wsss.classifier import CROP, WEIGHTS, preprocess
from histo_wsss.classifier import build_model as _torchvision_resnet
from histo_wsss.device import resolve_device
from histo_wsss.evaluation import predicted_labels, val_iou_columns
from histo_wsss.io import read_rgb, write_csv
from histo_wsss.logs import progress
from histo_wsss.metrics import label_confusion, label_counts, scores_from_counts
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
from histo_wsss.weights import parse as parse_weights
from histo_wsss.weights import recorded_config

__all__ = [
    "ARCHS",
    "CHECKPOINT_KEYS",
    "DEFAULTS",
    "HEAD_DROPOUT",
    "TARGETS",
    "SegmentationLoss",
    "build_model",
    "epoch_items",
    "forward_padded",
    "is_improvement",
    "label_targets",
    "load_checkpoint",
    "metrics_columns",
    "negative_probability",
    "predict",
    "resolve_config",
    "should_stop",
    "train",
]

_log = logging.getLogger(__name__)

ARCHS = {"DeepLabV3Plus": smp.DeepLabV3Plus, "Unet": smp.Unet}
HEAD_DROPOUT = 0.2
CHECKPOINT_KEYS = ("arch", "encoder", "state_dict", "epoch", "metrics", "config")
#: What the network may train on (``targets``) and the reference its validation IoUs name.
TARGETS = {"pseudo": "pseudo", "ground_truth": "truth"}
_TARGET_WORDS = {"pseudo": "the pseudo-masks", "ground_truth": "the real masks"}


def metrics_columns(targets: str, k: int = 1) -> tuple[str, ...]:
    """Columns of the metrics CSV of a network of ``k`` classes trained on ``targets`` (a
    :data:`TARGETS` key): its validation IoUs are named after the masks they are measured
    against."""
    return (
        "epoch",
        "n_train_images",
        "train_loss",
        "val_loss",
        *val_iou_columns(TARGETS[targets], k),
        "val_head_accuracy",
        "lr",
        "seconds",
    )


DEFAULTS: dict = {
    "arch": "DeepLabV3Plus",
    "encoder": "resnet101",
    "encoder_weights": None,
    "targets": "pseudo",
    "crop_size": None,
    "epochs": 50,
    "batch_size": 16,
    "lr": 0.001,
    "momentum": 0.9,
    "weight_decay": 0.001,
    "grad_clip": 1.0,
    "dice_weight": 1.0,
    "lovasz_weight": 0.5,
    "bce_head_weight": 0.2,
    "pixel_bce_weight": 0.0,
    "easy_example_mining": False,
    "positive_only_epochs": 10,
    "negative_ramp_epochs": 35,
    "negative_max_prob": 0.3,
    "patience": 10,
    "threshold": 0.5,
    "augment": {
        "flip": True,
        "rotate90": True,
        "brightness": 0.1,
        "contrast": 0.1,
        "saturation": 0.1,
        "hue": 0.02,
    },
    "seed": 0,
    "device": "auto",
    "num_workers": 0,
}

# the weights of the loss terms on the masks (SegmentationLoss)
MASK_LOSSES = ("dice_weight", "lovasz_weight", "pixel_bce_weight")

# Independent random streams of one training run, each seeded from (seed, stream, epoch[, i]).
_CURRICULUM, _BATCHES, _AUGMENT = 1, 2, 3


# --------------------------------------------------------------------------------------------
# Config


def resolve_config(cfg: Mapping | None = None) -> dict:
    """Merge ``cfg`` over :data:`DEFAULTS` (``augment`` key by key) and validate the values.

    Raises ``ValueError`` naming an unknown key (``augment.foo`` for nested ones) or an invalid
    value. Returns a new dict; ``encoder_weights`` becomes ``None`` (``null``/``none``: random
    init), ``"imagenet"`` or a path string (:func:`histo_wsss.weights.parse`).
    """
    out = merge_config("segmentation", cfg, DEFAULTS)

    require("segmentation", out["arch"] in ARCHS, "arch", out["arch"], f"one of {tuple(ARCHS)}")
    require(
        "segmentation",
        isinstance(out["encoder"], str),
        "encoder",
        out["encoder"],
        "an smp encoder name",
    )
    w = out["encoder_weights"]
    ok = w is None or isinstance(w, str | os.PathLike)
    require("segmentation", ok, "encoder_weights", w, WEIGHTS)
    out["encoder_weights"] = parse_weights(w)
    t = out["targets"]
    require("segmentation", t in TARGETS, "targets", t, f"one of {tuple(TARGETS)}")
    c = out["crop_size"]
    require("segmentation", c is None or (is_int(c) and c >= 32), "crop_size", c, CROP)
    for key in ("epochs", "batch_size", "patience"):
        require(
            "segmentation", is_int(out[key]) and out[key] >= 1, key, out[key], "an integer >= 1"
        )
    for key in ("positive_only_epochs", "negative_ramp_epochs", "seed", "num_workers"):
        require(
            "segmentation", is_int(out[key]) and out[key] >= 0, key, out[key], "an integer >= 0"
        )
    for key in ("lr", "grad_clip"):
        require("segmentation", is_num(out[key]) and out[key] > 0, key, out[key], "a number > 0")
    m = out["momentum"]
    require("segmentation", is_num(m) and 0 <= m < 1, "momentum", m, "a number in [0, 1)")
    for key in ("weight_decay", *MASK_LOSSES, "bce_head_weight"):
        require("segmentation", is_num(out[key]) and out[key] >= 0, key, out[key], "a number >= 0")
    if not any(out[key] for key in MASK_LOSSES):
        raise ValueError(f"segmentation config: {', '.join(MASK_LOSSES)} are all 0: no mask loss")
    mining = out["easy_example_mining"]
    require("segmentation", isinstance(mining, bool), "easy_example_mining", mining, "true/false")
    if mining and not out["pixel_bce_weight"]:
        raise ValueError(
            "segmentation config: easy_example_mining weighs the pixel BCE, but "
            "pixel_bce_weight is 0"
        )
    p = out["negative_max_prob"]
    require("segmentation", is_num(p) and 0 <= p <= 1, "negative_max_prob", p, "a number in [0, 1]")
    t = out["threshold"]
    require("segmentation", is_num(t) and 0 < t < 1, "threshold", t, "a number in (0, 1)")
    check_augment("segmentation", out["augment"])
    require("segmentation", isinstance(out["device"], str), "device", out["device"], "a string")
    return out


# --------------------------------------------------------------------------------------------
# Model


def _make_model(arch: str, encoder: str, k: int = 1) -> nn.Module:
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; choose one of {tuple(ARCHS)}")
    return ARCHS[arch](
        encoder_name=encoder,
        encoder_weights=None,  # never downloads
        in_channels=3,
        classes=k,
        activation=None,
        aux_params={"classes": k, "pooling": "avg", "dropout": HEAD_DROPOUT, "activation": None},
    )


def _load_encoder_weights(model: nn.Module, encoder: str, weights: str) -> None:
    """Load torchvision ResNet weights (``imagenet`` or a state-dict file) into
    ``model.encoder`` (their ``fc`` dropped).

    They are read and checked (keys and shapes) by :func:`histo_wsss.classifier.build_model`,
    which raises ``ValueError`` naming the file and the mismatched keys.
    """
    if encoder not in TORCHVISION_RESNETS:
        raise ValueError(
            f"{weights}: encoder_weights are supported for the torchvision ResNet encoders "
            f"{TORCHVISION_RESNETS} only, not for encoder {encoder!r}"
        )
    resnet = _torchvision_resnet(encoder, weights)
    state = {k: v for k, v in resnet.state_dict().items() if not k.startswith("fc.")}
    try:
        model.encoder.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ValueError(f"{weights}: does not fit smp's {encoder} encoder: {err}") from err
    _log.info("%s: loaded into the %s encoder (fc dropped)", weights, encoder)


def build_model(cfg: Mapping | None = None, k: int = 1) -> nn.Module:
    """The segmentation network of ``k`` classes of the (resolved) config ``cfg`` (``arch``,
    ``encoder``, ``encoder_weights``), in training mode.

    ``encoder_weights=None``: random initialisation (a WARNING is logged). Otherwise
    ``imagenet`` (torchvision's ImageNet weights, :mod:`histo_wsss.weights`) or the path of a
    local torchvision ResNet state dict (``encoder`` must be one of ``resnet18/34/50/101``):
    their ``fc`` keys are dropped, every other tensor must match the encoder (``ValueError``
    naming the file and the keys otherwise).
    """
    cfg = resolve_config(cfg)
    model = _make_model(cfg["arch"], cfg["encoder"], k)
    if cfg["encoder_weights"] is None:
        _log.warning(
            "%s/%s: no encoder_weights given, the encoder starts from random weights",
            cfg["arch"],
            cfg["encoder"],
        )
    else:
        _load_encoder_weights(model, cfg["encoder"], cfg["encoder_weights"])
    return model


def _divisor(model: nn.Module) -> int:
    if not getattr(model, "requires_divisible_input_shape", True):
        return 1
    return int(getattr(model.encoder, "output_stride", 32))


def forward_padded(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(mask_logits, head_logits)`` of ``model`` for ``x`` ``(N, C, H, W)`` of any ``H, W``.

    ``mask_logits`` has shape ``(N, K, H, W)``; ``head_logits`` ``(N, K)`` (``None`` for a model
    without a classification head). When the model requires sides divisible by its encoder's
    output stride (smp's DeepLabV3Plus: 16) and ``x`` has other sides, ``x`` is padded to the
    next multiples -- reflect padding (``replicate`` where a side is too short to reflect),
    split as evenly as possible between both sides (the extra pixel after) -- and the mask
    logits are cropped back. Other inputs go to ``model`` unchanged.
    """
    h, w = x.shape[-2:]
    d = _divisor(model)
    ph, pw = (-h) % d, (-w) % d
    if ph or pw:
        top, left = ph // 2, pw // 2
        pads = (left, pw - left, top, ph - top)
        mode = "reflect" if max(top, ph - top) < h and max(left, pw - left) < w else "replicate"
        x = F.pad(x, pads, mode=mode)
    out = model(x)
    masks, head = out if isinstance(out, tuple) else (out, None)
    if ph or pw:
        masks = masks[..., top : top + h, left : left + w]
    return masks, head


# --------------------------------------------------------------------------------------------
# Loss


class SegmentationLoss(nn.Module):
    """``dice_weight * Dice + lovasz_weight * Lovasz + pixel_bce_weight * pixel BCE +
    bce_head_weight * BCE`` (module docstring).

    ``forward(mask_logits (N, K, H, W), head_logits (N, K), masks (N, K, H, W) float: 0/1 per
    class and :data:`histo_wsss.classes.IGNORE` where unlabelled (:func:`label_targets`),
    labels (N, K) 0/1 float: the tags)`` returns the scalar loss; :meth:`parts` the four
    unweighted terms.
    """

    def __init__(
        self,
        dice_weight: float = 1.0,
        lovasz_weight: float = 0.5,
        bce_head_weight: float = 0.2,
        pixel_bce_weight: float = 0.0,
        easy_example_mining: bool = False,
    ) -> None:
        super().__init__()
        self.dice_weight = float(dice_weight)
        self.lovasz_weight = float(lovasz_weight)
        self.bce_head_weight = float(bce_head_weight)
        self.pixel_bce_weight = float(pixel_bce_weight)
        self.easy_example_mining = bool(easy_example_mining)
        self.dice = smp.losses.DiceLoss(mode="multilabel", from_logits=True, ignore_index=IGNORE)
        self.lovasz = smp.losses.LovaszLoss(mode="multilabel", per_image=False, ignore_index=IGNORE)
        self.pixel_bce = smp.losses.SoftBCEWithLogitsLoss(ignore_index=IGNORE, reduction="none")
        self.bce = nn.BCEWithLogitsLoss()

    def pixel_bce_term(self, mask_logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """The BCE of every labelled pixel (mean over its K channels), averaged over the
        labelled pixels of the batch, weighted by :func:`easy_example_weights` when
        ``easy_example_mining``."""
        labelled = (masks != IGNORE).all(1)
        losses = self.pixel_bce(mask_logits, masks).mean(1)
        weights = labelled.to(losses.dtype)
        if self.easy_example_mining:
            weights = easy_example_weights(losses, masks)
        return (losses * weights).sum() / labelled.sum().clamp(min=1)

    def _terms(self, mask_logits, head_logits, masks, labels) -> dict:
        """Each term's weight and a function computing it, unweighted."""
        return {
            "dice": (self.dice_weight, lambda: self.dice(mask_logits, masks)),
            "lovasz": (self.lovasz_weight, lambda: self.lovasz(mask_logits, masks)),
            "pixel_bce": (self.pixel_bce_weight, lambda: self.pixel_bce_term(mask_logits, masks)),
            "bce_head": (self.bce_head_weight, lambda: self.bce(head_logits, labels)),
        }

    def parts(
        self,
        mask_logits: torch.Tensor,
        head_logits: torch.Tensor,
        masks: torch.Tensor,
        labels: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        terms = self._terms(mask_logits, head_logits, masks, labels)
        return {name: term() for name, (_, term) in terms.items()}

    def forward(
        self,
        mask_logits: torch.Tensor,
        head_logits: torch.Tensor,
        masks: torch.Tensor,
        labels: torch.Tensor,
    ) -> torch.Tensor:
        # a term of weight 0 is not computed: the Lovasz hinge sorts every pixel of the batch
        terms = self._terms(mask_logits, head_logits, masks, labels).values()
        return sum(weight * term() for weight, term in terms if weight)


def easy_example_weights(losses: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Online easy example mining (OEEM; Li et al., MICCAI 2022): ``(N, H, W)`` weights of the
    pixel losses ``losses`` ``(N, H, W)``. In each image, the softmax of the negated (detached)
    losses over its labelled pixels, times their number: mean 1, most weight on the pixels the
    network already fits, least on those whose pseudo-label it contradicts (likely noise).
    Unlabelled pixels weigh 0; an image whose labelled pixels all hold one target (one class,
    or background only) keeps weight 1, as in OEEM: nothing there to tell noise from signal."""
    labelled = (masks != IGNORE).all(1)
    weights = labelled.to(losses.dtype)
    for i in range(len(losses)):
        where = labelled[i]
        if torch.unique(masks[i][:, where], dim=1).shape[1] < 2:
            continue
        weights[i][where] = torch.softmax(-losses[i][where].detach(), 0) * where.sum()
    return weights


def _loss_fn(cfg: Mapping) -> SegmentationLoss:
    return SegmentationLoss(
        cfg["dice_weight"],
        cfg["lovasz_weight"],
        cfg["bce_head_weight"],
        cfg["pixel_bce_weight"],
        cfg["easy_example_mining"],
    )


def label_targets(labels: np.ndarray, k: int) -> np.ndarray:
    """float32 ``(..., K, H, W)`` loss targets of label maps ``(..., H, W)``: channel ``c`` is 1
    where the label is ``c + 1`` and 0 elsewhere, :data:`histo_wsss.classes.IGNORE` in every
    channel where the pixel is unlabelled."""
    labels = np.asarray(labels)
    channels = np.arange(1, k + 1).reshape(k, 1, 1)
    targets = (labels[..., None, :, :] == channels).astype(np.float32)
    return np.where(labels[..., None, :, :] == IGNORE, np.float32(IGNORE), targets)


# --------------------------------------------------------------------------------------------
# Curriculum, batching, model selection


def negative_probability(epoch: int, cfg: Mapping) -> float:
    """Probability of drawing each negative image at ``epoch`` (0-based; module docstring)."""
    start, ramp = cfg["positive_only_epochs"], cfg["negative_ramp_epochs"]
    top = cfg["negative_max_prob"]
    if epoch < start:
        return 0.0
    if ramp <= start:
        return float(top)
    return float(top) * min(1.0, (epoch - start + 1) / (ramp - start))


def epoch_items(items: Sequence, epoch: int, cfg: Mapping, rng: np.random.Generator) -> list:
    """The training items of ``epoch``: every positive item and each negative one with
    probability :func:`negative_probability` (drawn with ``rng``, one uniform number per
    negative item in order, none when the probability is 0). An item's label (0/1: whether the
    image has a tag) is its last element. The items keep their order.
    """
    p = negative_probability(epoch, cfg)
    negatives = [i for i, item in enumerate(items) if int(item[-1]) == 0]
    keep = set()
    if p > 0 and negatives:
        keep = {i for i, u in zip(negatives, rng.random(len(negatives)), strict=True) if u < p}
    return [item for i, item in enumerate(items) if int(item[-1]) == 1 or i in keep]


def is_improvement(value: float, best: float | None) -> bool:
    """Whether a validation IoU ``value`` beats ``best`` (``None``: no epoch yet): strictly
    higher; NaN never improves; ties keep the earlier epoch."""
    if value is None or math.isnan(value):
        return False
    return best is None or math.isnan(best) or value > best


def should_stop(values: Sequence[float], patience: int) -> bool:
    """Early stopping: whether the last ``patience`` of the per-epoch ``values`` (val IoU, in
    epoch order) all failed to improve on the best before them (:func:`is_improvement`)."""
    best, best_epoch = None, -1
    for epoch, value in enumerate(values):
        if is_improvement(value, best):
            best, best_epoch = value, epoch
    return len(values) - 1 - best_epoch >= patience


# --------------------------------------------------------------------------------------------
# Data


class _Data:
    """The images (uint8 HxWx3), label maps (uint8 HxW: 0 background, ``c`` class ``c - 1``,
    255 unlabelled), tags (``(N, K)`` 0/1) and labels (0/1: any tag) of one split, in memory.

    An item's third element is its tags: a sequence of K 0/1 values, or for K = 1 the binary
    label 0/1 itself. ``k``: the number of classes (None: the first item's)."""

    def __init__(self, items: Iterable, split: str, k: int | None = None) -> None:
        self.paths: list[str] = []
        self.images: list[np.ndarray] = []
        self.masks: list[np.ndarray] = []
        tags: list[np.ndarray] = []
        marked_negatives = []
        space = None
        for i, item in enumerate(items):
            try:
                image_path, mask_path, label = item
            except (TypeError, ValueError) as err:
                raise ValueError(
                    f"{split} item {i}: expected (image_path, mask_path, tags), got {item!r}"
                ) from err
            vector = _tag_vector(label, k)
            if vector is None:
                raise ValueError(
                    f"{split} item {i} ({image_path}): label must be 0 or 1 (tags: a 0/1 value "
                    f"per class{'' if k is None else f', {k} of them'}), got {label!r}"
                )
            k = len(vector)
            space = space or LabelSpace(tuple(f"class{c}" for c in range(k)))
            image, mask = read_rgb(image_path), space.read_labels(mask_path)
            if mask.shape != image.shape[:2]:
                raise ValueError(
                    f"{mask_path}: mask is {mask.shape} but its image {image_path} is "
                    f"{image.shape[:2]}"
                )
            bad = set(np.unique(mask).tolist()) - set(range(k + 1)) - {IGNORE}
            if bad:
                raise ValueError(
                    f"{mask_path}: label map holds {sorted(bad)}, not a label of {k} class(es) "
                    f"(0..{k}, or {IGNORE} for unlabelled)"
                )
            if not vector.any() and ((mask > 0) & (mask != IGNORE)).any():
                marked_negatives.append(str(mask_path))
            self.paths.append(str(image_path))
            self.images.append(image)
            self.masks.append(mask)
            tags.append(vector)
        if not self.paths:
            raise ValueError(f"the {split} split is empty")
        if marked_negatives:
            _log.warning(
                "%s split: %d negative image(s) have a non-empty mask (kept as they are), e.g. %s",
                split,
                len(marked_negatives),
                marked_negatives[0],
            )
        self.k = k
        self.tags = np.stack(tags)
        self.labels = self.tags.any(axis=1).astype(np.int64)
        self.sizes = [im.shape[:2] for im in self.images]

    def __len__(self) -> int:
        return len(self.paths)


def _tag_vector(label: object, k: int | None) -> np.ndarray | None:
    """float32 ``(K,)`` tags of an item's label (a 0/1 value: K = 1; or K of them); None when
    it is not that."""
    if isinstance(label, str):
        return None
    try:
        vector = np.atleast_1d(np.asarray(label, dtype=np.float64))
    except (TypeError, ValueError):
        return None
    ok = vector.ndim == 1 and vector.size >= 1 and np.isin(vector, (0, 1)).all()
    if not ok or (k is not None and vector.size != k):
        return None
    return vector.astype(np.float32)


class _SegDataset(Dataset):
    """In-memory items -> (normalised image (3, H, W), targets (K, H, W): :func:`label_targets`,
    tags (K,)).

    Image and mask are augmented together by ``augment``, seeded for item ``index`` in
    ``epoch`` from ``(seed, _AUGMENT, epoch, index)`` (one seed per transform, as in the
    classifier).
    """

    def __init__(self, data: _Data, augment: Augmentation, seed: int) -> None:
        self.data, self.augment, self.seed = data, augment, seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        out = self.augment(
            (self.seed, _AUGMENT, self.epoch, index),
            image=self.data.images[index],
            mask=self.data.masks[index],
        )
        targets = torch.from_numpy(label_targets(out["mask"], self.data.k))
        tags = torch.from_numpy(self.data.tags[index])
        return preprocess(np.ascontiguousarray(out["image"])), targets, tags


# --------------------------------------------------------------------------------------------
# Training


def train(
    train_items: Sequence[tuple[str | os.PathLike, str | os.PathLike, object]],
    val_items: Sequence[tuple[str | os.PathLike, str | os.PathLike, object]],
    cfg: Mapping | None,
    checkpoint_path: str | os.PathLike,
    metrics_path: str | os.PathLike,
    log: logging.Logger | None = None,
) -> dict:
    """Train the segmentation network; write the best checkpoint and the per-epoch metrics CSV.

    ``train_items`` / ``val_items``: ``(image_path, mask_path, tags)`` -- RGB images, their
    label maps (``targets``: the pseudo-masks or the real masks, PNGs as
    :meth:`histo_wsss.classes.LabelSpace.write_labels` writes them: for K = 1 non-zero =
    foreground, all-zero for negative images) and their tags (K 0/1 values, one per class; for
    K = 1 the image label 0/1 may stand for them). K, the network's number of classes, is the
    items' number of tags.
    Images may differ in size (batches hold one size). ``cfg``: the ``segmentation`` config (see
    :data:`DEFAULTS`, :func:`resolve_config`, the module docstring for the procedure).

    ``checkpoint_path`` is (re)written atomically whenever an epoch improves the validation IoU:
    ``torch.save`` of ``{"arch", "encoder", "state_dict" (CPU tensors), "epoch", "metrics" (that
    epoch's row without ``seconds``), "config" (the resolved config, a local ``encoder_weights``
    file by its name only: the checkpoint does not depend on the folder a run lives in)}``.
    ``metrics_path`` (CSV, columns :func:`metrics_columns`, one row per epoch, ``epoch`` from 1
    as in the log, ``lr`` the SGD learning rate, ``seconds`` wall-clock) is rewritten atomically
    after every epoch.

    Raises ``ValueError`` for unusable items or an epoch without a trainable batch (fewer than
    two same-size images), ``FloatingPointError`` on a non-finite training loss. Returns the
    best epoch's metrics (the checkpoint's ``metrics``).
    """
    log = log or _log
    cfg = resolve_config(cfg)
    device = resolve_device(cfg["device"])
    log.info("loading %d train and %d val items", len(train_items), len(val_items))
    train_data = _Data(train_items, "train")
    val_data = _Data(val_items, "val", train_data.k)
    if not train_data.labels.any():
        raise ValueError("the train split has no positive (label 1) image")
    with deterministic(device, cfg["seed"]):
        return _train(cfg, device, train_data, val_data, Path(checkpoint_path),
                      Path(metrics_path), log)  # fmt: skip


def _train(
    cfg: dict,
    device: torch.device,
    train_data: _Data,
    val_data: _Data,
    checkpoint_path: Path,
    metrics_path: Path,
    log: logging.Logger,
) -> dict:
    recorded = recorded_config(cfg, "encoder_weights")  # the weights file by its name only
    model = build_model(cfg, train_data.k).to(device)
    loss_fn = _loss_fn(cfg)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=cfg["lr"], momentum=cfg["momentum"], weight_decay=cfg["weight_decay"]
    )
    dataset = _SegDataset(train_data, Augmentation(cfg["augment"], cfg["crop_size"]), cfg["seed"])
    train_sizes = training_sizes(train_data.sizes, cfg["crop_size"])
    labelled = [(i, int(positive)) for i, positive in enumerate(train_data.labels)]
    val_batches = size_batches(range(len(val_data)), val_data.sizes, cfg["batch_size"])
    epochs, seed = cfg["epochs"], cfg["seed"]
    reference = TARGETS[cfg["targets"]]
    columns = metrics_columns(cfg["targets"], train_data.k)
    selected, positive_mean = val_iou_columns(reference, train_data.k)
    log.info(
        "training %s/%s (%d class(es)) on %s: %d train (%d positive) / %d val images, up to %d "
        "epochs, selecting the checkpoint on %s (IoU against %s of the val images)",
        cfg["arch"], cfg["encoder"], train_data.k, device_label(device), len(train_data),
        int(train_data.labels.sum()), len(val_data), epochs, selected,
        _TARGET_WORDS[cfg["targets"]],
    )  # fmt: skip

    rows: list[dict] = []
    history: list[float] = []
    best: dict | None = None
    for epoch in range(epochs):
        start = time.perf_counter()
        rng = np.random.default_rng([seed, _CURRICULUM, epoch])
        chosen = [i for i, _ in epoch_items(labelled, epoch, cfg, rng)]
        rng = np.random.default_rng([seed, _BATCHES, epoch])
        batches = size_batches(chosen, train_sizes, cfg["batch_size"], rng)
        n_used = sum(map(len, batches))
        if n_used < len(chosen):
            left_out = len(chosen) - n_used
            log.info("epoch %d: %d image(s) of a size seen once left out", epoch + 1, left_out)
        if not batches:
            raise ValueError(
                f"epoch {epoch + 1}: no trainable batch among its {len(chosen)} image(s) (a batch "
                f"needs at least 2 images of the same size)"
            )
        dataset.epoch = epoch
        loader = DataLoader(
            dataset,
            batch_sampler=batches,
            num_workers=cfg["num_workers"],
            pin_memory=device.type == "cuda",
        )
        model.train()
        total = 0.0
        clock = LoaderClock(loader)
        bar = progress(clock, f"epoch {epoch + 1}/{epochs}", "batch", lines=0)
        for x, m, y in bar:
            x, m, y = (t.to(device, non_blocking=True) for t in (x, m, y))
            optimizer.zero_grad(set_to_none=True)
            mask_logits, head_logits = forward_padded(model, x)
            loss = loss_fn(mask_logits, head_logits, m, y)
            value = loss.item()
            if not math.isfinite(value):
                raise FloatingPointError(
                    f"epoch {epoch + 1}: training loss is {value}; try a lower lr"
                )
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), cfg["grad_clip"])
            optimizer.step()
            total += value * len(x)
            bar.set_postfix(loss=f"{value:.4f}")
        bar.close()

        val = _validate(model, val_data, val_batches, loss_fn, cfg["threshold"], device, reference)
        row = {
            "epoch": epoch + 1,
            "n_train_images": n_used,
            "train_loss": total / n_used,
            **val,
            "lr": float(optimizer.param_groups[0]["lr"]),
            "seconds": round(time.perf_counter() - start, 3),
        }
        row = {k: row[k] for k in columns}
        rows.append(row)
        write_csv(metrics_path, pd.DataFrame(rows, columns=list(columns)))
        improved = is_improvement(row[selected], None if best is None else best[selected])
        history.append(row[selected])
        if improved:
            best = {k: v for k, v in row.items() if k != "seconds"}
            save_checkpoint(
                checkpoint_path,
                {
                    "arch": cfg["arch"],
                    "encoder": cfg["encoder"],
                    "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                    "epoch": epoch + 1,
                    "metrics": best,
                    "config": recorded,
                },
            )
        log.info(
            "epoch %d/%d: %d images, train_loss %.4f val_loss %.4f %s %.4f %s %.4f "
            "val_head_accuracy %.4f, %.1f s (%s)%s",
            *(epoch + 1, epochs, n_used, row["train_loss"], row["val_loss"]),
            *(selected, row[selected], positive_mean, row[positive_mean]),
            *(row["val_head_accuracy"], row["seconds"]),
            clock.summary(),
            " (best so far, saved)" if improved else "",
        )
        if should_stop(history, cfg["patience"]):
            log.info(
                "early stopping: no better %s in the last %d epochs", selected, cfg["patience"]
            )
            break
    if best is None:
        raise RuntimeError(f"no epoch had a finite {selected}; no checkpoint was written")
    log.info(
        "best epoch %d: %s %.4f -> %s", best["epoch"], selected, best[selected], checkpoint_path
    )
    return best


def _validate(
    model: nn.Module,
    data: _Data,
    batches: Sequence[Sequence[int]],
    loss_fn: SegmentationLoss,
    threshold: float,
    device: torch.device,
    reference: str,
) -> dict:
    """``val_loss``, the IoUs vs ``reference`` (:func:`histo_wsss.evaluation.val_iou_columns`:
    pooled, positive mean; module docstring) and ``val_head_accuracy``."""
    was_training = model.training
    model.eval()
    k = data.k
    cms = np.zeros((len(data), k + 1, k + 1), dtype=np.int64)  # label confusion per image
    head_prob = np.zeros((len(data), k), dtype=np.float64)
    loss_sum = 0.0
    try:
        with torch.inference_mode():
            for batch in batches:
                x = preprocess(np.stack([data.images[i] for i in batch])).to(device)
                target = np.stack([data.masks[i] for i in batch])
                m = torch.from_numpy(label_targets(target, k)).to(device)
                y = torch.from_numpy(data.tags[batch]).to(device)
                mask_logits, head_logits = forward_padded(model, x)
                loss_sum += float(loss_fn(mask_logits, head_logits, m, y)) * len(batch)
                probs = torch.sigmoid(mask_logits.float()).cpu().numpy()
                for i, prob, truth in zip(batch, probs, target, strict=True):
                    cms[i] = label_confusion(predicted_labels(prob, threshold), truth, k + 1)
                head_prob[batch] = torch.sigmoid(head_logits.float()).cpu().numpy()
    finally:
        model.train(was_training)
    # per class (labels 1..K) against the rest: pooled over the images, and per image
    pooled = scores_from_counts(*(c[1:] for c in label_counts(cms.sum(0))))["iou"]
    per_image = np.stack([scores_from_counts(*label_counts(cm))["iou"][1:] for cm in cms])
    tagged = data.tags > 0
    positive = data.labels == 1
    image_means = [per_image[i][tagged[i]].mean() for i in np.flatnonzero(positive)]
    pooled_name, mean_name = val_iou_columns(reference, k)
    return {
        "val_loss": loss_sum / len(data),
        pooled_name: float(pooled.mean()),
        mean_name: float(np.mean(image_means)) if image_means else math.nan,
        "val_head_accuracy": float(np.mean((head_prob >= 0.5) == tagged)),
    }


# --------------------------------------------------------------------------------------------
# Inference


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu") -> nn.Module:
    """The segmentation network saved by :func:`train` at ``path``, on ``device``, in eval mode
    (its K classes: the number of its mask channels).

    ``device``: a ``torch.device`` or a name for :func:`histo_wsss.device.resolve_device`.
    Raises ``ValueError`` naming the file when it is missing, unreadable, or not such a
    checkpoint (e.g. a classifier checkpoint).
    """
    path = Path(path)
    ckpt = read_checkpoint(path, "segmentation", CHECKPOINT_KEYS)
    if ckpt["arch"] not in ARCHS:
        raise ValueError(f"{path}: unknown arch {ckpt['arch']!r} in checkpoint")
    state = ckpt["state_dict"]
    head = state.get("segmentation_head.0.weight") if isinstance(state, Mapping) else None
    try:
        model = _make_model(ckpt["arch"], ckpt["encoder"], 1 if head is None else head.shape[0])
        model.load_state_dict(state, strict=True)
    except (RuntimeError, TypeError, AttributeError, KeyError, ValueError) as err:
        raise ValueError(
            f"{path}: state_dict does not match {ckpt['arch']}/{ckpt['encoder']}: {err}"
        ) from err
    return model.to(as_device(device)).eval()


def predict(
    model: nn.Module,
    image_paths: Iterable[str | os.PathLike],
    batch_size: int = 16,
    device: str | torch.device = "cpu",
) -> Iterator[tuple[str | os.PathLike, np.ndarray, float]]:
    """Yield ``(path, prob_maps, head_probs)`` for every image, in the order given.

    ``prob_maps``: float32 ``(K, H, W)``, each class's probabilities at the image's own size;
    ``head_probs``: float32 ``(K,)``, the classification head's probability of each class. Images
    are read lazily and batched: consecutive images of the same size, up to ``batch_size`` per
    forward pass (a size change starts a new batch), normalised as in training, run in eval mode
    without gradients (the
    model's mode is restored when the iterator finishes or is closed).
    """
    device = as_device(device)
    model.to(device)
    was_training = model.training
    model.eval()
    images = ((path, read_rgb(path)) for path in image_paths)
    try:
        for run in same_size_runs(images, batch_size, lambda item: item[1].shape):
            yield from _predict_batch(model, run, device)
    finally:
        model.train(was_training)


def _predict_batch(model: nn.Module, pending: Sequence[tuple], device: torch.device) -> list:
    with torch.inference_mode():
        x = preprocess(np.stack([image for _, image in pending])).to(device)
        mask_logits, head_logits = forward_padded(model, x)
        probs = torch.sigmoid(mask_logits.float()).cpu().numpy().astype(np.float32)
        heads = torch.sigmoid(head_logits.float()).cpu().numpy().astype(np.float32)
    return [(path, probs[i], heads[i]) for i, (path, _) in enumerate(pending)]


# --------------------------------------------------------------------------------------------
# Figure
