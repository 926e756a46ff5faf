"""Patches cut from larger images, each tagged from its source image's label or from the share
of its real mask that is positive: how BCSS-WSSS and LUAD-HistoSeg were built from masked
slides, and how the classifier gets many small training examples out of a few large images.

Only the train and val images are cut; a patch belongs to the split of its source image, so no
image is on both sides. The workflow cuts the stain-normalized images at the working scale.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from histo_wsss.io import read_mask, read_rgb, write_png

TAG_SOURCES = ("image", "mask")
COLUMNS = ("name", "source", "split", "y", "x", "positive_share", "positive")


@dataclass(frozen=True)
class PatchParams:
    """Keys of the ``patches`` config section: side and stride in pixels; ``tags`` = ``image``
    (a patch inherits its image's label: image-level supervision only) or ``mask`` (positive
    when at least ``min_share`` of its pixels are positive in the real mask)."""

    size: int
    stride: int
    tags: str = "image"
    min_share: float = 0.05

    def __post_init__(self) -> None:
        if self.size < 1 or self.stride < 1:
            raise ValueError(
                f"patches: size and stride must be >= 1, got {self.size}, {self.stride}"
            )
        if self.tags not in TAG_SOURCES:
            raise ValueError(f"patches.tags must be one of {TAG_SOURCES}, got {self.tags!r}")

    @classmethod
    def from_config(cls, cfg: dict) -> PatchParams:
        return cls(cfg["size"], cfg["stride"], cfg["tags"], cfg["min_share"])


def grid(length: int, size: int, stride: int) -> list[int]:
    """Start offsets of patches of ``size`` every ``stride`` pixels along a side of ``length``,
    the last one moved back to end at the border so that the whole side is covered."""
    if size > length:
        raise ValueError(f"patch size {size} exceeds the image side {length}")
    starts = list(range(0, length - size + 1, stride))
    if starts[-1] + size < length:
        starts.append(length - size)
    return starts


def cut(
    name: str,
    rgb: np.ndarray,
    label: int,
    params: PatchParams,
    mask: np.ndarray | None = None,
) -> list[tuple[dict, np.ndarray]]:
    """``(row, patch)`` of every patch of one image, rows as in :data:`COLUMNS` (without
    ``split``); ``positive_share`` is NaN without a mask."""
    height, width = rgb.shape[:2]
    try:
        ys, xs = grid(height, params.size, params.stride), grid(width, params.size, params.stride)
    except ValueError as err:
        raise ValueError(
            f"{name}: {err} ({width}x{height} px; set a smaller patches.size)"
        ) from None
    out = []
    for y in ys:
        for x in xs:
            window = np.s_[y : y + params.size, x : x + params.size]
            share = float(mask[window].mean()) if mask is not None else float("nan")
            positive = share >= params.min_share if params.tags == "mask" else bool(label)
            row = {"name": f"{name}_y{y}_x{x}", "source": name, "y": y, "x": x}
            row |= {"positive_share": round(share, 6), "positive": int(positive)}
            out.append((row, rgb[window]))
    return out


def extract(
    names: Sequence[str],
    splits: Sequence[str],
    labels: Sequence[int],
    images: Sequence[str | os.PathLike],
    masks: Sequence[str | os.PathLike],
    params: PatchParams,
    out_dir: str | os.PathLike,
) -> pd.DataFrame:
    """Cut every train/val image into ``out_dir/images/<patch>.png``; return the patch table
    (:data:`COLUMNS`). ``masks`` (one per image) are needed only for ``tags: mask``."""
    if params.tags == "mask" and len(masks) != len(names):
        raise ValueError("patches.tags is 'mask' but the dataset has no real masks")
    out_dir = Path(out_dir)
    rows = []
    for i, (name, split) in enumerate(zip(names, splits, strict=True)):
        if split not in ("train", "val"):
            continue
        rgb = read_rgb(images[i])
        mask = read_mask(masks[i]) if params.tags == "mask" else None
        if mask is not None and mask.shape != rgb.shape[:2]:
            raise ValueError(
                f"{masks[i]}: mask is {mask.shape}, its image {images[i]} {rgb.shape[:2]}"
            )
        for row, patch in cut(name, rgb, labels[i], params, mask):
            write_png(out_dir / "images" / f"{row['name']}.png", patch)
            rows.append({**row, "split": split})
    return pd.DataFrame(rows, columns=list(COLUMNS))
