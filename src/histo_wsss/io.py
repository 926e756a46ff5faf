"""Atomic file output and image input/output."""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; move it into place only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates owner-only files
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; it replaces ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp creates owner-only folders
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def scaled_size(size: tuple[int, int], scale: float) -> tuple[int, int]:
    """``(height, width)`` of an image of ``size`` (height, width) resized by ``scale``: each
    side rounded, at least 1 pixel. Images and their masks use it alike, so they stay aligned."""
    return tuple(max(1, round(side * scale)) for side in size)


def _resized(img: Image.Image, scale: float) -> Image.Image:
    """``img`` resized by ``scale`` with area averaging (PIL's box filter); as is at 1."""
    if scale == 1:
        return img
    height, width = scaled_size((img.height, img.width), scale)
    return img.resize((width, height), Image.Resampling.BOX)


def read_rgb(path: str | os.PathLike, scale: float = 1.0) -> np.ndarray:
    """Read an image as an ``HxWx3`` uint8 RGB array, resized by ``scale`` (the workflow's
    working resolution, ``stain.scale``); raise ``ValueError`` naming the file."""
    try:
        with Image.open(path) as img:
            if img.mode != "RGB":
                raise ValueError(f"{path}: image mode is {img.mode}, expected RGB")
            return np.array(_resized(img.convert("RGB"), scale))
    except (OSError, SyntaxError) as err:
        raise ValueError(f"{path}: cannot read image ({err})") from err


def read_mask(path: str | os.PathLike, scale: float = 1.0) -> np.ndarray:
    """Read a single-channel mask as a boolean array (any non-zero pixel is foreground), resized
    by ``scale`` like :func:`read_rgb` resizes its image (a pixel is foreground where most of
    the area it covers is)."""
    try:
        with Image.open(path) as img:
            mask = np.asarray(img.convert("L")) > 0
    except (OSError, SyntaxError) as err:
        raise ValueError(f"{path}: cannot read mask ({err})") from err
    if scale == 1:
        return mask
    return np.asarray(_resized(Image.fromarray(mask.astype(np.uint8) * 255), scale)) > 127


def write_png(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write a uint8 (or boolean, stored as 0/255) array as PNG, atomically and reproducibly."""
    array = np.asarray(array)
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    if array.dtype != np.uint8:
        raise TypeError(f"{path}: expected uint8 or bool array, got {array.dtype}")
    with atomic_path(path) as tmp:
        Image.fromarray(array).save(tmp, format="PNG")


def write_csv(path: str | os.PathLike, table: pd.DataFrame) -> None:
    """Write a table as CSV with ``\\n`` line endings, atomically."""
    with atomic_path(path) as tmp:
        table.to_csv(tmp, index=False, lineterminator="\n")


def _nan_to_none(data: object) -> object:
    if isinstance(data, float) and not math.isfinite(data):
        return None
    if isinstance(data, dict):
        return {k: _nan_to_none(v) for k, v in data.items()}
    if isinstance(data, list | tuple):
        return [_nan_to_none(v) for v in data]
    return data


def write_json(path: str | os.PathLike, data: object) -> None:
    """Write strict JSON (NaN and infinities become null), sorted keys, atomically."""
    text = json.dumps(_nan_to_none(data), indent=2, sort_keys=True, allow_nan=False)
    with atomic_path(path) as tmp:
        tmp.write_text(text + "\n")
