"""Self-supervised pretraining: the NT-Xent loss, the H&E views, a short real run whose encoder
loads into both networks, and the pretraining config errors the DAG build reports."""

import math
import re

import numpy as np
import pandas as pd
import pytest
import torch
from skimage.color import rgb2hed
from torchvision.models import resnet18, resnet34, resnet50, resnet101
from workflow_runner import TINY, snakemake

from histo_wsss import classifier, segmentation
from histo_wsss.demo import DemoSpec, render
from histo_wsss.pretrain import (
    DEFAULTS,
    METRICS_COLUMNS,
    HEDJitter,
    SimCLR,
    Views,
    nt_xent,
    resolve_config,
    train,
)
from histo_wsss.weights import PRETRAINED, load_state, local_file, parse, resnet_arch

TINY_PRETRAIN = {"epochs": 2, "batch_size": 3, "crop_size": 32, "device": "cpu"}


def _tissue(seed: int, shape=(40, 48)) -> np.ndarray:
    """A crop (at most 64 px) of a demo image: tissue rendered from haematoxylin and eosin
    concentrations (Beer-Lambert), so its colours lie inside the H&E gamut."""
    image, _ = render(DemoSpec(size=64, seed=seed), 0, bool(seed % 2))
    return np.ascontiguousarray(image[: shape[0], : shape[1]])


# --------------------------------------------------------------------------------------------
# NT-Xent


def test_nt_xent_equals_its_definition_computed_view_by_view():
    torch.manual_seed(0)
    z1, z2, t = torch.randn(3, 5), torch.randn(3, 5), 0.5
    z = torch.nn.functional.normalize(torch.cat([z1, z2]), dim=1)
    n2 = len(z)
    losses = []
    for i in range(n2):
        partner = (i + 3) % n2
        sims = [float(z[i] @ z[k]) / t for k in range(n2) if k != i]
        positive = float(z[i] @ z[partner]) / t
        losses.append(-positive + math.log(sum(math.exp(s) for s in sims)))
    assert float(nt_xent(z1, z2, t)) == pytest.approx(np.mean(losses), rel=1e-5)


def test_identical_views_with_a_perfect_projection_beat_random_ones():
    """Orthogonal projections whose two views coincide: each positive has cosine 1 and every
    negative 0, so the loss is -log(e^(1/t) / (e^(1/t) + 2N - 2)), below random projections."""
    n, t = 4, 0.2
    perfect = torch.eye(n, 8)
    expected = -math.log(math.exp(1 / t) / (math.exp(1 / t) + 2 * n - 2))
    assert float(nt_xent(perfect, perfect.clone(), t)) == pytest.approx(expected, rel=1e-5)
    torch.manual_seed(1)
    random = [float(nt_xent(torch.randn(n, 8), torch.randn(n, 8), t)) for _ in range(20)]
    assert expected < min(random)
    with pytest.raises(ValueError, match="N >= 2"):
        nt_xent(torch.randn(1, 8), torch.randn(1, 8), t)


# --------------------------------------------------------------------------------------------
# Views


def test_views_are_crops_of_one_size_deterministic_per_seed():
    views = Views(DEFAULTS["views"], 32)
    image = _tissue(0)
    first = views((0, 0, 0, 0), image)
    assert first.shape == (32, 32, 3) and first.dtype == np.uint8
    assert np.array_equal(first, views((0, 0, 0, 0), image))
    assert not np.array_equal(first, views((0, 0, 0, 1), image))  # the other view
    small = views((0, 0, 0, 0), _tissue(1, (20, 26)))  # smaller than the crop: padded
    assert small.shape == (32, 32, 3) and small.dtype == np.uint8


def test_stain_jitter_scales_the_haematoxylin_eosin_dab_channels():
    image = _tissue(2)
    jitter = HEDJitter(0.1, 0.02)
    same = jitter.apply(image, factors=np.ones(3), offsets=np.zeros(3))
    assert np.abs(same.astype(int) - image).mean() < 1  # unmixing and mixing back: identity
    more_h = jitter.apply(image, factors=np.array([1.3, 1.0, 1.0]), offsets=np.zeros(3))
    ratio = rgb2hed(more_h).mean(axis=(0, 1)) / rgb2hed(image).mean(axis=(0, 1))
    assert ratio == pytest.approx([1.3, 1.0, 1.0], abs=0.02)


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        ({"method": "byol"}, "method must be one of"),
        ({"batch_size": 1}, "batch_size must be an integer >= 2"),
        ({"views": {"min_scale": 0}}, r"views\.min_scale must be in \(0, 1\]"),
        ({"views": {"stain": 0.1}}, r"unknown pretrain config key\(s\): views\.stain"),
        ({"extra_images": "x"}, r"unknown pretrain config key\(s\): extra_images"),
    ],
)
def test_bad_config_values_are_named(cfg, message):
    with pytest.raises(ValueError, match=message):
        resolve_config(cfg)


# --------------------------------------------------------------------------------------------
# A short pretraining run


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """Two identical pretraining runs on six small tissue images of two sizes."""
    out = tmp_path_factory.mktemp("pretrain")
    images = [_tissue(i, (40, 48) if i % 2 else (36, 36)) for i in range(6)]
    for run in ("a", "b"):
        train(images, TINY_PRETRAIN, out / run / "encoder.pt", out / run / "metrics.csv")
    return out


def test_pretraining_writes_a_torchvision_encoder_and_its_metrics(pretrained):
    state = torch.load(pretrained / "a" / "encoder.pt", weights_only=True)
    reference = resnet18(weights=None).state_dict()
    assert set(state) == {k for k in reference if not k.startswith("fc.")}  # no fc, no head
    assert resnet_arch(state) == "resnet18"
    metrics = pd.read_csv(pretrained / "a" / "metrics.csv")
    assert tuple(metrics.columns) == METRICS_COLUMNS and list(metrics["epoch"]) == [1, 2]
    assert np.isfinite(metrics["loss"]).all() and (metrics["images_per_s"] > 0).all()
    torch.manual_seed(0)  # the run's seed: the weights it started from
    start = SimCLR("resnet18", 128).encoder.state_dict()
    assert not torch.equal(state["layer4.1.conv2.weight"], start["layer4.1.conv2.weight"])
    assert not torch.equal(state["bn1.running_mean"], start["bn1.running_mean"])


def test_pretraining_is_deterministic(pretrained):
    a, b = (pretrained / run for run in ("a", "b"))
    assert (a / "encoder.pt").read_bytes() == (b / "encoder.pt").read_bytes()
    timing = ["images_per_s", "waiting_share", "seconds"]
    pd.testing.assert_frame_equal(
        pd.read_csv(a / "metrics.csv").drop(columns=timing),
        pd.read_csv(b / "metrics.csv").drop(columns=timing),
    )


def test_the_encoder_loads_into_the_classifier_and_the_deeplab_encoder(pretrained):
    path = pretrained / "a" / "encoder.pt"
    state = torch.load(path, weights_only=True)
    model = classifier.build_model("resnet18", path)
    assert torch.equal(model.layer3[1].conv1.weight, state["layer3.1.conv1.weight"])
    seg = segmentation.build_model(
        {"arch": "DeepLabV3Plus", "encoder": "resnet18", "encoder_weights": str(path)}
    )
    got = seg.encoder.state_dict()
    assert set(got) == set(state) and all(torch.equal(got[k], v) for k, v in state.items())
    with pytest.raises(ValueError, match="holds resnet18 weights, the network is a resnet34"):
        classifier.build_model("resnet34", path)


# --------------------------------------------------------------------------------------------
# Weights files


def test_a_weights_file_is_named_by_the_resnet_it_holds(tmp_path):
    with torch.device("meta"):  # shapes only: no memory, no time
        states = {f.__name__: f(weights=None).state_dict() for f in (resnet34, resnet50, resnet101)}
    assert {name: resnet_arch(state) for name, state in states.items()} == {
        name: name for name in states
    }
    assert resnet_arch({"conv1.weight": torch.zeros(1)}) is None
    torch.save(resnet50(weights=None).state_dict(), tmp_path / "r50.pth")
    for build in (
        lambda: classifier.build_model("resnet18", tmp_path / "r50.pth"),
        lambda: segmentation.build_model(
            {"encoder": "resnet18", "encoder_weights": str(tmp_path / "r50.pth")}
        ),
    ):
        with pytest.raises(ValueError, match=r"r50\.pth: the file holds resnet50 weights, the "):
            build()


def test_pretrained_is_a_keyword_the_library_leaves_to_the_workflow():
    assert parse("pretrained") == parse(" Pretrained ") == PRETRAINED
    assert local_file("pretrained") is None and local_file("./pretrained") == "./pretrained"
    with pytest.raises(ValueError, match="results/pretrain/encoder.pt"):
        load_state("resnet18", PRETRAINED)


# --------------------------------------------------------------------------------------------
# Pretraining configs that cannot run fail when the DAG is built


def _config(**pretrain):
    return {
        **TINY,
        "classifier": {**TINY["classifier"], "weights": "pretrained"},
        "pretrain": pretrain,
    }


@pytest.mark.integration
@pytest.mark.parametrize(
    ("pretrain", "message"),
    [
        ({"method": "byol"}, r"'byol' is not one of \['simclr'\]"),
        ({"batch_size": 1}, r"1 is less than the minimum of 2"),
        (
            {"arch": "resnet34"},
            "classifier.weights is 'pretrained' but pretrain.arch is resnet34 and "
            "classifier.arch is resnet18",
        ),
        ({"extra_images": "extra"}, r"pretrain.extra_images: no \.png/.* image in extra"),
    ],
    ids=["method", "batch_size", "arch", "extra_images"],
)
def test_a_pretraining_config_that_cannot_run_fails_at_dag_build(tmp_path, pretrain, message):
    (tmp_path / "extra").mkdir()
    (tmp_path / "extra" / "notes.txt").write_text("no image here")
    result = snakemake(tmp_path, "-n", config=_config(**pretrain), check=False)
    out = result.stdout + result.stderr
    assert result.returncode != 0
    assert re.search(message, out), out[-3000:]
    if "minimum" in message or "simclr" in message:  # the schema names the key's path
        assert "pretrain" in out and next(iter(pretrain)) in out
    assert not (tmp_path / "results").exists()
