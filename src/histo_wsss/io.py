"""Atomic file output and image input/output.

An output is written under a temporary name beside it (``.<name>.<8 random characters><suffix>``)
and moved into place when complete, so a killed job never leaves a half-written output; the
temporary that such a job leaves is removed when the output is next written.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def unwritable_folders(folder: str | os.PathLike, depth: int) -> list[Path]:
    """``folder`` and its subfolders down to ``depth`` levels below it that this process may
    not write into (none when ``folder`` does not exist yet), sorted."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [] if os.access(folder, os.W_OK | os.X_OK) else [folder]
    if depth > 0 and os.access(folder, os.R_OK | os.X_OK):
        for sub in sorted(folder.iterdir()):
            found += unwritable_folders(sub, depth - 1)
    return found


@cache
def _hidden_names(folder: Path) -> tuple[str, ...]:
    """Names starting with ``.`` in ``folder`` when this process first writes there (listed
    once: a job writes thousands of files into one folder)."""
    return tuple(name for name in os.listdir(folder) if name.startswith("."))


def _remove_stale(path: Path, suffix: str) -> None:
    """Remove the temporaries of ``path`` (file or folder) that a killed writer left behind."""
    own = re.compile(re.escape(f".{path.name}.") + "[a-z0-9_]{8}" + re.escape(suffix))
    for name in filter(own.fullmatch, _hidden_names(path.parent)):
        stale = path.parent / name
        if stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)


def _temporary(path: Path, folder: bool) -> Path:
    """A new temporary file (or ``folder``) beside ``path``, once the stale ones that a killed
    writer of ``path`` left there are removed; names the folder when it is not writable."""
    suffix = "" if folder else path.suffix
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale(path, suffix)
        if folder:
            return Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    except PermissionError as err:
        raise PermissionError(
            f"cannot write {path}: no permission to write into the folder {path.parent}"
        ) from err
    os.close(fd)
    return Path(tmp)


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; move it into place only if the block succeeds."""
    path = Path(path)
    tmp = _temporary(path, folder=False)
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
    tmp = _temporary(path, folder=True)
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


def open_image(path: str | os.PathLike) -> Image.Image:
    """``PIL.Image.open``, trying first only the format the file's extension names (a PNG's
    header is then read in 60 % of the time: 60,000 files are checked at DAG build)."""
    hint = Image.registered_extensions().get(Path(path).suffix.lower())
    if hint:
        try:
            return Image.open(path, formats=(hint,))
        except UnidentifiedImageError:
            pass  # not what its extension says: let PIL try every format
    return Image.open(path)


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
    return scale_mask(mask, scale)


def scale_mask(mask: np.ndarray, scale: float) -> np.ndarray:
    """A boolean mask resized by ``scale`` as :func:`read_mask` resizes one it reads."""
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
