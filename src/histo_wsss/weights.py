"""Where a ResNet starts from: random weights, torchvision's ImageNet weights, or a local file.

The ``classifier.weights`` and ``segmentation.encoder_weights`` config keys take

* ``null`` or ``none``: random initialisation (the model builders log a WARNING);
* ``imagenet``: torchvision's own ImageNet-1k weights of the architecture
  (``torchvision.models.ResNetXX_Weights.IMAGENET1K_V1``), read from torch's hub cache
  (``$TORCH_HOME/hub/checkpoints/``, by default ``~/.cache/torch/hub/checkpoints/``) and
  downloaded there (hash-checked) when absent. Without internet access the download fails at
  once (every socket operation times out after :data:`DOWNLOAD_TIMEOUT_S` seconds; torch does
  not retry) with a message saying how to pass a local file instead;
* ``pretrained``: the encoder of this run's self-supervised pretraining
  (:mod:`histo_wsss.pretrain`, ``results/pretrain/encoder.pt``). The workflow replaces the
  keyword by that file's path; the library itself refuses it (:func:`load_state`);
* anything else: the path of a local torchvision state-dict file, or of a classifier checkpoint
  written by this workflow (``results/classifier/model.pt``: its ``state_dict`` is used; the
  workflow's ``segmentation.encoder_weights: classifier`` names that file).

The keywords are case-insensitive; a local file literally named ``imagenet``, ``none`` or
``pretrained`` is passed as ``./imagenet``.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

if TYPE_CHECKING:
    import torch
    import torchvision

# torch is imported where it is used: the workflow's DAG build parses weight keys (parse,
# local_file) and should not pay torch's import time on every snakemake call.

__all__ = [
    "DOWNLOAD_TIMEOUT_S",
    "IMAGENET",
    "PRETRAINED",
    "imagenet_cache_path",
    "load_state",
    "load_file",
    "local_file",
    "parse",
    "read_state",
    "recorded_config",
    "resnet_arch",
]

IMAGENET = "imagenet"
PRETRAINED = "pretrained"
NONE = "none"
KEYWORDS = (IMAGENET, PRETRAINED)
DOWNLOAD_TIMEOUT_S = 20


def parse(value: str | os.PathLike | None) -> str | None:
    """``None`` (random init), :data:`IMAGENET`, :data:`PRETRAINED`, or a local path as a string.

    Raises ``ValueError`` for anything else than ``None``, a string or a path.
    """
    if value is None:
        return None
    if not isinstance(value, str | os.PathLike):
        raise ValueError(
            f"weights must be null, 'none', 'imagenet', 'pretrained' or a path, got {value!r}"
        )
    text = str(value)
    keyword = text.strip().lower()
    if keyword == NONE:
        return None
    return keyword if keyword in KEYWORDS else text


def local_file(value: str | os.PathLike | None) -> str | None:
    """The local weights file that ``value`` names, or ``None`` (random init or a keyword)."""
    weights = parse(value)
    return None if weights is None or weights in KEYWORDS else weights


def recorded_config(cfg: Mapping, key: str) -> dict:
    """``cfg`` as a checkpoint records it: the local weights file of ``cfg[key]`` by its name
    only (its path may hold the run's folder, and the checkpoint must not depend on it)."""
    weights = local_file(cfg[key])
    return {**cfg, key: Path(weights).name} if weights else dict(cfg)


# Blocks per stage of torchvision's ResNets, and whether they are bottleneck blocks (conv3).
_RESNETS = {
    ((2, 2, 2, 2), False): "resnet18",
    ((3, 4, 6, 3), False): "resnet34",
    ((3, 4, 6, 3), True): "resnet50",
    ((3, 4, 23, 3), True): "resnet101",
    ((3, 8, 36, 3), True): "resnet152",
}


def resnet_arch(state: Mapping[str, object]) -> str | None:
    """The torchvision ResNet (``resnet18`` .. ``resnet152``) whose state dict ``state`` is,
    told by its block counts and block type; ``None`` when it is none of them.

    Lets a mismatched weights file be named by what it holds (a resnet50 file given to a
    resnet18) instead of by a list of missing keys.
    """
    blocks = tuple(
        len({k.split(".")[1] for k in state if k.startswith(f"layer{i}.") and k.count(".") > 1})
        for i in range(1, 5)
    )
    return _RESNETS.get((blocks, "layer1.0.conv3.weight" in state))


def _imagenet_weights(arch: str) -> torchvision.models.WeightsEnum:
    import torchvision

    return torchvision.models.get_model_weights(arch).IMAGENET1K_V1


def imagenet_cache_path(arch: str) -> Path:
    """Where torch's hub cache keeps (or will keep) ``arch``'s ImageNet weights file."""
    import torch

    url = _imagenet_weights(arch).url
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url).path).name


@contextmanager
def _socket_timeout(seconds: float) -> Iterator[None]:
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def _download_imagenet(arch: str) -> None:
    import torch

    url, path = _imagenet_weights(arch).url, imagenet_cache_path(arch)
    hash_prefix = torch.hub.HASH_REGEX.search(path.name).group(1)  # torchvision's names have it
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with _socket_timeout(DOWNLOAD_TIMEOUT_S):
            torch.hub.download_url_to_file(url, str(path), hash_prefix, progress=False)
    except (OSError, RuntimeError) as err:
        raise RuntimeError(
            f"cannot download torchvision's ImageNet weights of {arch} from {url} to {path} "
            f"({type(err).__name__}: {err}). Without internet access, download that file on a "
            f"machine that has it, then either copy it to {path} or set classifier.weights / "
            f"segmentation.encoder_weights to its local path (or null for random weights)."
        ) from err


def load_file(path: str | os.PathLike, missing: str, reading: str) -> object:
    """``torch.load`` of ``path`` on the CPU, tensors and plain types only; ``ValueError``
    naming the file when it is missing ("<path>: <missing> not found") or unreadable."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: {missing} not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any failure means "not readable as such a file"
        raise ValueError(f"{path}: cannot read as {reading} ({err})") from err


def read_state(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A state dict (names to tensors) read from ``path`` (a checkpoint dict's ``state_dict``
    entry when it has one); ``ValueError`` naming the file when it is missing, unreadable or
    not a state dict."""
    import torch

    state = load_file(path, "weights file", "a torch state-dict file")
    if isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise ValueError(f"{path}: not a state dict (a mapping of names to tensors)")
    return dict(state)


def load_state(arch: str, weights: str) -> tuple[dict[str, torch.Tensor], str]:
    """``(state dict, source)`` of parsed ``weights`` (:data:`IMAGENET` or a local path) for the
    torchvision ResNet ``arch``; ``source`` names the file for messages. :data:`PRETRAINED` is
    the workflow's keyword for its pretraining output and is refused here (``ValueError``): the
    workflow passes that file's path instead."""
    if weights == PRETRAINED:
        raise ValueError(
            "weights 'pretrained' name the workflow's pretraining output: pass the path of the "
            "encoder file it wrote (results/pretrain/encoder.pt) to the library instead"
        )
    if weights != IMAGENET:
        return read_state(weights), weights
    path = imagenet_cache_path(arch)
    if not path.is_file():
        _download_imagenet(arch)
    return read_state(path), f"{path} (torchvision's ImageNet weights)"
