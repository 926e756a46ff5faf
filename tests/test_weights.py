"""Starting weights: none, a local file, or torchvision's ImageNet weights from the hub cache."""

import logging
import socket
import time
import urllib.error

import pytest
import torch
from torchvision.models import resnet18

from histo_wsss import classifier, segmentation, weights
from histo_wsss.training import save_checkpoint
from histo_wsss.weights import IMAGENET, imagenet_cache_path, local_file, parse, read_state


def _no_network(*args, **kwargs):
    raise urllib.error.URLError("[Errno -2] Name or service not known")


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    """An empty torch hub cache, and no network: a download attempt fails at once."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", _no_network)
    return tmp_path / "torch"


def _resnet18_file(path, seed=1):
    torch.manual_seed(seed)
    source = resnet18(weights=None)  # 1000-class fc, as torchvision's ImageNet file
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(source.state_dict(), path)
    return source


def test_keywords_and_paths():
    assert parse(None) is None and parse("none") is None and parse("None") is None
    assert parse("imagenet") == IMAGENET and parse(" ImageNet ") == IMAGENET
    assert parse("data/r18.pth") == "data/r18.pth" and parse("./imagenet") == "./imagenet"
    assert [local_file(v) for v in (None, "none", "imagenet", "w.pth")] == [
        None,
        None,
        None,
        "w.pth",
    ]
    with pytest.raises(ValueError, match="null, 'none', 'imagenet', 'pretrained' or a path"):
        parse(3)


@pytest.mark.parametrize("value", [None, "none"])
def test_no_weights_is_random_init_with_a_warning(value, caplog):
    with caplog.at_level(logging.WARNING):
        torch.manual_seed(0)
        a = classifier.build_model("resnet18", value)
        torch.manual_seed(1)
        b = classifier.build_model("resnet18", value)
    assert "random weights" in caplog.text
    assert not torch.equal(a.conv1.weight, b.conv1.weight)
    assert classifier.resolve_config({"weights": value})["weights"] is None


def test_a_local_file_loads_into_the_classifier_and_the_encoder(tmp_path, torch_home):
    source = _resnet18_file(tmp_path / "r18.pth")
    model = classifier.build_model("resnet18", tmp_path / "r18.pth")
    assert torch.equal(model.layer4[1].conv2.weight, source.layer4[1].conv2.weight)
    seg = segmentation.build_model(
        {"encoder": "resnet18", "encoder_weights": str(tmp_path / "r18.pth")}
    )
    assert torch.equal(seg.encoder.layer2[0].conv1.weight, source.layer2[0].conv1.weight)


def test_a_classifier_checkpoint_initialises_the_encoder(tmp_path):
    """``segmentation.encoder_weights: classifier`` hands the workflow's classifier checkpoint
    (a dict around the state dict, one-logit fc) to the encoder."""
    torch.manual_seed(3)
    trained = classifier.build_model("resnet18")
    ckpt = {"arch": "resnet18", "state_dict": trained.state_dict(), "epoch": 1}
    save_checkpoint(tmp_path / "model.pt", ckpt | {"metrics": {}, "config": {}})
    reloaded = classifier.load_checkpoint(tmp_path / "model.pt")  # the real checkpoint format
    assert torch.equal(reloaded.layer3[0].conv1.weight, trained.layer3[0].conv1.weight)
    seg = segmentation.build_model(
        {"encoder": "resnet18", "encoder_weights": str(tmp_path / "model.pt")}
    )
    expected = {k: v for k, v in trained.state_dict().items() if not k.startswith("fc.")}
    assert all(torch.equal(seg.encoder.state_dict()[k], v) for k, v in expected.items())
    torch.save({"state_dict": {"conv1.weight": "not a tensor"}}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match=r"bad\.pt: not a state dict"):
        read_state(tmp_path / "bad.pt")


def test_imagenet_loads_from_the_hub_cache_without_network(torch_home, caplog):
    path = imagenet_cache_path("resnet18")
    assert path == torch_home / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    source = _resnet18_file(path)  # a cached file is not hash-checked (torch checks downloads)
    with caplog.at_level(logging.INFO):
        model = classifier.build_model("resnet18", "imagenet")
        seg = segmentation.build_model({"encoder": "resnet18", "encoder_weights": "imagenet"})
    assert torch.equal(model.layer3[0].conv1.weight, source.layer3[0].conv1.weight)
    assert torch.equal(seg.encoder.conv1.weight, source.conv1.weight)
    assert "torchvision's ImageNet weights" in caplog.text


def test_imagenet_offline_fails_at_once_saying_how_to_pass_a_local_file(torch_home):
    start = time.perf_counter()
    with pytest.raises(RuntimeError) as err:
        classifier.build_model("resnet101", "imagenet")
    assert time.perf_counter() - start < 5
    message = str(err.value)
    assert "https://download.pytorch.org/models/resnet101-" in message
    assert str(torch_home / "hub" / "checkpoints") in message
    assert "local path" in message and "Name or service not known" in message


def test_the_download_has_a_socket_timeout(torch_home, monkeypatch):
    """urllib waits for ever by default; the download runs with a short socket timeout."""
    seen = []

    def download(*args, **kwargs):
        seen.append(socket.getdefaulttimeout())
        _no_network()

    monkeypatch.setattr(torch.hub, "download_url_to_file", download)
    with pytest.raises(RuntimeError):
        weights.load_state("resnet18", IMAGENET)
    assert seen == [weights.DOWNLOAD_TIMEOUT_S]
    assert socket.getdefaulttimeout() is None  # restored
