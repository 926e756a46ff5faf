"""K classes through segmentation, prediction, evaluation, review, QuPath and corrections, on
images and masks of the multi-class demo generator (3 classes, white non-tissue unlabelled)."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F

from histo_wsss import segmentation as seg
from histo_wsss.classes import IGNORE, LabelSpace, class_colors
from histo_wsss.corrections import CorrectionError, make_targets, read_correction
from histo_wsss.demo import DemoSpec, generate
from histo_wsss.evaluation import (
    baseline_confusions,
    evaluate_images,
    label_scores,
    predicted_labels,
    predicted_mask,
    summarize,
    summary_lines,
)
from histo_wsss.io import read_rgb, write_png
from histo_wsss.metrics import pooled_confusion
from histo_wsss.prediction import save_predictions
from histo_wsss.qupath import class_labels, mask_features, write_geojson
from histo_wsss.review import image_scores, review_queue
from histo_wsss.segmentation import SegmentationLoss, label_targets, load_checkpoint, train

CLASSES = ("tumor", "stroma", "lymphocytes")
SPACE = LabelSpace(CLASSES, 255)
SPEC = DemoSpec(n_images=8, size=64, seed=3, test_fraction=0.25, tissues=CLASSES)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The demo's images and label maps (0 none here, 1..3 the classes, 255 unlabelled)."""
    out = tmp_path_factory.mktemp("demo3")
    table = generate(SPEC, out)
    names = [n.removesuffix(".png") for n in table["Image Name"]]
    labels = {n: SPACE.read_truth(out / "masks" / f"{n}.png") for n in names}
    for n in names:  # as the workflow stores them at the working scale
        SPACE.write_labels(out / "labels" / f"{n}.png", labels[n])
    tags = dict(zip(names, table["Tags"], strict=True))
    return out, names, labels, tags


# --------------------------------------------------------------------------------------------
# Targets, loss, predicted labels


def test_label_targets_are_one_channel_per_class_with_ignore_kept():
    labels = np.array([[0, 1, 2], [3, IGNORE, 1]], np.uint8)
    targets = label_targets(labels, 3)
    assert targets.shape == (3, 2, 3) and targets.dtype == np.float32
    assert targets[:, 0, 0].tolist() == [0, 0, 0]  # background: no class
    assert targets[:, 0, 2].tolist() == [0, 1, 0] and targets[:, 1, 0].tolist() == [0, 0, 1]
    assert targets[:, 1, 1].tolist() == [IGNORE] * 3
    # K = 1: the binary mask itself, as float
    binary = np.array([[0, 1], [1, 0]], np.uint8)
    assert np.array_equal(label_targets(binary, 1)[0], binary.astype(np.float32))


def _hand_loss(logits, head, labels, tags, weights=(1.0, 0.5, 0.2)):
    """Dice per class and one Lovasz hinge over the labelled (pixel, class) pairs, by hand."""
    valid = labels != IGNORE
    dice = []
    for c in range(logits.shape[1]):
        p = torch.sigmoid(logits[:, c])[valid]
        t = (labels[valid] == c + 1).float()
        score = 2 * (p * t).sum() / (p.sum() + t.sum()).clamp_min(1e-7)
        dice.append((1 - score) * (t.sum() > 0))
    pairs_logits = logits.permute(1, 0, 2, 3)[:, valid]  # (K, labelled pixels)
    pairs_truth = torch.stack([(labels[valid] == c + 1).float() for c in range(logits.shape[1])])
    lovasz = smp.losses.LovaszLoss(mode="binary", per_image=False)(
        pairs_logits.reshape(1, 1, -1), pairs_truth.reshape(1, 1, -1)
    )
    bce = F.binary_cross_entropy_with_logits(head, tags)
    return weights[0] * torch.stack(dice).mean() + weights[1] * lovasz + weights[2] * bce


def test_loss_leaves_unlabelled_pixels_out_on_demo_masks(demo):
    _, names, labels, tags = demo
    names = sorted(names, key=lambda n: -(labels[n] == IGNORE).sum())[:4]  # white borders
    batch = np.stack([labels[n][::2, ::2] for n in names])  # 32 x 32
    assert (batch == IGNORE).any() and set(np.unique(batch)) - {IGNORE} <= {1, 2, 3}
    torch.manual_seed(0)
    logits = torch.randn(4, 3, 32, 32, requires_grad=True)
    head = torch.randn(4, 3)
    y = torch.from_numpy(np.stack([SPACE.tag_vector(tags[n]) for n in names]))
    targets = torch.from_numpy(label_targets(batch, 3))
    loss = SegmentationLoss()(logits, head, targets, y)
    assert loss.item() == pytest.approx(
        _hand_loss(logits, head, torch.from_numpy(batch), y).item(), rel=1e-5
    )
    loss.backward()
    ignored = torch.from_numpy(batch == IGNORE)[:, None].expand(-1, 3, -1, -1)
    assert logits.grad[ignored].abs().max() == 0  # unlabelled pixels: no gradient
    assert logits.grad[~ignored].abs().sum() > 0
    moved = logits.detach().clone()
    moved[ignored] = 50.0  # whatever the network says there, the loss is the same
    again = SegmentationLoss()(moved, head, targets, y)
    assert again.item() == pytest.approx(loss.item(), rel=1e-6)


def test_the_k_class_loss_of_a_k1_batch_is_the_binary_loss():
    torch.manual_seed(1)
    logits, head = torch.randn(3, 1, 16, 12), torch.randn(3, 1)
    masks = (torch.rand(3, 1, 16, 12) > 0.6).float()
    labels = torch.tensor([[1.0], [1.0], [0.0]])
    binary = (
        smp.losses.DiceLoss(mode="binary", from_logits=True)(logits, masks)
        + 0.5 * smp.losses.LovaszLoss(mode="binary", per_image=False)(logits, masks)
        + 0.2 * F.binary_cross_entropy_with_logits(head, labels)
    )
    assert SegmentationLoss()(logits, head, masks, labels).item() == binary.item()  # bit for bit


def test_predicted_label_is_background_below_the_threshold_else_the_top_class():
    probs = np.array(
        [
            [[0.2, 0.6, 0.5, 0.9]],
            [[0.4, 0.7, 0.5, 0.1]],
            [[0.49, 0.1, 0.2, 0.95]],
        ],
        np.float16,
    )
    # all below: 0; class 2 highest; a tie at 0.5 goes to the first; class 3 highest
    assert predicted_labels(probs).tolist() == [[0, 2, 1, 3]]
    assert predicted_labels(probs, 0.92).tolist() == [[0, 0, 0, 3]]
    one = np.array([[0.5, 0.49], [0.0, 1.0]], np.float16)  # K = 1: p >= threshold
    assert np.array_equal(predicted_labels(one[None]) == 1, predicted_mask(one))
    assert np.array_equal(predicted_labels(one), predicted_labels(one[None]))


# --------------------------------------------------------------------------------------------
# Training and predictions with 3 classes


@pytest.fixture(scope="module")
def trained3(demo, tmp_path_factory):
    out, names, _, tags = demo
    items = [
        (out / "images" / f"{n}.png", out / "labels" / f"{n}.png", SPACE.tag_vector(tags[n]))
        for n in names
    ]
    run = tmp_path_factory.mktemp("seg3")
    cfg = {"encoder": "resnet18", "device": "cpu", "epochs": 1, "batch_size": 3, "lr": 0.01}
    best = train(items[:6], items[6:], cfg, run / "model.pt", run / "metrics.csv")
    return best, run


def test_a_three_class_network_trains_and_names_its_mean_class_iou(trained3):
    best, run = trained3
    table = pd.read_csv(run / "metrics.csv")
    assert list(table.columns[4:6]) == [
        "val_mean_class_iou_vs_pseudo_pooled",
        "val_mean_class_iou_vs_pseudo_positive_mean",
    ]
    assert table["n_train_images"].tolist() == [6]  # every demo image has tags: no negatives
    assert 0 <= best["val_mean_class_iou_vs_pseudo_pooled"] <= 1
    model = load_checkpoint(run / "model.pt")
    assert model.segmentation_head[0].out_channels == 3


def test_save_predictions_writes_k_maps_and_label_maps(demo, trained3, tmp_path):
    out, names, _, _ = demo
    model = load_checkpoint(trained3[1] / "model.pt")
    table = pd.DataFrame({"name": names[:3], "split": "test"})
    images = {n: str(out / "images" / f"{n}.png") for n in names}
    result = save_predictions(model, table, images, tmp_path, 2, torch.device("cpu"), 0.5, SPACE)
    heads = [f"head_prob_{c}" for c in CLASSES]
    assert list(result.columns) == ["name", "split", "head_prob", *heads, "pred_area_fraction"]
    assert np.allclose(result["head_prob"], result[heads].max(axis=1))
    assert pd.read_csv(tmp_path / "predictions.csv", dtype={"name": str}).shape == result.shape
    for name, area in zip(names[:3], result["pred_area_fraction"], strict=True):
        probs = np.load(tmp_path / "probs" / f"{name}.npy")
        assert probs.dtype == np.float16 and probs.shape == (3, 64, 64)
        labels = SPACE.read_labels(tmp_path / "masks" / f"{name}.png")
        assert labels.shape == (64, 64) and set(np.unique(labels)) <= {0, 1, 2, 3}
        # the label map is the rule's on the saved maps (float16 rounding may move a pixel)
        assert (labels == predicted_labels(probs)).mean() > 0.99
        assert area == pytest.approx((labels > 0).mean())


# --------------------------------------------------------------------------------------------
# Evaluation against hand-computed values


def _row(tmp_path, name, split, probs, pseudo, truth, label=1):
    np.save(tmp_path / f"{name}.npy", np.asarray(probs, np.float16))
    SPACE.write_labels(tmp_path / f"{name}_pseudo.png", np.asarray(pseudo, np.uint8))
    SPACE.write_labels(tmp_path / f"{name}_truth.png", np.asarray(truth, np.uint8))
    return {
        "name": name, "split": split, "label": label, "head_prob": 0.9,
        "prob_path": str(tmp_path / f"{name}.npy"),
        "pseudo_path": str(tmp_path / f"{name}_pseudo.png"),
        "truth_path": str(tmp_path / f"{name}_truth.png"),
    }  # fmt: skip


def _probs(pred: list[list[int]]) -> np.ndarray:
    """Class probability maps whose predicted labels are ``pred``."""
    pred = np.asarray(pred)
    return np.stack([np.where(pred == c + 1, 0.9, 0.1) for c in range(3)])


# image P: prediction, truth (255: unlabelled) and pseudo-mask, 2 x 4 px
PRED_P = [[1, 1, 2, 0], [3, 3, 3, 1]]
TRUTH_P = [[1, 2, 2, 0], [3, 3, IGNORE, 2]]
# image Q
PRED_Q = [[2, 2, 0, 0], [2, 2, 1, 1]]
TRUTH_Q = [[2, 2, 2, 0], [2, 0, 1, IGNORE]]


@pytest.fixture
def rows3(tmp_path):
    return [
        _row(tmp_path, "P", "test", _probs(PRED_P), TRUTH_P, TRUTH_P),
        _row(tmp_path, "Q", "test", _probs(PRED_Q), PRED_Q, TRUTH_Q),
    ]


def test_per_class_scores_miou_fwiou_and_confusion_by_hand(rows3):
    table, confusion = evaluate_images(rows3, 0.5, SPACE)
    assert set(confusion.columns) == {
        "name", "split", "reference", "truth_label", "pred_label", "pixels"
    }  # fmt: skip
    truth = summarize(table, confusion, CLASSES)["test"]["truth"]
    # rows the truth label, columns the prediction, P + Q; the 2 unlabelled pixels left out
    assert truth["confusion"] == {
        "labels": ["background", *CLASSES],
        "matrix": [
            [2, 0, 1, 0],  # background: P (0,3) -> 0; Q (0,3) -> 0, (1,1) -> 2
            [0, 2, 0, 0],  # tumor: P (0,0), Q (1,2)
            [1, 2, 4, 0],  # stroma: P -> 1, 2, 1; Q -> 2, 2, 0, 2
            [0, 0, 0, 2],  # lymphocytes: P (1,0), (1,1)
        ],
    }
    iou = {"background": 2 / 4, "tumor": 2 / 4, "stroma": 4 / 8, "lymphocytes": 2 / 2}
    for name, value in iou.items():
        assert truth["classes"][name]["iou"] == pytest.approx(value), name
    assert truth["classes"]["stroma"]["dice"] == pytest.approx(8 / 12)
    assert truth["classes"]["stroma"]["precision"] == pytest.approx(4 / 5)
    assert truth["classes"]["stroma"]["recall"] == pytest.approx(4 / 7)
    assert truth["classes"]["stroma"]["reference_pixels"] == 7
    assert truth["miou"] == pytest.approx(np.mean(list(iou.values())))
    # a label that neither the reference nor the prediction holds scores nothing, not 1.0
    absent = label_scores(np.diag([3, 2, 0]), ["tumor", "stroma"])["classes"]["stroma"]
    assert math.isnan(absent["iou"]) and absent["reference_pixels"] == 0
    assert truth["fwiou"] == pytest.approx((3 * 2 / 4 + 2 * 2 / 4 + 7 * 4 / 8 + 2 * 1) / 14)
    # the per-image table keeps the binary columns: any class against background
    p = table.set_index("name").loc["P"]
    assert (p["truth_tp"], p["truth_fp"], p["truth_fn"], p["truth_tn"]) == (6, 0, 0, 1)
    assert p["pred_area"] == 7 and p["pred_area_fraction"] == pytest.approx(7 / 8)
    # Q's prediction is its pseudo-mask: perfect against it
    assert (
        pooled_confusion(
            confusion[(confusion["name"] == "Q") & (confusion["reference"] == "pseudo")], 4
        ).trace()
        == 8
    )


def test_the_two_baselines_by_hand(rows3):
    table, confusion = evaluate_images(rows3, 0.5, SPACE)
    # train split: stroma has the most truth pixels; tumor is the tag most train images hold
    train_pixels = {"truth": np.array([50, 10, 40, 5]), "pseudo": np.array([0, 9, 1, 1])}
    train_tags = ["tumor", "tumor;stroma", "lymphocytes", "tumor;lymphocytes"]
    tags = {"P": "tumor;stroma;lymphocytes", "Q": "stroma"}
    baselines = baseline_confusions(confusion, tags, train_pixels, train_tags, SPACE)
    summary = summarize(table, confusion, CLASSES, baselines)["test"]
    truth = summary["truth"]["baselines"]
    # majority class (stroma) everywhere: the truth's row sums [3, 2, 7, 2] all in column 2
    assert truth["majority_class"]["classes"] == {
        "background": 0.0, "tumor": 0.0, "stroma": 7 / 14, "lymphocytes": 0.0
    }  # fmt: skip
    assert truth["majority_class"]["miou"] == pytest.approx(7 / 14 / 4)
    assert truth["majority_class"]["fwiou"] == pytest.approx(7 / 14 * 7 / 14)
    # most frequent tag (train: tumor 3 images, lymphocytes 2, stroma 1): P -> tumor, Q -> stroma
    # P's rows [1, 1, 3, 2] in column 1, Q's [2, 1, 4, 0] in column 2:
    # [[0, 1, 2, 0], [0, 1, 1, 0], [0, 3, 4, 0], [0, 2, 0, 0]]
    iou = [0.0, 1 / (2 + 7 - 1), 4 / (7 + 7 - 4), 0.0]
    assert list(truth["most_frequent_tag"]["classes"].values()) == pytest.approx(iou)
    assert truth["most_frequent_tag"]["miou"] == pytest.approx(np.mean(iou))
    # against the pseudo-masks the majority is tumor (their own train pixels)
    assert summary["pseudo"]["baselines"]["majority_class"]["classes"]["tumor"] > 0
    assert "majority_class baseline mIoU" in summary_lines({"test": summary})[-1]


def test_for_one_class_the_tag_baseline_is_the_all_positive_baseline(tmp_path):
    space = LabelSpace(("lesion",))
    rows, shares = [], []
    for name, label, mask in (("a", 1, [[1, 1, 0, 0]]), ("b", 1, [[0, 1, 0, 0]]), ("n", 0, None)):
        truth = np.zeros((1, 4), np.uint8) if mask is None else np.asarray(mask, np.uint8)
        np.save(tmp_path / f"{name}.npy", np.full((1, 1, 4), 0.2, np.float16))
        write_png(tmp_path / f"{name}.png", truth == 1)
        path = str(tmp_path / f"{name}.png")
        rows.append({"name": name, "split": "val", "label": label, "head_prob": 0.5,
                     "prob_path": str(tmp_path / f"{name}.npy"), "pseudo_path": path})  # fmt: skip
        if label:
            shares.append(truth.mean())
    table, confusion = evaluate_images(rows, 0.5, space)
    tags = {"a": "lesion", "b": "lesion", "n": ""}
    baselines = baseline_confusions(
        confusion, tags, {"pseudo": np.array([5, 3])}, ["lesion", ""], space
    )
    tag = baselines["most_frequent_tag"].set_index(["name", "truth_label"])["pred_label"]
    assert tag.loc["a"].tolist() == [1, 1] and tag.loc["n"].tolist() == [0]
    pseudo = summarize(table, confusion, space.classes, baselines)["val"]["pseudo"]
    # per positive image the baseline's IoU is its share: their mean is all_positive_baseline
    assert pseudo["all_positive_baseline"]["iou"] == pytest.approx(np.mean(shares))
    assert pseudo["baselines"]["most_frequent_tag"]["classes"]["lesion"] == pytest.approx(3 / 8)


# --------------------------------------------------------------------------------------------
# Review queue, QuPath export and corrections


def test_review_scores_of_three_classes():
    probs = np.zeros((3, 2, 2), np.float32)
    probs[0] = [[0.9, 0.9], [0.5, 0.0]]  # pixel (1, 0): class 0 at 0.5, one bit
    probs[1, 0, 1] = 0.8
    target = np.array([[1, 2], [0, IGNORE]], np.uint8)
    got = image_scores(probs, target, 0.5, np.array([0.9, 0.2, 0.7]), np.array([1, 1, 0]), CLASSES)
    # predicted [[1, 1], [1, 0]]; labelled pixels: tumor 1 tp, 1 fp (stroma px), 1 fp (bg px);
    # stroma 1 fn: IoU tumor 1/3, stroma 0; lymphocytes in neither
    assert got["iou_prediction_vs_target"] == pytest.approx((1 / 3 + 0) / 2)
    h = lambda p: -(p * np.log2(p) + (1 - p) * np.log2(1 - p))  # noqa: E731
    expected = np.mean([h(0.9), max(h(0.9), h(0.8)), 1.0, h(1e-7)])
    assert got["uncertainty"] == pytest.approx(expected, rel=1e-4)
    assert got["head_vs_label"] == pytest.approx(0.8) and got["head_class"] == "stroma"
    table = pd.DataFrame([{"name": "x", "label": 1, "head_prob": 0.9, "corrected": False, **got}])
    only_head = {"uncertainty": 0, "disagreement_vs_target": 0, "head_vs_label": 1}
    queue = review_queue(table, only_head, k=1)
    assert queue["reason"].iloc[0] == "head doubts the stroma tag (|head probability - tag| 0.80)"


def test_qupath_export_and_geojson_correction_round_trip_per_class(demo, tmp_path):
    out, names, labels, _ = demo
    name = max(names, key=lambda n: len(np.unique(labels[n])))  # the image with most classes
    truth = labels[name]
    qupath = class_labels(SPACE, class_colors(CLASSES, {}))
    features = mask_features(truth, qupath, tolerance=0)
    written = {f["properties"]["classification"]["name"] for f in features}
    assert written == {CLASSES[v - 1] for v in np.unique(truth) if v not in (0, IGNORE)}
    write_geojson(tmp_path / f"{name}.geojson", features)
    back, notes = read_correction(tmp_path / f"{name}.geojson", truth.shape, SPACE)
    assert notes == []
    labelled = truth != IGNORE
    assert np.array_equal(back[labelled], truth[labelled])  # exact without simplification
    assert (back[~labelled] == 0).all()  # undrawn: background
    bad = json.loads((tmp_path / f"{name}.geojson").read_text())
    bad["features"][0]["properties"]["classification"]["name"] = "necrosis"
    (tmp_path / "bad.geojson").write_text(json.dumps(bad))
    with pytest.raises(CorrectionError, match="bad.geojson: feature 0: unknown class 'necrosis'"):
        read_correction(tmp_path / "bad.geojson", truth.shape, SPACE)


def test_png_corrections_of_a_tags_dataset_are_class_index_masks(demo, tmp_path):
    out, names, labels, _ = demo
    name = names[0]
    correction = tmp_path / "corrections" / f"{name}.png"
    raw = np.asarray(labels[name], np.int16) - 1  # class indices 0..2, 255 kept
    raw[labels[name] == IGNORE] = 255
    write_png(correction, raw.astype(np.uint8))
    read, _ = read_correction(correction, (64, 64), SPACE)
    assert np.array_equal(read, labels[name])
    table = pd.DataFrame([{"name": name, "file": str(correction), "file_bytes": 1,
                           "file_mtime_ns": 1}])  # fmt: skip
    split = pd.DataFrame({"name": [name], "split": ["train"]})
    images = {name: str(out / "images" / f"{name}.png")}
    made = make_targets(table, images, split, SPACE, 0.5, 2, tmp_path / "targets", None)
    target = SPACE.read_labels(tmp_path / "targets" / "masks" / f"{name}.png")
    assert target.shape == (32, 32) == read_rgb(images[name], 0.5).shape[:2]
    assert np.array_equal(target, SPACE.read_truth(out / "masks" / f"{name}.png", 0.5))
    assert made["area_fraction"].iloc[0] == pytest.approx(
        round(float(((target > 0) & (target != IGNORE)).mean()), 6)
    )
    raw[0, 0] = 7  # no class of the dataset, nor its ignore index
    write_png(correction, raw.astype(np.uint8))
    with pytest.raises(CorrectionError, match=rf"{name}\.png: .*values 7 outside the class"):
        read_correction(correction, (64, 64), SPACE)


def test_training_items_must_match_the_class_count(demo, tmp_path):
    out, names, _, tags = demo
    item = (out / "images" / f"{names[0]}.png", out / "labels" / f"{names[0]}.png")
    with pytest.raises(ValueError, match="label must be 0 or 1 .*3 of them"):
        seg._Data([(*item, SPACE.tag_vector(tags[names[0]])), (*item, (1, 0))], "val")
    write_png(tmp_path / "odd.png", np.full((64, 64), 9, np.uint8))
    with pytest.raises(ValueError, match=r"odd\.png: label map holds \[9\]"):
        seg._Data([(item[0], tmp_path / "odd.png", (1, 0, 0))], "val")
