"""Patches cut from larger images, each tagged from its source image's tags or from the classes
its real mask holds: how BCSS-WSSS and LUAD-HistoSeg were built from masked slides, and how the
classifier gets many small training examples out of a few large images.

Only the train and val images are cut; a patch belongs to the split of its source image, so no
image is on both sides. The workflow cuts the stain-normalized images at the working scale. Tags
are :mod:`histo_wsss.classes` tag sets (binary: the positive class or none), so one rule tags
binary and K-class patches.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from histo_wsss.classes import LabelSpace
from histo_wsss.io import read_rgb, write_png

TAG_SOURCES = ("image", "mask")
COLUMNS = ("name", "source", "split", "y", "x", "positive_share", "positive", "tags")


@dataclass(frozen=True)
class PatchParams:
    """Keys of the ``patches`` config section: side and stride in pixels; ``tags`` = ``image``
    (a patch inherits its image's tags: image-level supervision only) or ``mask`` (tagged with
    each class that covers at least ``min_share`` of its pixels, and one pixel at least, in the
    real mask)."""

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
    tags: str,
    params: PatchParams,
    space: LabelSpace,
    labels: np.ndarray | None = None,
) -> list[tuple[dict, np.ndarray]]:
    """``(row, patch)`` of every patch of one image, rows as in :data:`COLUMNS` (without
    ``split``): ``tags`` (``;``-joined, class order) are the image's ``tags``, or the classes of
    its real mask's ``labels`` (:mod:`histo_wsss.classes` label map) that cover at least
    ``min_share`` of the patch; ``positive_share`` is the share of the patch that any class
    covers (NaN without a mask), ``positive`` whether the patch has a tag."""
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
            share = float(space.shares(labels[window]).sum()) if labels is not None else np.nan
            if params.tags == "mask":
                tags = space.join(space.tags_of(labels[window], params.min_share))
            row = {"name": f"{name}_y{y}_x{x}", "source": name, "y": y, "x": x}
            row |= {"positive_share": round(share, 6), "positive": int(bool(tags)), "tags": tags}
            out.append((row, rgb[window]))
    return out


def extract(
    names: Sequence[str],
    splits: Sequence[str],
    tags: Sequence[str],
    images: Sequence[str | os.PathLike],
    masks: Sequence[str | os.PathLike],
    params: PatchParams,
    space: LabelSpace,
    out_dir: str | os.PathLike,
) -> pd.DataFrame:
    """Cut every train/val image into ``out_dir/images/<patch>.png``; return the patch table
    (:data:`COLUMNS`). ``tags``: each image's tag set; ``masks`` (one per image: real masks at
    the working scale, as :meth:`~histo_wsss.classes.LabelSpace.write_labels` writes them) are
    needed only for ``tags: mask``."""
    if params.tags == "mask" and len(masks) != len(names):
        raise ValueError("patches.tags is 'mask' but the dataset has no real masks")
    out_dir = Path(out_dir)
    rows = []
    for i, (name, split) in enumerate(zip(names, splits, strict=True)):
        if split not in ("train", "val"):
            continue
        rgb = read_rgb(images[i])
        labels = space.read_labels(masks[i]) if params.tags == "mask" else None
        if labels is not None and labels.shape != rgb.shape[:2]:
            raise ValueError(
                f"{masks[i]}: mask is {labels.shape}, its image {images[i]} {rgb.shape[:2]}"
            )
        for row, patch in cut(name, rgb, tags[i], params, space, labels):
            write_png(out_dir / "images" / f"{row['name']}.png", patch)
            rows.append({**row, "split": split})
    return pd.DataFrame(rows, columns=list(COLUMNS))
