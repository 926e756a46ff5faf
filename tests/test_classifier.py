"""The image-level classifier: weights, unfreezing, a real tiny training run, metrics."""

import math

import numpy as np
import pandas as pd
import pytest
import torch
from report_html import render_caption
from torchvision.models import resnet18, resnet34

from histo_wsss.classifier import (
    build_model,
    evaluate,
    evaluation_line,
    is_improvement,
    learning_curve,
    load_checkpoint,
    predict,
    resolve_config,
    set_trainable,
    train,
    trainable_blocks,
)
from histo_wsss.device import resolve_device
from histo_wsss.io import write_png

PAPER = {"layer4": 5, "layer3": 10, "layer2": 15, "layer1": 20, "stem": 20}


def test_local_imagenet_style_weights_load_into_the_backbone(tmp_path):
    torch.manual_seed(1)
    source = resnet18(weights=None)  # 1000-class fc, as in torchvision's ImageNet files
    torch.save(source.state_dict(), tmp_path / "r18.pth")
    model = build_model("resnet18", tmp_path / "r18.pth")
    assert torch.equal(model.layer3[0].conv1.weight, source.layer3[0].conv1.weight)
    assert torch.equal(model.bn1.running_mean, source.bn1.running_mean)
    assert model.fc.out_features == 1


def test_wrong_missing_or_broken_weight_files_are_clear_errors(tmp_path):
    torch.save(resnet34(weights=None).state_dict(), tmp_path / "r34.pth")
    with pytest.raises(ValueError, match=r"r34\.pth.*layer"):
        build_model("resnet18", tmp_path / "r34.pth")
    with pytest.raises(ValueError, match="nothing.pth"):
        build_model("resnet18", tmp_path / "nothing.pth")
    (tmp_path / "text.pth").write_text("not a checkpoint")
    with pytest.raises(ValueError, match="text.pth"):
        build_model("resnet18", tmp_path / "text.pth")


def test_unfreezing_follows_the_schedule_and_freezes_batchnorm():
    assert trainable_blocks(0, PAPER) == ["fc"]
    assert trainable_blocks(5, PAPER) == ["layer4", "fc"]
    assert trainable_blocks(12, PAPER) == ["layer3", "layer4", "fc"]
    assert trainable_blocks(25, PAPER) == ["stem", "layer1", "layer2", "layer3", "layer4", "fc"]
    model = build_model("resnet18")
    set_trainable(model, 5, PAPER)
    assert all(p.requires_grad for p in model.layer4.parameters())
    assert not any(p.requires_grad for p in model.layer3.parameters())
    assert not model.layer3[0].bn1.training and model.layer4[0].bn1.training


def test_unknown_config_key_is_named():
    with pytest.raises(ValueError, match="unknown classifier config key.*learning_rate"):
        resolve_config({"learning_rate": 0.1})


def test_selection_breaks_auc_ties_by_val_loss():
    best = {"val_auc": 1.0, "val_loss": 0.5}
    assert is_improvement("auc", {"val_auc": 1.0, "val_loss": 0.2}, best)
    assert not is_improvement("auc", {"val_auc": 1.0, "val_loss": 0.5}, best)
    assert not is_improvement("auc", {"val_auc": 0.9, "val_loss": 0.1}, best)
    assert not is_improvement("auc", {"val_auc": math.nan, "val_loss": 0.1}, None)
    assert is_improvement("loss", {"val_loss": 0.4}, {"val_loss": 0.5})


def test_evaluate_on_hand_made_predictions():
    result = evaluate([1, 1, 0, 0, 0], [0.9, 0.4, 0.6, 0.1, 0.2])
    assert result["confusion"] == {"tn": 2, "fp": 1, "fn": 1, "tp": 1}
    assert result["accuracy"] == pytest.approx(3 / 5)
    assert result["balanced_accuracy"] == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert result["auc"] == pytest.approx(5 / 6)  # 5 of the 6 positive-negative pairs ordered
    assert math.isnan(evaluate([1, 1], [0.2, 0.9])["auc"])


def test_an_evaluation_is_logged_as_a_readable_line():
    line = evaluation_line(evaluate([1, 1, 0, 0, 0], [0.9, 0.4, 0.6, 0.1, 0.2]))
    assert line == (
        "5 images: accuracy 0.6000, balanced accuracy 0.5833, ROC AUC 0.8333 (positive from "
        "p >= 0.5: 1 true and 1 false positives, 2 true and 1 false negatives)"
    )


def _squares(root, n=16, size=64):
    """Dark images; positives carry a bright square (the evidence a CNN can learn)."""
    rng = np.random.default_rng(0)
    items = []
    for i in range(n):
        img = rng.integers(40, 90, (size, size, 3), np.uint8)
        label = i % 2
        if label:
            r, c = rng.integers(4, size - 24, 2)
            img[r : r + 20, c : c + 20] = 230
        write_png(root / f"{i}.png", img)
        items.append((str(root / f"{i}.png"), label))
    return items


CFG = {
    "arch": "resnet18",
    "epochs": 3,
    "batch_size": 4,
    "lr": 0.01,
    "weight_decay": 1e-4,
    "unfreeze": {"layer4": 0, "layer3": 0, "layer2": 1, "layer1": 1, "stem": 1},
    "device": "cpu",
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("clf")
    items = _squares(root)
    runs = []
    for run in ("a", "b"):
        best = train(items[:12], items[12:], CFG, root / run / "m.pt", root / run / "m.csv")
        runs.append((best, pd.read_csv(root / run / "m.csv")))
    return root, items, runs


def test_training_writes_checkpoint_and_metrics(trained):
    root, items, [(best, metrics), _] = trained
    assert list(metrics.columns[:6]) == [
        "epoch", "train_loss", "val_loss", "val_accuracy", "val_auc", "lr",
    ]  # fmt: skip
    assert list(metrics["epoch"]) == [1, 2, 3]  # as the log counts them
    assert metrics["trainable"].tolist()[0] == "layer3+layer4+fc"
    lr = metrics["lr"].to_numpy()
    assert lr[1] > lr[0] and lr[1] > lr[2]  # one-cycle: warms up, then anneals
    assert lr[-1] < lr.max() / 5
    model = load_checkpoint(root / "a" / "m.pt")
    probs = predict(model, [p for p, _ in items[12:]], 2, torch.device("cpu"))
    assert probs.shape == (4, 1) and ((probs >= 0) & (probs <= 1)).all()
    assert best["epoch"] in metrics["epoch"].tolist()


def test_training_is_deterministic(trained):
    _, _, [(_, a), (_, b)] = trained
    assert a.drop(columns="seconds").equals(b.drop(columns="seconds"))


def test_learning_curve_bytes_are_reproducible(trained, tmp_path):
    root, _, _ = trained
    learning_curve(root / "a" / "m.csv", tmp_path / "1.png")
    learning_curve(root / "a" / "m.csv", tmp_path / "2.png")
    assert (tmp_path / "1.png").read_bytes() == (tmp_path / "2.png").read_bytes()


def test_the_learning_curve_marks_the_epochs_at_which_a_frozen_block_starts_training(
    trained, tmp_path
):
    root, _, _ = trained
    unfreeze, epochs = CFG["unfreeze"], CFG["epochs"]
    scheduled = [
        e + 1
        for e in range(1, epochs)
        if trainable_blocks(e, unfreeze) != trainable_blocks(e - 1, unfreeze)
    ]
    assert learning_curve(root / "a" / "m.csv", tmp_path / "1.png") == scheduled == [2]
    metrics = pd.read_csv(root / "a" / "m.csv").assign(trainable="layer4+fc")
    metrics.to_csv(tmp_path / "m.csv", index=False)
    assert learning_curve(tmp_path / "m.csv", tmp_path / "2.png") == []  # nothing to mark
    # the caption promises dotted lines only where a block starts training, as drawn
    caption = " ".join(render_caption("classifier_learning_curve").split())
    assert (
        "dotted vertical lines mark the epochs at which a frozen backbone block starts" in caption
    )
    assert "no block was frozen or unfrozen during training there is no dotted line" in caption


def test_load_checkpoint_rejects_foreign_files(tmp_path):
    torch.save({"weights": 1}, tmp_path / "x.pt")
    with pytest.raises(ValueError, match="x.pt"):
        load_checkpoint(tmp_path / "x.pt")


def test_device_auto_is_cpu_here_and_cuda_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the CPU fallback cannot be observed")
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(ValueError, match="CUDA"):
        resolve_device("cuda")


# ---------------------------------------------------------------------------------------------
# Further checks: exact reproducibility, what freezing really keeps fixed, config and file errors


def test_training_checkpoint_and_metrics_bytes_are_identical(trained):
    root, _, _ = trained
    assert (root / "a" / "m.pt").read_bytes() == (root / "b" / "m.pt").read_bytes()
    strip = [  # every column but the last one, the wall-clock seconds
        [line.rsplit(",", 1)[0] for line in (root / run / "m.csv").read_text().splitlines()]
        for run in ("a", "b")
    ]
    assert strip[0] == strip[1]


def test_checkpoint_holds_the_selected_epoch(trained):
    root, items, [(best, metrics), _] = trained
    ckpt = torch.load(root / "a" / "m.pt", weights_only=True)
    assert set(ckpt) == {"arch", "state_dict", "epoch", "metrics", "config"}
    assert ckpt["arch"] == "resnet18" and ckpt["config"]["epochs"] == CFG["epochs"]
    # default selection: highest val AUC, ties -> lowest val loss, then the earliest epoch
    order = metrics.sort_values(["val_auc", "val_loss", "epoch"], ascending=[False, True, True])
    assert ckpt["epoch"] == best["epoch"] == int(order["epoch"].iloc[0])
    assert ckpt["metrics"] == best and "seconds" not in best
    probs = predict(load_checkpoint(root / "a" / "m.pt"), [p for p, _ in items[12:]], 3, "cpu")
    labels = [label for _, label in items[12:]]
    assert evaluate(labels, probs[:, 0])["accuracy"] == pytest.approx(best["val_accuracy"])


def test_a_frozen_epoch_changes_only_the_head(tmp_path):
    """All blocks frozen: backbone weights AND BatchNorm running statistics stay as loaded. The
    checkpoint names the weights file it started from without its folder (e.g. the run's
    results/pretrain/encoder.pt): it does not depend on where the run lives."""
    items = _squares(tmp_path, n=8, size=32)
    torch.manual_seed(3)
    state = resnet18(weights=None).state_dict()
    torch.save(state, tmp_path / "init.pth")
    cfg = {**CFG, "epochs": 1, "weights": str(tmp_path / "init.pth"), "selection_metric": "loss"}
    cfg["unfreeze"] = dict.fromkeys(PAPER, 1)
    train(items[:6], items[6:], cfg, tmp_path / "m.pt", tmp_path / "m.csv")
    checkpoint = torch.load(tmp_path / "m.pt", weights_only=True)
    assert checkpoint["config"]["weights"] == "init.pth"
    assert str(tmp_path) not in repr(checkpoint["config"])
    saved = checkpoint["state_dict"]
    for key, value in state.items():
        if not key.startswith("fc."):
            assert torch.equal(saved[key], value), key
    initial_fc = build_model("resnet18", tmp_path / "init.pth").fc.weight
    assert not torch.equal(saved["fc.weight"], initial_fc)


def test_auc_selection_needs_both_classes_in_val(tmp_path):
    items = _squares(tmp_path, n=6, size=32)
    positives = [item for item in items if item[1] == 1]
    with pytest.raises(ValueError, match="both classes"):
        train(items, positives, {**CFG, "selection_metric": "auc"}, tmp_path / "m", tmp_path / "c")


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        ({"unfreeze": {"layer5": 3}}, "unfreeze.layer5"),
        ({"augment": {"blur": 1}}, "augment.blur"),
        ({"arch": "vgg16"}, "arch"),
        ({"selection_metric": "f1"}, "selection_metric"),
        ({"epochs": 0}, "epochs"),
        ({"unfreeze": {"stem": -1}}, "unfreeze.stem"),
    ],
)
def test_bad_config_values_are_named(cfg, message):
    with pytest.raises(ValueError, match=message):
        resolve_config(cfg)


def test_config_merges_nested_sections_over_the_defaults():
    cfg = resolve_config({"unfreeze": {"layer4": 1}, "augment": {"hue": 0.0}})
    assert cfg["unfreeze"] == {**PAPER, "layer4": 1}
    assert cfg["augment"]["hue"] == 0.0 and cfg["augment"]["brightness"] == 0.1
    assert resolve_config()["unfreeze"] == PAPER  # the defaults themselves are untouched


def test_file_problems_name_the_file(tmp_path):
    from torchvision.models import resnet50

    torch.save(resnet50(weights=None).state_dict(), tmp_path / "r50.pth")
    with pytest.raises(ValueError, match=r"r50\.pth.*shape mismatches"):
        build_model("resnet18", tmp_path / "r50.pth")
    old = {k: v for k, v in resnet18(weights=None).state_dict().items()}
    old = {k: v for k, v in old.items() if not k.endswith("num_batches_tracked")}
    torch.save(old, tmp_path / "old.pth")  # old torchvision files lack num_batches_tracked
    assert torch.equal(
        build_model("resnet18", tmp_path / "old.pth").conv1.weight, old["conv1.weight"]
    )
    (tmp_path / "junk.pt").write_bytes(b"\x00garbage")
    with pytest.raises(ValueError, match=r"junk\.pt: cannot read"):
        load_checkpoint(tmp_path / "junk.pt")
    with pytest.raises(ValueError, match=r"gone\.pt: classifier checkpoint not found"):
        load_checkpoint(tmp_path / "gone.pt")


@pytest.mark.parametrize("name", ["cuda", "cuda:0"])
def test_cuda_without_cuda_is_a_clear_error_on_any_machine(monkeypatch, name):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(ValueError, match="CUDA is not available"):
        resolve_device(name)
    with pytest.raises(ValueError, match="unknown device"):
        resolve_device("gpu")


def test_flips_are_drawn_independently():
    """albumentations seeds every transform of a Compose alike (flips would always coincide);
    the dataset seeds each transform separately, so all four flip combinations occur."""
    from histo_wsss.classifier import _ImageDataset, preprocess
    from histo_wsss.training import Augmentation

    off = {"rotate90": False, "brightness": 0, "contrast": 0, "saturation": 0, "hue": 0}
    img = np.arange(4 * 4 * 3, dtype=np.uint8).reshape(1, 4, 4, 3)
    data = _ImageDataset(
        img, np.array([0]), Augmentation(resolve_config({"augment": off})["augment"]), 0
    )
    variants = [img[0], img[0][:, ::-1], img[0][::-1], img[0][::-1, ::-1]]
    seen = set()
    for epoch in range(40):
        data.epoch = epoch
        out = data[0][0]
        seen.add(next(i for i, v in enumerate(variants) if torch.equal(out, preprocess(v.copy()))))
    assert seen == {0, 1, 2, 3}


def test_k_classes_are_scored_each_and_on_average():
    labels = [[1, 0, 1], [1, 1, 0], [0, 1, 0], [0, 0, 1]]
    probs = [[0.9, 0.2, 0.8], [0.4, 0.7, 0.1], [0.3, 0.6, 0.2], [0.1, 0.3, 0.3]]
    result = evaluate(labels, probs, classes=["tumor", "stroma", "normal"])
    per = result["classes"]
    assert per["tumor"] == evaluate([1, 1, 0, 0], [0.9, 0.4, 0.3, 0.1])
    assert per["normal"]["accuracy"] == pytest.approx(3 / 4)  # 0.3 < 0.5 misses image 4
    assert result["accuracy"] == pytest.approx(np.mean([3 / 4, 1, 3 / 4]))
    assert result["auc"] == pytest.approx(1.0)
    assert result["exact_match"] == pytest.approx(2 / 4)
    assert evaluate([[1], [0]], [[0.8], [0.3]]) == evaluate([1, 0], [0.8, 0.3])  # K = 1
    line = evaluation_line(result)
    assert line.startswith("4 images, 3 classes: mean accuracy 0.8333") and "stroma:" in line


def test_a_multi_label_classifier_has_one_sigmoid_output_per_class(tmp_path):
    """Three tags (a bright square, a dark bar, blue tint) in any combination: K outputs, the
    per-class metrics columns, a checkpoint that loads with its K outputs."""
    rng = np.random.default_rng(0)
    items = []
    for i in range(12):
        tags = (i % 2, (i // 2) % 2, int(i % 3 == 0))
        img = rng.integers(60, 120, (48, 48, 3), np.uint8)
        if tags[0]:
            img[4:20, 4:20] = 230
        if tags[1]:
            img[30:36, :] = 10
        if tags[2]:
            img[..., 2] = 200
        write_png(tmp_path / f"{i}.png", img)
        items.append((str(tmp_path / f"{i}.png"), tags))
    cfg = {**CFG, "epochs": 2}
    names = ["square", "bar", "blue"]
    train(items[:8], items[8:], cfg, tmp_path / "m.pt", tmp_path / "m.csv", classes=names)
    metrics = pd.read_csv(tmp_path / "m.csv")
    assert list(metrics.columns[3:11]) == [
        "val_accuracy", "val_auc",
        "val_accuracy_square", "val_auc_square", "val_accuracy_bar", "val_auc_bar",
        "val_accuracy_blue", "val_auc_blue",
    ]  # fmt: skip
    per_class = metrics[["val_accuracy_square", "val_accuracy_bar", "val_accuracy_blue"]]
    assert np.allclose(per_class.mean(axis=1), metrics["val_accuracy"])
    model = load_checkpoint(tmp_path / "m.pt")
    assert model.fc.out_features == 3
    assert predict(model, [p for p, _ in items[8:]], 4).shape == (4, 3)
    with pytest.raises(ValueError, match="item 1 .*: 2 class label"):
        train([items[0], (items[1][0], (1, 0))], items[8:], cfg, tmp_path / "x.pt", tmp_path / "x")
