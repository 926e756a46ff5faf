"""The segmentation network: odd input sizes, loss, curriculum, a real tiny training run."""

import logging
import math

import numpy as np
import pandas as pd
import pytest
import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F
from synthetic import square_items
from torchvision.models import resnet18, resnet34

from histo_wsss import segmentation as seg
from histo_wsss.batching import size_batches
from histo_wsss.classes import IGNORE
from histo_wsss.classifier import IMAGENET_MEAN, IMAGENET_STD
from histo_wsss.io import write_png
from histo_wsss.segmentation import (
    DEFAULTS,
    SegmentationLoss,
    build_model,
    easy_example_weights,
    epoch_items,
    forward_padded,
    is_improvement,
    label_targets,
    load_checkpoint,
    metrics_columns,
    negative_probability,
    predict,
    resolve_config,
    should_stop,
    train,
)
from histo_wsss.training import Augmentation

SMALL = {"encoder": "resnet18", "device": "cpu"}


# --------------------------------------------------------------------------------------------
# Config


def test_defaults_are_the_paper_values_and_user_values_merge_over_them():
    cfg = resolve_config({"encoder": "resnet18", "augment": {"hue": 0.0}})
    assert cfg["encoder"] == "resnet18" and DEFAULTS["encoder"] == "resnet101"
    assert cfg["augment"] == {**DEFAULTS["augment"], "hue": 0.0}
    paper = {"arch": "DeepLabV3Plus", "lr": 0.001, "momentum": 0.9, "weight_decay": 0.001}
    paper |= {"dice_weight": 1.0, "lovasz_weight": 0.5, "bce_head_weight": 0.2}
    paper |= {"positive_only_epochs": 10, "negative_ramp_epochs": 35, "negative_max_prob": 0.3}
    paper |= {"threshold": 0.5, "encoder_weights": None}
    assert {k: resolve_config()[k] for k in paper} == paper
    assert DEFAULTS["augment"]["hue"] == 0.02  # the defaults were not modified


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        ({"learning_rate": 0.1}, "unknown segmentation config key.*learning_rate"),
        ({"augment": {"blur": 1}}, r"unknown segmentation config key.*augment\.blur"),
        ({"arch": "FPN"}, "arch must be one of"),
        ({"epochs": 0}, "epochs must be an integer >= 1"),
        ({"negative_max_prob": 1.5}, "negative_max_prob must be"),
        ({"threshold": 1.0}, "threshold must be"),
        (
            {"dice_weight": 0, "lovasz_weight": 0},
            "dice_weight, lovasz_weight, pixel_bce_weight are all 0",
        ),
        (
            {"easy_example_mining": True},
            "easy_example_mining weighs the pixel BCE, but pixel_bce_weight is 0",
        ),
        (
            {"easy_example_mining": 1, "pixel_bce_weight": 1},
            "easy_example_mining must be true/false",
        ),
        ({"pixel_bce_weight": -1}, "pixel_bce_weight must be a number >= 0"),
        ({"patience": True}, "patience must be an integer"),
        ({"targets": "truth"}, "targets must be one of"),
    ],
)
def test_bad_config_values_are_named(cfg, message):
    with pytest.raises(ValueError, match=message):
        resolve_config(cfg)


# --------------------------------------------------------------------------------------------
# Model and input sizes


def _model(arch="DeepLabV3Plus"):
    torch.manual_seed(0)
    return build_model({**SMALL, "arch": arch}).eval()


@pytest.mark.parametrize("size", [(96, 96), (100, 75), (5, 7)])
def test_deeplab_output_has_the_input_size(size):
    model = _model()
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        masks, head = forward_padded(model, x)
    assert masks.shape == (2, 1, *size)
    assert head.shape == (2, 1)
    assert torch.isfinite(masks).all() and torch.isfinite(head).all()


def test_deeplab_pads_only_what_smp_refuses():
    model = _model()
    with torch.no_grad():
        with pytest.raises(RuntimeError, match="divisible by 16"):
            model(torch.randn(1, 3, 100, 75))
        x = torch.randn(2, 3, 96, 96)  # divisible: passed through untouched
        masks, head = forward_padded(model, x)
        ref_masks, ref_head = model(x)
        assert torch.equal(masks, ref_masks) and torch.equal(head, ref_head)
        # an odd size sees the reflect-padded image, cropped back to the original pixels
        x = torch.randn(1, 3, 100, 75)
        padded = F.pad(x, (2, 3, 6, 6), mode="reflect")  # 112 x 80, split evenly
        masks, head = forward_padded(model, x)
        ref_masks, ref_head = model(padded)
        assert torch.equal(masks, ref_masks[..., 6:106, 2:77]) and torch.equal(head, ref_head)


def test_unet_takes_odd_sizes_itself_and_is_not_padded():
    model = _model("Unet")
    x = torch.randn(2, 3, 100, 75)
    with torch.no_grad():
        masks, head = forward_padded(model, x)
        ref_masks, ref_head = model(x)
    assert masks.shape == (2, 1, 100, 75)
    assert torch.equal(masks, ref_masks) and torch.equal(head, ref_head)


def test_random_encoder_is_a_logged_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="histo_wsss.segmentation"):
        build_model(SMALL)
    assert "random weights" in caplog.text


def test_local_torchvision_weights_load_into_the_encoder(tmp_path):
    torch.manual_seed(1)
    source = resnet18(weights=None)  # 1000-class fc, as in torchvision's ImageNet file
    torch.save(source.state_dict(), tmp_path / "r18.pth")
    model = build_model({**SMALL, "encoder_weights": str(tmp_path / "r18.pth")})
    expected = {k: v for k, v in source.state_dict().items() if not k.startswith("fc.")}
    got = model.encoder.state_dict()
    assert set(got) == set(expected)
    assert all(torch.equal(got[k], expected[k]) for k in expected)


def test_wrong_encoder_weight_files_name_the_file(tmp_path):
    torch.save(resnet34(weights=None).state_dict(), tmp_path / "r34.pth")
    with pytest.raises(ValueError, match=r"r34\.pth.*(missing|unexpected) keys.*layer"):
        build_model({**SMALL, "encoder_weights": str(tmp_path / "r34.pth")})
    with pytest.raises(ValueError, match=r"absent\.pth"):
        build_model({**SMALL, "encoder_weights": str(tmp_path / "absent.pth")})
    (tmp_path / "text.pth").write_text("not a state dict")
    with pytest.raises(ValueError, match=r"text\.pth"):
        build_model({**SMALL, "encoder_weights": str(tmp_path / "text.pth")})
    torch.save(resnet18(weights=None).state_dict(), tmp_path / "r18.pth")
    with pytest.raises(ValueError, match=r"r18\.pth.*torchvision ResNet encoders"):
        build_model(
            {**SMALL, "encoder": "mobilenet_v2", "encoder_weights": str(tmp_path / "r18.pth")}
        )


# --------------------------------------------------------------------------------------------
# Loss


@pytest.mark.parametrize("weights", [(1.0, 0.5, 0.2), (0.3, 2.0, 0.0)])
def test_loss_is_the_weighted_sum_of_the_smp_losses(weights):
    torch.manual_seed(0)
    logits = torch.randn(3, 1, 16, 12, requires_grad=True)
    head = torch.randn(3, 1)
    masks = torch.zeros(3, 1, 16, 12)
    masks[0, :, 2:9, 3:8] = 1
    masks[1, :, 10:, :5] = 1  # image 2 is negative: an all-zero mask
    labels = torch.tensor([[1.0], [1.0], [0.0]])
    loss = SegmentationLoss(*weights)(logits, head, masks, labels)
    dice = smp.losses.DiceLoss(mode="binary", from_logits=True)(logits, masks)
    lovasz = smp.losses.LovaszLoss(mode="binary", per_image=False)(logits, masks)
    bce = F.binary_cross_entropy_with_logits(head, labels)
    expected = weights[0] * dice + weights[1] * lovasz + weights[2] * bce
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    per_image = smp.losses.LovaszLoss(mode="binary", per_image=True)(logits, masks)
    assert abs(per_image.item() - lovasz.item()) > 1e-3  # the two choices do differ here
    loss.backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


def _two_class_batch():
    """K = 2 targets of two images: image 0 holds both classes and unlabelled pixels, image 1
    only background (one target vector)."""
    labels = np.zeros((2, 6, 5), np.uint8)
    labels[0, :3] = 1
    labels[0, 3:5, :2] = 2
    labels[0, 5] = IGNORE
    return torch.from_numpy(label_targets(labels, 2))


def test_pixel_bce_is_the_bce_of_the_labelled_pixels_in_the_weighted_sum():
    torch.manual_seed(0)
    masks = _two_class_batch()
    logits = torch.randn(2, 2, 6, 5)
    head, labels = torch.randn(2, 2), torch.tensor([[1.0, 1.0], [0.0, 0.0]])
    labelled = (masks != IGNORE).all(1)
    per_pixel = F.binary_cross_entropy_with_logits(
        logits, masks.clamp(max=1), reduction="none"
    ).mean(1)
    expected = per_pixel[labelled].mean()
    loss = SegmentationLoss(0.0, 0.0, 0.0, pixel_bce_weight=2.0)
    assert loss.parts(logits, head, masks, labels)["pixel_bce"].item() == pytest.approx(
        expected.item(), rel=1e-6
    )
    base = SegmentationLoss()(logits, head, masks, labels)
    both = SegmentationLoss(pixel_bce_weight=2.0)(logits, head, masks, labels)
    assert (both - base).item() == pytest.approx(2 * expected.item(), rel=1e-5)


def test_easy_example_weights_are_oeems_softmax_of_the_negated_losses():
    """Per image with mixed targets: softmax(-loss) over its labelled pixels times their
    number (mean 1, the lowest loss weighs most); unlabelled pixels 0; an image of one target
    vector 1 everywhere it is labelled; no gradient through the weights."""
    masks = _two_class_batch()
    losses = torch.rand(2, 6, 5, generator=torch.Generator().manual_seed(1), requires_grad=True)
    weights = easy_example_weights(losses, masks)
    labelled = (masks != IGNORE).all(1)
    mine = weights[0][labelled[0]]
    expected = torch.softmax(-losses[0][labelled[0]], 0) * labelled[0].sum()
    torch.testing.assert_close(mine, expected.detach())
    assert mine.mean().item() == pytest.approx(1.0, rel=1e-6)
    assert mine.argmax() == losses[0][labelled[0]].argmin()
    assert not weights[0][~labelled[0]].any()
    assert torch.equal(weights[1], torch.ones(6, 5))
    assert not weights.requires_grad


def test_easy_example_mining_turns_the_gradient_away_from_a_contradicted_pixel():
    """The network fits every pixel but one whose pseudo-label it contradicts (noise): without
    mining that pixel's gradient is 20 times a fitted pixel's, with it no larger."""
    labels = np.zeros((1, 8, 8), np.uint8)
    labels[0, :4] = 1
    masks = torch.from_numpy(label_targets(labels, 1))
    fitted = torch.where(masks > 0, 3.0, -3.0)
    fitted[0, 0, 6, 6] = 3.0  # predicts the class where the pseudo-label says background
    grads = {}
    for mining in (False, True):
        logits = fitted.clone().requires_grad_(True)
        loss = SegmentationLoss(0.0, 0.0, 0.0, 1.0, easy_example_mining=mining)
        loss.pixel_bce_term(logits, masks).backward()
        g = logits.grad[0, 0].abs()
        grads[mining] = (g[6, 6] / g[0, 0]).item()
    assert grads[False] > 10 and grads[True] < 1.01


def test_lovasz_on_an_all_negative_image_is_the_hinge_of_its_worst_pixel():
    # why per_image=False: alone, a negative image's Lovasz term is one pixel's hinge
    torch.manual_seed(0)
    logits = torch.randn(1, 1, 8, 8)
    loss = smp.losses.LovaszLoss(mode="binary", per_image=True)(logits, torch.zeros(1, 1, 8, 8))
    assert loss.item() == pytest.approx(F.relu(1 + logits.max()).item(), rel=1e-6)


# --------------------------------------------------------------------------------------------
# Curriculum, batching, selection


def test_negative_probability_follows_the_paper_schedule_exactly():
    cfg = resolve_config()  # P = 10, R = 35, max 0.3
    assert [negative_probability(e, cfg) for e in range(10)] == [0.0] * 10
    assert negative_probability(10, cfg) == pytest.approx(0.3 / 25, abs=1e-15)
    assert negative_probability(22, cfg) == pytest.approx(0.3 * 13 / 25, abs=1e-15)
    assert negative_probability(33, cfg) == pytest.approx(0.3 * 24 / 25, abs=1e-15)
    assert negative_probability(34, cfg) == 0.3
    assert [negative_probability(e, cfg) for e in (35, 36, 49, 200)] == [0.3] * 4
    steps = np.diff([negative_probability(e, cfg) for e in range(9, 35)])
    assert np.allclose(steps, 0.3 / 25)  # linear
    no_ramp = {**cfg, "positive_only_epochs": 3, "negative_ramp_epochs": 2}
    assert [negative_probability(e, no_ramp) for e in (2, 3, 4)] == [0.0, 0.3, 0.3]
    assert negative_probability(0, {**cfg, "positive_only_epochs": 0}) == pytest.approx(0.3 / 35)


def test_epoch_items_keeps_positives_and_draws_negatives_with_the_rng():
    items = [(f"im{i}", f"m{i}", int(i % 3 == 0)) for i in range(12)]  # 4 positives
    cfg = resolve_config({"positive_only_epochs": 2, "negative_ramp_epochs": 4})
    rng = np.random.default_rng(7)
    assert epoch_items(items, 1, cfg, rng) == [it for it in items if it[2] == 1]
    assert rng.random() == np.random.default_rng(7).random()  # p = 0 draws nothing
    p = negative_probability(3, cfg)
    assert p == pytest.approx(0.3 * 2 / 2)
    u = np.random.default_rng(5).random(8)
    negatives = iter(u < p)
    expected = [it for it in items if it[2] == 1 or next(negatives)]
    assert epoch_items(items, 3, cfg, np.random.default_rng(5)) == expected
    assert epoch_items(items, 3, cfg, np.random.default_rng(5)) == expected  # deterministic
    everything = {**cfg, "negative_max_prob": 1.0}
    assert epoch_items(items, 9, everything, np.random.default_rng(0)) == items


def test_size_batches_hold_one_size_and_never_a_single_training_image():
    sizes = [(64, 64)] * 9 + [(40, 56)] * 2 + [(32, 32)]
    batches = size_batches(range(12), sizes, 4, np.random.default_rng(0))
    assert all(len({sizes[i] for i in b}) == 1 for b in batches)
    assert min(map(len, batches)) >= 2
    assert sorted(i for b in batches for i in b) == list(range(11))  # the lone 32x32 left out
    assert sorted(map(len, batches)) == [2, 4, 5]  # 9 = 4 + 5: the last single joins a batch
    assert batches == size_batches(range(12), sizes, 4, np.random.default_rng(0))
    assert batches != size_batches(range(12), sizes, 4, np.random.default_rng(1))
    evaluation = size_batches(range(12), sizes, 4)
    assert evaluation == [[0, 1, 2, 3], [4, 5, 6, 7], [8], [9, 10], [11]]


def test_improvement_and_early_stopping():
    assert is_improvement(0.1, None)
    assert is_improvement(0.5, 0.4)
    assert not is_improvement(0.4, 0.4)  # a tie keeps the earlier epoch
    assert not is_improvement(math.nan, None)
    assert is_improvement(0.0, math.nan)
    assert not should_stop([0.1], 1)
    assert not should_stop([0.1, 0.3], 1)
    assert should_stop([0.1, 0.3, 0.2], 1)
    assert should_stop([0.3, 0.3], 1)
    assert not should_stop([0.1, 0.3, 0.2], 2)
    assert should_stop([0.1, 0.3, 0.2, 0.25], 2)
    assert not should_stop([0.1, 0.3, 0.2, 0.35], 2)


# --------------------------------------------------------------------------------------------
# A real tiny training run


TRAIN_SPEC = [((64, 64), 1)] * 6 + [((64, 64), 0)] * 3 + [((40, 56), 1)] * 2
VAL_SPEC = [((64, 64), 1)] * 2 + [((64, 64), 0)] * 2 + [((40, 56), 1)]
# epoch 0: positives only (8 images); epochs 1, 2: every negative too (11 images)
TINY = {
    **SMALL,
    "epochs": 3,
    "batch_size": 4,
    "lr": 0.01,
    "positive_only_epochs": 1,
    "negative_ramp_epochs": 2,
    "negative_max_prob": 1.0,
}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("seg_data")
    (root / "train").mkdir()
    (root / "val").mkdir()
    return square_items(root / "train", TRAIN_SPEC, 0), square_items(root / "val", VAL_SPEC, 1)


def _run(data, out, cfg=TINY):
    best = train(*data, cfg, out / "model.pt", out / "metrics.csv")
    return best, out / "model.pt", out / "metrics.csv"


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    return _run(data, tmp_path_factory.mktemp("seg_run"))


def test_training_writes_checkpoint_and_metrics(trained):
    best, ckpt_path, csv = trained
    table = pd.read_csv(csv)
    assert tuple(table.columns) == metrics_columns("pseudo")
    assert table["epoch"].tolist() == [1, 2, 3]  # as the log counts them
    assert table["n_train_images"].tolist() == [8, 11, 11]
    assert (table["lr"] == 0.01).all()
    for col in ("val_iou_vs_pseudo_pooled", "val_iou_vs_pseudo_positive_mean", "val_head_accuracy"):
        assert table[col].between(0, 1).all()
    assert np.isfinite(table[["train_loss", "val_loss"]].to_numpy()).all()
    ckpt = torch.load(ckpt_path, weights_only=True)
    assert set(ckpt) == set(seg.CHECKPOINT_KEYS)
    assert (ckpt["arch"], ckpt["encoder"]) == ("DeepLabV3Plus", "resnet18")
    assert ckpt["config"] == resolve_config(TINY)
    best_row = int(table["val_iou_vs_pseudo_pooled"].to_numpy().argmax())  # first maximum
    assert ckpt["epoch"] == best_row + 1 == best["epoch"]
    row = table.iloc[best_row].drop("seconds").to_dict()
    assert ckpt["metrics"] == pytest.approx(row, rel=1e-12)
    assert best == ckpt["metrics"]


def test_training_is_deterministic(trained, data, tmp_path):
    _, ckpt_a, csv_a = trained
    _, ckpt_b, csv_b = _run(data, tmp_path)
    # every column but the wall-clock seconds must be identical, bit for bit
    a, b = pd.read_csv(csv_a), pd.read_csv(csv_b)
    pd.testing.assert_frame_equal(a.drop(columns="seconds"), b.drop(columns="seconds"))
    assert a.drop(columns="seconds").to_csv() == b.drop(columns="seconds").to_csv()
    sa = torch.load(ckpt_a, weights_only=True)["state_dict"]
    sb = torch.load(ckpt_b, weights_only=True)["state_dict"]
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_validation_ious_are_named_after_the_masks_trained_on():
    pseudo, truth = metrics_columns("pseudo"), metrics_columns("ground_truth")
    assert pseudo[4:6] == ("val_iou_vs_pseudo_pooled", "val_iou_vs_pseudo_positive_mean")
    assert truth[4:6] == ("val_iou_vs_truth_pooled", "val_iou_vs_truth_positive_mean")
    for old in ("val_iou", "val_iou_positive_mean"):  # unqualified: measured against what?
        assert old not in pseudo and old not in truth


def test_best_checkpoint_and_early_stopping_follow_the_pooled_val_iou(
    data, tmp_path, monkeypatch, caplog
):
    scripted = iter([0.2, 0.5, 0.4, 0.5, 0.9, 0.9])  # best at epoch 2, then 2 epochs without

    def fake_validate(*args, **kwargs):
        return {
            "val_loss": 1.0,
            "val_iou_vs_truth_pooled": next(scripted),
            "val_iou_vs_truth_positive_mean": 0.0,
            "val_head_accuracy": 0.5,
        }

    saved = []
    real_save = seg.save_checkpoint

    def recording_save(path, checkpoint):
        saved.append(checkpoint["epoch"])
        real_save(path, checkpoint)

    monkeypatch.setattr(seg, "_validate", fake_validate)
    monkeypatch.setattr(seg, "save_checkpoint", recording_save)
    cfg = {**TINY, "epochs": 6, "patience": 2, "targets": "ground_truth"}  # the real masks
    with caplog.at_level(logging.INFO, logger="histo_wsss"):
        best, ckpt, csv = _run(data, tmp_path, cfg)
    assert pd.read_csv(csv)["val_iou_vs_truth_pooled"].tolist() == [0.2, 0.5, 0.4, 0.5]
    assert saved == [1, 2]
    assert torch.load(ckpt, weights_only=True)["epoch"] == 2 == best["epoch"]
    assert best["val_iou_vs_truth_pooled"] == 0.5
    log = caplog.text
    assert "selecting the checkpoint on val_iou_vs_truth_pooled (IoU against the real masks" in log
    assert "epoch 2/6: " in log and "val_iou_vs_truth_pooled 0.5000" in log
    assert "early stopping: no better val_iou_vs_truth_pooled in the last 2 epochs" in log
    assert "best epoch 2: val_iou_vs_truth_pooled 0.5000" in log


class _Thresholder(torch.nn.Module):
    """Stand-in network: positive where the image is bright; head positive if any pixel is."""

    requires_divisible_input_shape = False

    def forward(self, x):
        masks = torch.where(x[:, :1] > 0, 10.0, -10.0)
        return masks, masks.amax(dim=(2, 3)).clamp(-0.5, 0.5)  # p = 0.38 or 0.62


def test_validation_metrics_on_known_predictions(tmp_path):
    bright, masks = np.zeros((3, 8, 8), bool), np.zeros((3, 8, 8), bool)
    bright[0, :2], bright[0, 6:], masks[0, :4] = True, True, True  # tp 16, fp 16, fn 16
    bright[1, 7] = True  # a negative image: fp 8
    bright[2, :, :4], masks[2, :, :4] = True, True  # perfect: tp 32
    items = []
    for n, label in enumerate([1, 0, 1]):
        write_png(tmp_path / f"{n}.png", np.repeat(bright[n, :, :, None], 3, axis=2))
        write_png(tmp_path / f"{n}_m.png", masks[n])
        items.append((tmp_path / f"{n}.png", tmp_path / f"{n}_m.png", label))
    data = seg._Data(items, "val")
    loss_fn = SegmentationLoss()
    batches = size_batches(range(3), data.sizes, 2)
    cpu = torch.device("cpu")
    got = seg._validate(_Thresholder(), data, batches, loss_fn, 0.5, cpu, "pseudo")
    assert got["val_iou_vs_pseudo_pooled"] == pytest.approx(48 / (48 + 24 + 16))  # all 3 images
    assert got["val_iou_vs_pseudo_positive_mean"] == pytest.approx((16 / 48 + 1) / 2)
    assert got["val_head_accuracy"] == pytest.approx(2 / 3)  # the negative has a bright row
    batch_losses = []
    for batch in batches:
        x = seg.preprocess(np.stack([data.images[i] for i in batch]))
        m = torch.from_numpy(masks[batch].astype(np.float32))[:, None]
        y = torch.tensor([[float(data.labels[i])] for i in batch])
        batch_losses.append(loss_fn(*_Thresholder()(x), m, y).item() * len(batch))
    assert got["val_loss"] == pytest.approx(sum(batch_losses) / 3)


def test_augmentation_moves_image_and_mask_together():
    data = seg._Data.__new__(seg._Data)
    rng = np.random.default_rng(0)
    data.images, data.masks = [], []
    for h, w in [(32, 32), (24, 40)]:
        image = rng.integers(0, 60, (h, w, 3), dtype=np.uint8)
        mask = np.zeros((h, w), dtype=bool)
        mask[2:9, 3:20] = True  # asymmetric, so every flip/rotation shows
        image[mask] = 250
        data.images.append(image)
        data.masks.append(mask)
    data.masks = [m.astype(np.uint8) for m in data.masks]  # label maps: 1 the one class
    data.k, data.tags = 1, np.ones((2, 1), np.float32)
    data.labels = np.array([1, 1])
    data.paths = ["a", "b"]
    aug = {**DEFAULTS["augment"], "brightness": 0.0, "contrast": 0.0, "saturation": 0.0}
    dataset = seg._SegDataset(data, Augmentation({**aug, "hue": 0.0}), seed=0)
    mean, std = (
        torch.tensor(IMAGENET_MEAN)[:, None, None],
        torch.tensor(IMAGENET_STD)[:, None, None],
    )
    changed = set()
    for epoch in range(8):
        dataset.epoch = epoch
        for index in (0, 1):
            x, m, y = dataset[index]
            image = (x * std + mean) * 255
            assert m.shape == (1, *data.masks[index].shape)  # non-square: no 90° rotation
            assert torch.equal(m[0] > 0.5, image[0] > 150)
            changed.add((index, bool(((m[0].numpy() > 0.5) != data.masks[index]).any())))
            assert y.item() == 1.0
    assert (0, True) in changed and (1, True) in changed


def test_bad_items_are_named(data, tmp_path):
    train_items, val_items = data
    wrong = [(train_items[0][0], train_items[-1][1], 1), *train_items[1:]]  # 64x64 vs 40x56 mask
    with pytest.raises(ValueError, match=r"im10_mask\.png: mask is \(40, 56\)"):
        train(wrong, val_items, TINY, tmp_path / "m.pt", tmp_path / "m.csv")
    with pytest.raises(ValueError, match="label must be 0 or 1"):
        train([(*train_items[0][:2], 2)], val_items, TINY, tmp_path / "m.pt", tmp_path / "m.csv")
    negatives = [it for it in train_items if it[2] == 0]
    with pytest.raises(ValueError, match="no positive"):
        train(negatives, val_items, TINY, tmp_path / "m.pt", tmp_path / "m.csv")
    assert not (tmp_path / "m.pt").exists()


# --------------------------------------------------------------------------------------------
# Inference and figure


def test_load_checkpoint_gives_the_trained_model_in_eval_mode(trained):
    _, ckpt_path, _ = trained
    model = load_checkpoint(ckpt_path, "cpu")
    assert not model.training
    saved = torch.load(ckpt_path, weights_only=True)["state_dict"]
    assert all(torch.equal(v, saved[k]) for k, v in model.state_dict().items())


def test_load_checkpoint_rejects_foreign_files(tmp_path):
    with pytest.raises(ValueError, match=r"absent\.pt"):
        load_checkpoint(tmp_path / "absent.pt")
    (tmp_path / "text.pt").write_text("no")
    with pytest.raises(ValueError, match=r"text\.pt.*cannot read"):
        load_checkpoint(tmp_path / "text.pt")
    torch.save({"arch": "resnet18", "state_dict": {}}, tmp_path / "classifier.pt")
    with pytest.raises(ValueError, match=r"classifier\.pt: not a histo_wsss segmentation"):
        load_checkpoint(tmp_path / "classifier.pt")
    keys = dict.fromkeys(seg.CHECKPOINT_KEYS, 0) | {"arch": "Unet", "encoder": "resnet18"}
    torch.save(keys | {"state_dict": {"x": torch.zeros(1)}}, tmp_path / "odd.pt")
    with pytest.raises(ValueError, match=r"odd\.pt: state_dict does not match Unet/resnet18"):
        load_checkpoint(tmp_path / "odd.pt")


def test_predict_yields_maps_at_each_image_size(trained, data, tmp_path):
    _, ckpt_path, _ = trained
    odd = square_items(tmp_path, [((100, 75), 1)], 3)[0][0]
    paths = [data[1][0][0], data[1][1][0], odd, data[1][2][0], data[1][4][0]]
    model = load_checkpoint(ckpt_path)
    model.train()  # predict must run in eval mode and give the mode back
    results = list(predict(model, paths, batch_size=2))
    assert model.training
    assert [r[0] for r in results] == paths
    shapes = [(64, 64), (64, 64), (100, 75), (64, 64), (40, 56)]
    for (_, prob, head), shape in zip(results, shapes, strict=True):
        assert prob.shape == (1, *shape) and prob.dtype == np.float32  # K = 1 class
        assert np.isfinite(prob).all() and prob.min() >= 0 and prob.max() <= 1
        assert head.shape == (1,) and 0 <= head[0] <= 1
    one_by_one = list(predict(model, paths, batch_size=1))
    for (_, a, ha), (_, b, hb) in zip(results, one_by_one, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)
        np.testing.assert_allclose(ha, hb, atol=1e-5)
