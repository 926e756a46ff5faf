"""K foreground classes: one representation for the binary (MHIST) and the multi-label format.

A dataset segments K foreground classes. Every stage sees an image's **tags** (the set of
foreground classes it holds) and a pixel's **label**:

* ``0``: background, no foreground class (the binary format's negative class; a pseudo-mask's
  or a prediction's background);
* ``c`` in ``1 .. K``: foreground class ``c - 1`` (``LabelSpace.classes[c - 1]``);
* :data:`IGNORE` (255): unlabelled, left out of training and of every score.

The binary format is the case K = 1: ``dataset.classes: [negative, positive]`` and
``positive_class`` give the one foreground class; an image labelled ``positive`` has the tag
set ``{positive}``, a negative image the empty set; its masks' 0 is label 0 and its one positive
value label 1. The multi-label (``tags``) format names the K classes in ``dataset.classes``;
its masks hold ``i`` for ``classes[i]`` and ``dataset.ignore_index`` where no class is marked,
which becomes :data:`IGNORE` (WSSS4LUAD's non-tissue background, value 3, is scored nowhere).

Label maps that the workflow writes (real masks at the working scale, patch masks) are PNGs of
the labels themselves, except for K = 1, whose label 1 is written as 255 and an unlabelled pixel
as :data:`BINARY_UNLABELLED` (128, grey): binary masks stay the 0/255 PNGs they always were.

A class has one colour everywhere (QuPath's annotations, the figures, the demo's contact sheet):
:func:`class_colors`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from matplotlib import colormaps
from PIL import Image

from histo_wsss.io import open_image, read_mask, scaled_size, write_png

IGNORE = 255
BINARY_UNLABELLED = 128
"""How a K = 1 label map stores an unlabelled pixel (its label 1 is 255 on disk)."""
FORMATS = ("mhist", "tags")
TAG_SEPARATOR = ";"
#: RGB 0-255 colour of a class.
RGB = tuple[int, int, int]


def class_colors(
    classes: Sequence[str], colors: Mapping[str, Sequence[int]] | None = None
) -> dict[str, RGB]:
    """``{class: (r, g, b)}``, the one source of class colours: the configured ``colors``
    (``qupath.colors``), else matplotlib's tab10 by the class's index in ``classes`` (the
    config's ``dataset.classes``: the binary format's positive class is its second, tab10's
    orange), so a class has the same colour in every file, figure and run."""
    palette = colormaps["tab10"].colors
    colors = colors or {}
    return {
        c: tuple(int(v) for v in colors.get(c, np.round(np.asarray(palette[i % 10]) * 255)))
        for i, c in enumerate(classes)
    }


@dataclass(frozen=True)
class LabelSpace:
    """The K foreground ``classes`` and how the dataset's mask files encode them:
    ``ignore_index`` is the value of unlabelled pixels in a ``tags``-format mask (``None``: the
    binary format, whose masks hold 0 and one positive value)."""

    classes: tuple[str, ...]
    ignore_index: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "classes", tuple(self.classes))  # e.g. a list from a config

    @property
    def k(self) -> int:
        return len(self.classes)

    def join(self, tags: Sequence[str] | set[str]) -> str:
        """A tag set as the labels CSV writes it: ``;``-joined in class order (``""``: none)."""
        return TAG_SEPARATOR.join(c for c in self.classes if c in tags)

    def tag_vector(self, tags: str) -> np.ndarray:
        """float32 ``(K,)`` 0/1 vector of a ``;``-joined tag set (a classifier's target)."""
        present = set(tags.split(TAG_SEPARATOR)) if tags else set()
        return np.array([c in present for c in self.classes], np.float32)

    def mask_values(self) -> frozenset[int] | None:
        """The values a ``tags``-format mask file may hold (None: binary, 0 + one value)."""
        if self.ignore_index is None:
            return None
        return frozenset(range(self.k)) | {self.ignore_index}

    def check_mask(
        self, path: str | os.PathLike, size: tuple[int, int] | None = None
    ) -> tuple[str | None, tuple[str, ...]]:
        """The mask contract: why the mask file ``path`` breaks it (None if it keeps it), and the
        classes the mask holds (as ``tags_of(read_truth(path))``; none when it breaks it), both
        from the one decode the check needs (every byte: a truncated mask fails here).

        The mask must be of ``size`` (the image's width and height as PIL gives them; None: not
        compared). Its values, read as :meth:`read_truth` reads them, must be: for binary masks
        (greyscale) 0 and one positive value, the mask's largest (a mask with stray values, e.g.
        JPEG noise around 0, would make every such pixel positive); for class-index masks (one
        channel: mode L or P) the class indices and the ignore index.
        """
        allowed = self.mask_values()
        if not os.path.isfile(path):
            return f"mask file not found: {path}", ()
        try:
            with open_image(path) as m:
                if size is not None and m.size != size:
                    (mw, mh), (iw, ih) = m.size, size
                    return f"mask {path} is {mw}x{mh} px but the image is {iw}x{ih} px", ()
                if allowed is not None and m.mode not in ("L", "P"):
                    return (
                        f"mask {path} has mode {m.mode}: a class-index mask has one channel of "
                        "class indices (mode L or P)"
                    ), ()
                # greyscale as read_mask reads it, without a copy when it is greyscale already
                # (a quarter of the check's time); the indices themselves for a class-index mask
                counts = (m if m.mode == "L" or allowed else m.convert("L")).histogram()
        except (OSError, SyntaxError) as err:
            return f"unreadable mask {path}: {err}", ()
        values = [v for v, n in enumerate(counts) if n]
        if allowed is not None:
            unexpected = [v for v in values if v not in allowed]
            if unexpected:
                return (
                    f"mask {path} has values {_listed(unexpected)} outside the class indices "
                    f"0..{self.k - 1} ({', '.join(self.classes)}) and the ignore index "
                    f"{self.ignore_index}"
                ), ()
            return None, tuple(c for i, c in enumerate(self.classes) if counts[i])
        unexpected = [v for v in values if v not in (0, values[-1])]
        if unexpected:
            return (
                f"mask {path} has values {_listed(unexpected)} besides {sorted({0, values[-1]})}: "
                "a mask holds 0 and one positive value (save it losslessly, e.g. as PNG, not JPEG)"
            ), ()
        return None, self.classes if values[-1] else ()

    def read_truth(self, path: str | os.PathLike, scale: float = 1.0) -> np.ndarray:
        """A dataset mask file as uint8 labels, resized by ``scale``: a binary mask as
        :func:`histo_wsss.io.read_mask` reads it (label 1 where most of a pixel's area is
        positive), a class-index mask by the label that covers most of each pixel's area."""
        if self.ignore_index is None:
            return read_mask(path, scale).astype(np.uint8)
        try:
            with Image.open(path) as img:
                values = np.asarray(img)
        except (OSError, SyntaxError) as err:
            raise ValueError(f"{path}: cannot read mask ({err})") from err
        lut = np.full(256, IGNORE, np.uint8)
        lut[: self.k] = np.arange(1, self.k + 1)
        return majority_resize(lut[values], scale)

    def write_labels(self, path: str | os.PathLike, labels: np.ndarray) -> None:
        """Write a label map as the workflow stores them (K = 1: label 1 as 255, unlabelled as
        :data:`BINARY_UNLABELLED`)."""
        labels = np.asarray(labels, np.uint8)
        if self.k == 1:
            labels = np.select([labels == 1, labels == IGNORE], [255, BINARY_UNLABELLED], 0)
        write_png(path, labels.astype(np.uint8))

    def read_labels(self, path: str | os.PathLike) -> np.ndarray:
        """A label map written by :meth:`write_labels`, as uint8 labels (K = 1: any other
        non-zero value than :data:`BINARY_UNLABELLED` is label 1, as in a user's binary mask)."""
        try:
            with Image.open(path) as img:
                values = np.asarray(img.convert("L") if self.k == 1 else img, np.uint8)
        except (OSError, SyntaxError) as err:
            raise ValueError(f"{path}: cannot read label map ({err})") from err
        if self.k == 1:
            return np.select([values == BINARY_UNLABELLED, values > 0], [IGNORE, 1], 0).astype(
                np.uint8
            )
        return values

    def shares(self, labels: np.ndarray) -> np.ndarray:
        """float64 ``(K,)``: the share of ``labels``' pixels that each class covers (unlabelled
        pixels count in the denominator: a share of the patch, not of its tissue)."""
        counts = np.bincount(labels.ravel(), minlength=256)
        return counts[1 : self.k + 1] / max(labels.size, 1)

    def tags_of(self, labels: np.ndarray, min_share: float = 0.0) -> tuple[str, ...]:
        """The classes that cover at least ``min_share`` of ``labels``, and one pixel at least
        (``min_share`` 0: every class present)."""
        shares = self.shares(labels)
        return tuple(
            c for c, s in zip(self.classes, shares, strict=True) if s > 0 and s >= min_share
        )


def _listed(values: list, limit: int = 10) -> str:
    """``values`` as ``1, 2, 3``, the first ``limit`` of them and how many more."""
    more = f" and {len(values) - limit} more" if len(values) > limit else ""
    return ", ".join(map(str, values[:limit])) + more


def majority_resize(labels: np.ndarray, scale: float) -> np.ndarray:
    """``labels`` resized by ``scale`` (:func:`histo_wsss.io.scaled_size`): each pixel takes the
    label that covers most of its area (area shares by PIL's box filter; ties to the lower
    label)."""
    if scale == 1:
        return labels
    height, width = scaled_size(labels.shape, scale)
    values = np.unique(labels)
    shares = np.stack(
        [
            np.asarray(
                Image.fromarray(((labels == v) * 255).astype(np.uint8)).resize(
                    (width, height), Image.Resampling.BOX
                )
            )
            for v in values
        ]
    )
    return values[shares.argmax(axis=0)].astype(np.uint8)
