"""The image-level classifier: weights, unfreezing, a real tiny training run, metrics."""

import math

import numpy as np
import pandas as pd
import pytest
import torch
from torchvision.models import resnet18, resnet34

from histo_wsss.classifier import (
    build_model,
    evaluate,
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
    assert list(metrics["epoch"]) == [0, 1, 2]
    assert metrics["trainable"].tolist()[0] == "layer3+layer4+fc"
    lr = metrics["lr"].to_numpy()
    assert lr[1] > lr[0] and lr[1] > lr[2]  # one-cycle: warms up, then anneals
    assert lr[-1] < lr.max() / 5
    model = load_checkpoint(root / "a" / "m.pt")
    probs = predict(model, [p for p, _ in items[12:]], 2, torch.device("cpu"))
    assert probs.shape == (4,) and ((probs >= 0) & (probs <= 1)).all()
    assert best["epoch"] in metrics["epoch"].tolist()


def test_training_is_deterministic(trained):
    _, _, [(_, a), (_, b)] = trained
    assert a.drop(columns="seconds").equals(b.drop(columns="seconds"))


def test_learning_curve_bytes_are_reproducible(trained, tmp_path):
    root, _, _ = trained
    learning_curve(root / "a" / "m.csv", tmp_path / "1.png")
    learning_curve(root / "a" / "m.csv", tmp_path / "2.png")
    assert (tmp_path / "1.png").read_bytes() == (tmp_path / "2.png").read_bytes()


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
