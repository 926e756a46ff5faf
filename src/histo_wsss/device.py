"""Choose the torch device named in a config (``auto``, ``cpu``, ``cuda`` or ``cuda:N``)."""

from __future__ import annotations

import logging
import re

import torch

__all__ = ["resolve_device"]

_log = logging.getLogger(__name__)
_CUDA = re.compile(r"cuda(?::(\d+))?")


def resolve_device(name: str) -> torch.device:
    """Return the device for ``name``.

    ``"auto"``: the current CUDA device when CUDA is available, else the CPU (logged at INFO).
    ``"cpu"``: the CPU. ``"cuda"`` / ``"cuda:N"``: that GPU; ``ValueError`` when CUDA is not
    available or there is no GPU ``N``. Anything else: ``ValueError``.
    """
    if not isinstance(name, str):
        raise ValueError(f"device must be a string ('auto', 'cpu', 'cuda', 'cuda:N'), got {name!r}")
    key = name.strip().lower()
    if key == "auto":
        if torch.cuda.is_available():
            device = torch.device("cuda")
            _log.info("device 'auto': using CUDA (%s)", torch.cuda.get_device_name(device))
        else:
            device = torch.device("cpu")
            _log.info("device 'auto': CUDA is not available, using the CPU")
        return device
    if key == "cpu":
        return torch.device("cpu")
    match = _CUDA.fullmatch(key)
    if match is None:
        raise ValueError(f"unknown device {name!r}; use 'auto', 'cpu', 'cuda' or 'cuda:N'")
    if not torch.cuda.is_available():
        built = torch.version.cuda or "no CUDA"
        raise ValueError(
            f"device {name!r} requested but CUDA is not available on this machine "
            f"(torch {torch.__version__} built with {built}); set device to 'cpu' or 'auto'"
        )
    if match.group(1) is not None:
        index, count = int(match.group(1)), torch.cuda.device_count()
        if index >= count:
            raise ValueError(
                f"device {name!r} requested but only {count} CUDA device(s) are visible "
                f"(indices 0..{count - 1})"
            )
        return torch.device("cuda", index)
    return torch.device("cuda")
