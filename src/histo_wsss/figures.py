"""Reproducible matplotlib figures: the same saved results give the same bytes.

Masks are label maps (:mod:`histo_wsss.classes`: 0 background, ``c`` in 1..K class ``c - 1``,
255 unlabelled) and probability and CAM files are ``(K, H, W)`` arrays (a 2-D file is K = 1).
A :class:`Palette` says how label maps are drawn: for K = 1 the paper's figures (white masks on
black, red overlays, no class legend), for K > 1 each class in its colour
(:func:`histo_wsss.classes.class_colors`) with a legend. A row's score is the image's IoU of its
class for K = 1 and its mIoU (:func:`histo_wsss.metrics.mean_iou`) for K > 1, and says which.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import matplotlib.style
import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.table import Table
from matplotlib.text import Text

from histo_wsss.classes import IGNORE, RGB, LabelSpace
from histo_wsss.evaluation import REFERENCES, predicted_labels, val_iou_columns
from histo_wsss.io import atomic_path, read_rgb
from histo_wsss.metrics import mean_iou, pooled_confusion

METADATA = {
    "png": {"Software": None},
    "pdf": {"Creator": None, "Producer": None, "CreationDate": None},
    "svg": {"Creator": None, "Date": None},
}


@contextmanager
def figure(
    path: str | os.PathLike, figsize: tuple[float, float], dpi: int = 100
) -> Iterator[Figure]:
    """Yield a new Agg figure in matplotlib's default style; save it to ``path`` atomically.

    The format follows the suffix (png, pdf, svg); timestamps and software metadata are left
    out and the SVG hash salt is fixed, so the same content gives the same bytes.
    """
    fmt = Path(path).suffix.lower().lstrip(".")
    if fmt not in METADATA:
        raise ValueError(f"{path}: unsupported figure format {fmt!r}; use png, pdf or svg")
    with matplotlib.style.context("default"), matplotlib.rc_context({"svg.hashsalt": "histo"}):
        fig = Figure(figsize=figsize, layout="constrained")
        FigureCanvasAgg(fig)
        yield fig
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=fmt, dpi=dpi, metadata=METADATA[fmt])


def pick_examples(scores: Mapping[str, float], n: int) -> list[str]:
    """``n`` names spread evenly over the range of ``scores`` (worst to best), ties by name."""
    ranked = sorted(scores, key=lambda k: (scores[k], k))
    if len(ranked) <= n:
        return ranked
    return [ranked[round(i)] for i in np.linspace(0, len(ranked) - 1, n)]


# --- class colours ---------------------------------------------------------------------------

#: Label-map panels: background (label 0) and unlabelled pixels (not scored).
BACKGROUND_COLOR = (0, 0, 0)
UNLABELLED_COLOR = (128, 128, 128)
OVERLAY_COLOR = (255, 0, 0)
OVERLAY_ALPHA = 0.45


@dataclass(frozen=True)
class Palette:
    """How the label maps of ``space`` are read and drawn: the ``panel`` colour of labels 0..K
    in a label-map panel (unlabelled pixels :data:`UNLABELLED_COLOR`) and each class's
    ``overlay`` colour blended over the image. Made by :func:`palette_of`."""

    space: LabelSpace
    panel: tuple[RGB, ...]
    overlay: tuple[RGB, ...]

    @property
    def classes(self) -> tuple[str, ...]:
        return self.space.classes

    @property
    def k(self) -> int:
        return self.space.k

    @property
    def score(self) -> str:
        """What a row's score is: the IoU of the one class, or the image's mIoU."""
        return "IoU" if self.k == 1 else "mIoU"

    def draw(self, ax, labels: np.ndarray) -> None:
        """``labels`` as a label-map panel: each label its ``panel`` colour (nearest pixel)."""
        labels = _labels(labels)
        index = np.where(labels == IGNORE, self.k + 1, labels)
        colours = np.asarray([*self.panel, UNLABELLED_COLOR], dtype=np.float64) / 255
        ax.imshow(
            index,
            cmap=ListedColormap(colours),
            vmin=-0.5,
            vmax=self.k + 1.5,
            interpolation="nearest",
        )

    def overlay_rgb(self, image: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """``image`` with each class's ``overlay`` colour blended in where ``labels`` hold it."""
        labels = _labels(labels)
        for c, colour in enumerate(self.overlay, start=1):
            image = overlay(image, labels == c, colour)
        return image

    def outline(self, ax, labels: np.ndarray, color: str) -> None:
        """The outline of each class's region of ``labels`` in ``color``."""
        labels = _labels(labels)
        for c in range(1, self.k + 1):
            _outline(ax, labels == c, color)

    def handles(self, unlabelled: bool = False) -> list[Patch]:
        """Legend entries of the class colours (K > 1; none for K = 1, whose masks are white)
        and, with ``unlabelled``, of the grey unlabelled pixels."""
        if self.k == 1:
            return []
        entries = list(zip(("background", *self.classes), self.panel, strict=True))
        if unlabelled:
            entries.append(("unlabelled (not scored)", UNLABELLED_COLOR))
        return [
            Patch(facecolor=np.asarray(c) / 255, edgecolor="black", label=name)
            for name, c in entries
        ]


def palette_of(space: LabelSpace, colors: Mapping[str, Sequence[int]] | None = None) -> Palette:
    """The :class:`Palette` of ``space``'s K classes: K = 1 the paper's figures (white masks on
    black, :data:`OVERLAY_COLOR` overlays); K > 1 each class its ``colors`` entry (``{class:
    (r, g, b)}``, :func:`histo_wsss.classes.class_colors`) in panels and overlays, background
    black."""
    if space.k == 1:
        return Palette(space, (BACKGROUND_COLOR, (255, 255, 255)), (OVERLAY_COLOR,))
    missing = [c for c in space.classes if c not in (colors or {})]
    if missing:
        raise ValueError(f"no colour for class(es) {missing}")
    rgb = tuple(tuple(int(v) for v in colors[c]) for c in space.classes)
    return Palette(space, (BACKGROUND_COLOR, *rgb), rgb)


#: The binary figures' palette (K = 1; masks read as 0/255 PNGs).
BINARY = palette_of(LabelSpace(("positive",)))


def image_scores(rows: pd.DataFrame, n_labels: int) -> dict[str, float]:
    """Each image's mIoU (:func:`histo_wsss.metrics.mean_iou`) from its confusion matrix stored
    as rows ``name, truth_label, pred_label, pixels`` (:func:`histo_wsss.metrics.confusion_rows`)
    over ``n_labels`` labels."""
    return {
        str(name): mean_iou(pooled_confusion(group, n_labels))
        for name, group in rows.groupby("name", sort=True)
    }


# --- pseudo-masks and stain normalization ----------------------------------------------------


def pseudo_mask_steps(
    names: Sequence[str],
    images: Mapping[str, str],
    cams: Mapping[str, str],
    steps: Mapping[str, Mapping[str, str]],
    final_step: str,
    truth: Mapping[str, str],
    path: str | os.PathLike,
    ious: Mapping[str, float] | None = None,
    palette: Palette = BINARY,
) -> list[str]:
    """One row per image: image, a CAM per class (:data:`SCORE_CMAP` over the image, one colour
    bar; "no CAM" for a class not in the image's tags, whose channel is all zeros), the mask
    after each refinement step (``final_step``'s, the pseudo-mask, titled so), ground truth
    with the final mask's outlines; masks read and drawn by ``palette``. A row is labelled with
    the image's name and, from ``ious``, its final mask's score vs truth (K > 1: mIoU). Returns
    the figure's texts (:func:`drawn_text`)."""
    cam_titles = ["CAM"] if palette.k == 1 else [f"CAM {c}" for c in palette.classes]
    titles = [f"{s} (pseudo-mask)" if s == final_step else s for s in steps]
    columns = ["image", *cam_titles, *titles] + (["ground truth"] if truth else [])
    unlabelled = False
    with figure(path, (1.9 * len(columns) + 0.6, 1.9 * len(names) + 0.4)) as fig:
        axes = fig.subplots(len(names), len(columns), squeeze=False)
        cam = None
        for row, name in zip(axes, names, strict=True):
            rgb = read_rgb(images[name])
            row[0].imshow(rgb)
            maps = _probs(np.load(cams[name]).astype(np.float32), "CAM")
            for ax, channel in zip(row[1:], maps, strict=False):
                ax.imshow(rgb)
                if channel.any():
                    cam = ax.imshow(channel, cmap=SCORE_CMAP, alpha=0.5, vmin=0, vmax=1)
                else:
                    ax.text(0.5, 0.5, "no CAM", ha="center", va="center", transform=ax.transAxes)
            masks = [palette.space.read_labels(files[name]) for files in steps.values()]
            for ax, mask in zip(row[1 + len(maps) :], masks, strict=False):
                palette.draw(ax, mask)
            if truth:
                reference = palette.space.read_labels(truth[name])
                unlabelled |= bool((reference == IGNORE).any())
                palette.draw(row[-1], reference)
                palette.outline(row[-1], masks[list(steps).index(final_step)], FINAL_OUTLINE)
            for ax in row:
                _off(ax)
            label = name if ious is None else f"{name}\n{palette.score} vs truth {ious[name]:.3f}"
            row[0].set_ylabel(label, fontsize=8)
        for ax, title in zip(axes[0], columns, strict=True):
            ax.set_title(title, fontsize=9)
        if cam is not None:
            fig.colorbar(cam, ax=axes, shrink=0.6, label="CAM (over image)")
        outlines = {FINAL_OUTLINE: f"{final_step} (pseudo-mask) outline"} if truth else {}
        _legend(fig, palette.handles(unlabelled) + _lines(outlines))
        return drawn_text(fig)


def stain_sheet(rows: Sequence[Mapping], path: str | os.PathLike) -> list[str]:
    """Stain normalization before and after: one row per image, its original, its normalized
    version and its tissue mask. ``rows``: dicts with ``name``, ``original`` and ``normalized``
    (HxWx3 uint8, the same size: the original at the working resolution), ``tissue`` (mask),
    ``tissue_fraction`` and ``normalized_ok`` (False: it kept its colours, for ``reason``).
    Returns the figure's texts."""
    if not rows:
        raise ValueError("no images to draw")
    columns = ["original", "stain-normalized", "tissue mask"]
    with figure(path, (2.2 * len(columns) + 0.4, 2.2 * len(rows) + 0.4)) as fig:
        axes = fig.subplots(len(rows), len(columns), squeeze=False)
        for row, r in zip(axes, rows, strict=True):
            _same_shape(r["original"], r["normalized"], r["tissue"])
            row[0].imshow(r["original"])
            row[1].imshow(r["normalized"])
            row[2].imshow(_mask(r["tissue"]), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            state = "normalized" if r["normalized_ok"] else f"kept its colours:\n{r['reason']}"
            row[0].set_ylabel(
                f"{r['name']}\ntissue {r['tissue_fraction']:.0%}\n{state}", fontsize=8
            )
            for ax in row:
                _off(ax)
        for ax, title in zip(axes[0], columns, strict=True):
            ax.set_title(title, fontsize=9)
        return drawn_text(fig)


# --- segmentation results (paper Figures 2-4) ------------------------------------------------

#: Error-map colours (paper Figure 3): white TP, red FP, blue FN, black TN.
ERROR_COLORS = {
    "TP": (255, 255, 255),
    "FP": (255, 0, 0),
    "FN": (0, 0, 255),
    "TN": (0, 0, 0),
}
#: Error-map legend: ``{reference}`` is what the prediction is measured against (truth, pseudo).
ERROR_LABELS = {
    "TP": "TP: predicted, in {reference}",
    "FP": "FP: predicted, not in {reference}",
    "FN": "FN: in {reference}, missed",
    "TN": "TN: in neither",
}
#: K > 1: a class predicted on another class, and unlabelled reference pixels (not scored).
WRONG_CLASS_COLOR = (255, 200, 0)
MULTICLASS_ERROR_COLORS = {
    **ERROR_COLORS,
    "wrong": WRONG_CLASS_COLOR,
    "unlabelled": UNLABELLED_COLOR,
}
MULTICLASS_ERROR_LABELS = {
    "TP": "correct class",
    "wrong": "wrong class",
    "FN": "missed: background predicted on a class",
    "FP": "false: a class predicted on background",
    "TN": "background in both",
    "unlabelled": "unlabelled in {reference}: not scored",
}
#: Perceptually uniform colour maps (lightness grows with the value): probabilities and CAMs,
#: uncertainty.
SCORE_CMAP = "magma"
UNCERTAINTY_CMAP = "viridis"
#: Outline colours: the real mask over overlays and maps, the final mask over the ground truth.
TRUTH_OUTLINE = "#00e5ff"
FINAL_OUTLINE = "#ff2d95"


def _mask(array: np.ndarray) -> np.ndarray:
    """Boolean mask from a boolean or 0/255 (any non-zero = foreground) 2-D array."""
    array = np.asarray(array)
    if array.ndim != 2:
        raise ValueError(f"expected a 2-D mask, got shape {array.shape}")
    return array if array.dtype == bool else array > 0


def _labels(array: np.ndarray) -> np.ndarray:
    """uint8 label map from a 2-D label map or boolean mask (``True`` = label 1)."""
    array = np.asarray(array)
    if array.ndim != 2:
        raise ValueError(f"expected a 2-D label map, got shape {array.shape}")
    return array.astype(np.uint8)


def _probs(array: np.ndarray, what: str = "probability map") -> np.ndarray:
    """float64 ``(K, H, W)`` maps in [0, 1] from a ``(K, H, W)`` or 2-D (K = 1) array."""
    prob = np.asarray(array, dtype=np.float64)
    if prob.ndim not in (2, 3):
        raise ValueError(f"expected a (K, H, W) or 2-D {what}, got shape {prob.shape}")
    if not (np.isfinite(prob).all() and (prob >= 0).all() and (prob <= 1).all()):
        raise ValueError(f"{what} values must be finite and in [0, 1]")
    return prob.reshape(-1, *prob.shape[-2:])


def max_prob(probs: np.ndarray) -> np.ndarray:
    """The highest class probability per pixel of ``(K, H, W)`` maps (2-D: K = 1, the map):
    the probability that the pixel holds a class, which :func:`predicted_labels` thresholds."""
    return _probs(probs).max(axis=0)


def _same_shape(*arrays: np.ndarray) -> None:
    shapes = {np.shape(a)[:2] for a in arrays if a is not None}
    if len(shapes) > 1:
        raise ValueError(f"image, mask and probability shapes differ: {sorted(shapes)}")


def overlay(
    image: np.ndarray,
    mask: np.ndarray,
    color: tuple[int, int, int] = OVERLAY_COLOR,
    alpha: float = OVERLAY_ALPHA,
) -> np.ndarray:
    """``image`` (HxWx3 uint8) with ``color`` blended in at ``alpha`` where ``mask`` is set."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an HxWx3 uint8 image, got {image.dtype} {image.shape}")
    mask = _mask(mask)
    _same_shape(image, mask)
    out = image.astype(np.float64)
    out[mask] = (1 - alpha) * out[mask] + alpha * np.asarray(color, dtype=np.float64)
    return np.round(out).astype(np.uint8)


def label_error_rgb(pred: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """HxWx3 uint8 error map of label maps (:data:`MULTICLASS_ERROR_COLORS`): white the right
    class, yellow a wrong class, blue a class missed (background predicted), red a class
    predicted on background, black background in both, grey unlabelled reference pixels."""
    pred, reference = _labels(pred), _labels(reference)
    if pred.shape != reference.shape:
        raise ValueError(f"shape mismatch: pred {pred.shape} vs reference {reference.shape}")
    scored = reference != IGNORE
    cls, on = reference > 0, pred > 0
    kinds = {
        "TP": scored & cls & (pred == reference),
        "wrong": scored & cls & on & (pred != reference),
        "FN": scored & cls & ~on,
        "FP": ~cls & on,
        "TN": ~cls & ~on,
        "unlabelled": ~scored,
    }
    out = np.zeros((*pred.shape, 3), dtype=np.uint8)
    for kind, where in kinds.items():
        out[where] = MULTICLASS_ERROR_COLORS[kind]
    return out


def error_map_rgb(pred: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """HxWx3 uint8 error map of binary masks (boolean or 0/255): white TP, red FP, blue FN,
    black TN (:data:`ERROR_COLORS`): :func:`label_error_rgb` of the one class."""
    return label_error_rgb(_mask(pred), _mask(reference))


def uncertainty(prob: np.ndarray) -> np.ndarray:
    """Pixel uncertainty ``U = 1 - 2 |p - 0.5|`` (paper §3): 1 at p = 0.5, 0 at p = 0 or 1; of
    the highest class probability (:func:`max_prob`) where there are K > 1 maps."""
    return 1.0 - 2.0 * np.abs(max_prob(prob) - 0.5)


def _off(ax) -> None:
    ax.set_xticks([])
    ax.set_yticks([])


def drawn_text(fig: Figure) -> list[str]:
    """Every non-empty text of ``fig`` (titles, labels, legend entries, colour-bar labels), in
    drawing order: what a reader sees in words, for tests to hold captions to."""
    return [t.get_text() for t in fig.findobj(Text) if t.get_text()]


def _outline(ax, mask: np.ndarray, color: str) -> None:
    """The outline of ``mask`` (nothing when it is empty or full) drawn on ``ax``."""
    mask = _mask(mask)
    if mask.any() and not mask.all():
        ax.contour(mask.astype(np.float32), levels=[0.5], colors=color, linewidths=0.9)


def _lines(outlines: Mapping[str, str]) -> list[Line2D]:
    """Legend entries of outlines: ``{colour: label}``."""
    return [Line2D([], [], color=c, linewidth=1.5, label=label) for c, label in outlines.items()]


def _legend(fig: Figure, handles: Sequence) -> None:
    """One legend below the figure (none without ``handles``), up to 4 entries a line."""
    if handles:
        fig.legend(
            handles=handles,
            loc="outside lower center",
            ncols=min(len(handles), 4),
            fontsize=8,
            frameon=False,
        )


def _error_legend(fig: Figure, reference: str, k: int, unlabelled: bool) -> None:
    """The error map's legend: TP, FP, FN, TN for K = 1; for K > 1 the right and the wrong
    class, missed, false, background, and unlabelled reference pixels where there are any."""
    if k == 1:
        colours, labels = ERROR_COLORS, ERROR_LABELS
    else:
        colours, labels = MULTICLASS_ERROR_COLORS, MULTICLASS_ERROR_LABELS
        if not unlabelled:
            labels = {key: v for key, v in labels.items() if key != "unlabelled"}
    ncols = 4 if fig.get_figwidth() >= 7.5 else 2
    handles = [
        Patch(
            facecolor=np.asarray(colours[key]) / 255,
            edgecolor="black",
            label=label.format(reference=reference),
        )
        for key, label in labels.items()
    ]
    fig.legend(handles=handles, loc="outside lower center", ncols=ncols, fontsize=8, frameon=False)


def _row_label(example: Mapping, reference: str, pred: np.ndarray, score: str = "IoU") -> str:
    """A row's label from the example's optional keys: its ``name``, then its ``iou`` (the
    ``score``: IoU, or mIoU for K > 1) vs ``reference`` or, for a ``negative`` image, the share
    of its pixels predicted as a class (``pred``)."""
    label = str(example.get("name", ""))
    if example.get("negative"):
        return f"{label}\nnegative image\n{_mask(pred).mean():.1%} predicted"
    if example.get("iou") is not None:
        return f"{label}\n{score} vs {reference} {example['iou']:.3f}"
    return label


def _check_examples(examples: Sequence[Mapping], keys: Sequence[str]) -> None:
    if not examples:
        raise ValueError("no examples to draw")
    for i, ex in enumerate(examples):
        missing = [k for k in keys if k not in ex]
        if missing:
            raise KeyError(f"example {i} ({ex.get('name', '')!r}) lacks {missing}")


def load_example(
    image_path: str | os.PathLike,
    prob_path: str | os.PathLike,
    pseudo_path: str | os.PathLike,
    truth_path: str | os.PathLike | None = None,
    name: str = "",
    space: LabelSpace = BINARY.space,
) -> dict:
    """Read one evaluated image into the dict the ``*_panels``/``*_maps`` functions take.

    Keys: ``name``, ``image`` (uint8 RGB), ``prob`` (float32, as saved: ``(K, H, W)``),
    ``pseudo`` (label map, read as ``space`` writes them) and, with a non-empty ``truth_path``,
    ``truth`` (label map).
    """
    example = {
        "name": name,
        "image": read_rgb(image_path),
        "prob": np.load(prob_path).astype(np.float32),
        "pseudo": space.read_labels(pseudo_path),
    }
    if truth_path:
        example["truth"] = space.read_labels(truth_path)
    return example


def segmentation_panels(
    examples: Sequence[Mapping],
    path: str | os.PathLike,
    threshold: float = 0.5,
    reference: str = "truth",
    title: str = "",
    palette: Palette = BINARY,
) -> list[str]:
    """Paper Figure 2 for several images: one row per example, one shared colour bar and
    legend. Returns the figure's texts (:func:`drawn_text`).

    ``examples``: dicts with ``image``, ``pseudo`` (label map), ``prob`` (``(K, H, W)``; 2-D for
    K = 1), optionally ``truth`` (label map; its column and outlines are drawn when every
    example has one) and the row label's keys (:func:`_row_label`; ``iou``: IoU, or mIoU for
    K > 1). Columns: image, pseudo-mask, ground truth, prediction (:func:`predicted_labels` at
    ``threshold``), probability (K > 1: the highest class probability), pseudo overlay,
    prediction overlay; label maps and overlays in ``palette``.
    """
    _check_examples(examples, ("image", "pseudo", "prob"))
    with_truth = all("truth" in ex for ex in examples)
    p_name = "p" if palette.k == 1 else "max p"
    columns = ["image", "pseudo-mask", *(["ground truth"] if with_truth else [])]
    columns += [f"prediction ({p_name} ≥ {threshold:g})", "probability", "pseudo overlay"]
    columns += ["prediction overlay"]
    unlabelled = False
    with figure(path, (1.9 * len(columns) + 0.6, 1.9 * len(examples) + 1.0)) as fig:
        axes = fig.subplots(len(examples), len(columns), squeeze=False)
        im = None
        for row, ex in zip(axes, examples, strict=True):
            image, pseudo, p = np.asarray(ex["image"]), _labels(ex["pseudo"]), max_prob(ex["prob"])
            truth = _labels(ex["truth"]) if with_truth else None
            _same_shape(image, pseudo, p, truth)
            pred = predicted_labels(ex["prob"], threshold)
            cells = iter(row)
            next(cells).imshow(image)
            palette.draw(next(cells), pseudo)
            if with_truth:
                unlabelled |= bool((truth == IGNORE).any())
                palette.draw(next(cells), truth)
            palette.draw(next(cells), pred)
            im = next(cells).imshow(p, cmap=SCORE_CMAP, vmin=0, vmax=1)
            for ax, labels in ((next(cells), pseudo), (next(cells), pred)):
                ax.imshow(palette.overlay_rgb(image, labels))
                if with_truth:
                    palette.outline(ax, truth, TRUTH_OUTLINE)
            row[0].set_ylabel(_row_label(ex, reference, pred, palette.score), fontsize=8)
            for ax in row:
                _off(ax)
        for ax, name in zip(axes[0], columns, strict=True):
            ax.set_title(name, fontsize=9)
        label = "probability" if palette.k == 1 else "highest class probability"
        fig.colorbar(im, ax=axes, shrink=0.6, label=label)
        outlines = {TRUTH_OUTLINE: "ground truth outline"} if with_truth else {}
        _legend(fig, palette.handles(unlabelled) + _lines(outlines))
        if title:
            fig.suptitle(title)
        return drawn_text(fig)


def error_maps(
    examples: Sequence[Mapping],
    path: str | os.PathLike,
    reference: str = "truth",
    title: str = "",
    palette: Palette = BINARY,
) -> list[str]:
    """Paper Figure 3 for several images: one row per example, one legend, both naming the
    ``reference`` the prediction is measured against. Returns the figure's texts.

    ``examples``: dicts with ``pred`` and ``reference`` (label maps, or boolean masks for
    K = 1), optionally ``image`` (drawn to the left when every example has one) and the row
    label's keys (:func:`_row_label`). ``title`` defaults to "prediction vs <reference>". The
    maps are :func:`label_error_rgb`'s; ``palette`` gives K and the score's name.
    """
    _check_examples(examples, ("pred", "reference"))
    with_image = all("image" in ex for ex in examples)
    n = 2 if with_image else 1
    unlabelled = False
    with figure(path, (2.4 * n + 0.6, 2.4 * len(examples) + 0.9)) as fig:
        axes = fig.subplots(len(examples), n, squeeze=False)
        for row, ex in zip(axes, examples, strict=True):
            rgb = label_error_rgb(ex["pred"], ex["reference"])
            unlabelled |= bool((_labels(ex["reference"]) == IGNORE).any())
            if with_image:
                _same_shape(ex["image"], rgb)
                row[0].imshow(np.asarray(ex["image"]))
            row[-1].imshow(rgb, interpolation="nearest")
            row[0].set_ylabel(_row_label(ex, reference, ex["pred"], palette.score), fontsize=8)
            for ax in row:
                _off(ax)
        axes[0, -1].set_title(f"error map vs {reference}", fontsize=9)
        if with_image:
            axes[0, 0].set_title("image", fontsize=9)
        _error_legend(fig, reference, palette.k, unlabelled)
        fig.suptitle(title or f"prediction vs {reference}")
        return drawn_text(fig)


def uncertainty_maps(
    examples: Sequence[Mapping],
    path: str | os.PathLike,
    threshold: float = 0.5,
    reference: str = "truth",
    title: str = "",
    palette: Palette = BINARY,
) -> list[str]:
    """Paper Figure 4 for several images: one row per example, one shared colour bar. Returns
    the figure's texts.

    ``examples``: dicts with ``prob``, optionally ``image`` (drawn to the left when every
    example has one), ``truth`` (its classes' outlines on the map when every example has one)
    and the row label's keys (:func:`_row_label`; a negative row's share is of the pixels
    :func:`predicted_labels` gives a class at ``threshold``). K > 1: the uncertainty of the
    highest class probability.
    """
    _check_examples(examples, ("prob",))
    with_image = all("image" in ex for ex in examples)
    with_truth = all("truth" in ex for ex in examples)
    n = 2 if with_image else 1
    with figure(path, (2.4 * n + 1.2, 2.4 * len(examples) + 0.9)) as fig:
        axes = fig.subplots(len(examples), n, squeeze=False)
        im = None
        for row, ex in zip(axes, examples, strict=True):
            u = uncertainty(ex["prob"])
            if with_image:
                _same_shape(ex["image"], u)
                row[0].imshow(np.asarray(ex["image"]))
            im = row[-1].imshow(u, cmap=UNCERTAINTY_CMAP, vmin=0, vmax=1)
            if with_truth:
                palette.outline(row[-1], ex["truth"], TRUTH_OUTLINE)
            pred = predicted_labels(ex["prob"], threshold)
            row[0].set_ylabel(_row_label(ex, reference, pred, palette.score), fontsize=8)
            for ax in row:
                _off(ax)
        p_name = "p" if palette.k == 1 else "max p"
        axes[0, -1].set_title(f"uncertainty 1 − 2|{p_name} − 0.5|", fontsize=9)
        if with_image:
            axes[0, 0].set_title("image", fontsize=9)
        fig.colorbar(im, ax=axes, shrink=0.6, label="uncertainty")
        if with_truth:
            _legend(fig, _lines({TRUTH_OUTLINE: "ground truth outline"}))
        if title:
            fig.suptitle(title)
        return drawn_text(fig)


# --- summary table and learning curves -------------------------------------------------------

#: Columns of :func:`metrics_table_rows` after ``split`` for one class, and their labels.
METRICS_TABLE_COLUMNS = {
    "n_images": "images",
    "n_positive": "positive images",
    "pseudo_iou_positive_mean": "IoU vs pseudo-mask (mean over positives)",
    "truth_iou_positive_mean": "IoU vs ground truth (mean over positives)",
    "pseudo_dice_positive_mean": "Dice vs pseudo-mask (mean over positives)",
    "truth_dice_positive_mean": "Dice vs ground truth (mean over positives)",
    "pseudo_iou_pooled": "IoU vs pseudo-mask (pooled, all images)",
    "truth_iou_pooled": "IoU vs ground truth (pooled, all images)",
    "pseudo_dice_pooled": "Dice vs pseudo-mask (pooled, all images)",
    "truth_dice_pooled": "Dice vs ground truth (pooled, all images)",
    "truth_miou_pooled": "mIoU vs ground truth (class and background, pooled)",
    "truth_iou_all_positive_baseline": "IoU vs ground truth if every pixel were positive "
    "(mean over positives)",
    "head_accuracy": "head accuracy (p ≥ 0.5)",
    "head_auc": "head ROC AUC",
    "negative_images_with_positive_pixels": "share of negative images with any predicted pixel",
}
#: How the labels of the metrics table name the references.
REFERENCE_LABELS = {"pseudo": "pseudo-mask", "truth": "ground truth"}
#: The field's trivial baselines (histo_wsss.evaluation.BASELINES), as the K-class table says.
BASELINE_LABELS = {
    "majority_class": "every pixel the majority class",
    "most_frequent_tag": "every pixel its image's most frequent tag",
}


def _binary_column(col: str) -> tuple[str, ...]:
    """Where a :data:`METRICS_TABLE_COLUMNS` value sits in a summary entry: ``<ref>_<metric>_
    <aggregate>`` in the reference's block, anything else at the top."""
    ref, _, rest = col.partition("_")
    if ref in REFERENCES:
        metric, _, agg = rest.partition("_")
        return (ref, agg, metric)
    return (col,)


def metrics_table_columns(summary: Mapping) -> dict[str, tuple[str, tuple[str, ...]]]:
    """``{column: (label, path in a summary entry)}`` of :func:`metrics_table_rows`.

    One class: :data:`METRICS_TABLE_COLUMNS`. K > 1 classes (named by the summary's confusion
    matrices): per reference the mIoU and fwIoU, each class's IoU and the baselines'
    mIoU (``<ref>_miou_<baseline>``), then the head's accuracy and AUC; the positive-image
    scores of one class are not defined there.
    """
    classes = next(
        (  # in dataset.classes order: the confusion matrix's (the JSON sorts its keys)
            entry[ref]["confusion"]["labels"][1:]
            for entry in summary.values()
            for ref in REFERENCES
            if (entry.get(ref) or {}).get("confusion")
        ),
        [],
    )
    if len(classes) <= 1:
        return {c: (label, _binary_column(c)) for c, label in METRICS_TABLE_COLUMNS.items()}
    columns = {
        "n_images": ("images", ("n_images",)),
        "n_positive": ("images with a class", ("n_positive",)),
    }
    for metric, what in (("miou", "mIoU"), ("fwiou", "fwIoU")):
        for ref, name in REFERENCE_LABELS.items():
            columns[f"{ref}_{metric}"] = (f"{what} vs {name} (pooled)", (ref, metric))
    for cls in classes:
        for ref, name in REFERENCE_LABELS.items():
            columns[f"{ref}_iou_{cls}"] = (f"IoU of {cls} vs {name}", (ref, "classes", cls, "iou"))
    for baseline, what in BASELINE_LABELS.items():
        for ref, name in REFERENCE_LABELS.items():
            path = (ref, "baselines", baseline, "miou")
            columns[f"{ref}_miou_{baseline}"] = (f"mIoU vs {name} if {what}", path)
    for col in ("head_accuracy", "head_auc"):
        columns[col] = (METRICS_TABLE_COLUMNS[col], (col,))
    return columns


def _value(entry: Mapping, path: Sequence[str]) -> object:
    """``entry[path[0]][path[1]]...``; None where a key is missing."""
    for key in path:
        if not isinstance(entry, Mapping):
            return None
        entry = entry.get(key)
    return entry


def metrics_table_rows(summary: Mapping) -> pd.DataFrame:
    """One row per split of a :func:`histo_wsss.evaluation.summarize` dict (splits in its order).

    Columns: ``split`` then :func:`metrics_table_columns` (``pseudo_*`` and ``truth_*`` side by
    side). ``truth_*`` columns are left out when no split has ground truth; missing or ``None``
    values are NaN; scores are rounded to 4 decimals, as the figure shows them.
    """
    with_truth = any("truth" in entry for entry in summary.values())
    wanted = {
        col: path
        for col, (_, path) in metrics_table_columns(summary).items()
        if with_truth or not col.startswith("truth_")
    }
    rows = []
    for split, entry in summary.items():
        row = {"split": split}
        for col, path in wanted.items():
            value = _value(entry, path)
            row[col] = math.nan if value is None else value
        rows.append(row)
    columns = ["split", *wanted]
    table = pd.DataFrame(rows, columns=columns)
    for col in ("n_images", "n_positive"):
        table[col] = table[col].astype("Int64")
    scores = columns[3:]
    table[scores] = table[scores].astype(np.float64).round(4)
    return table


#: Space left of a metric label in its cell (a fraction of the cell's width).
TABLE_LABEL_PAD = 0.02


def _cell(value: object) -> str:
    if value is None or pd.isna(value):
        return "–"
    if isinstance(value, int | np.integer):
        return str(int(value))
    return f"{float(value):.4f}"


def metrics_table(summary: Mapping, path: str | os.PathLike, title: str = "") -> None:
    """Render :func:`metrics_table_rows` as a table figure (:func:`draw_metrics_table`)."""
    with figure(path, (1.0, 1.0)) as fig:
        draw_metrics_table(fig, summary, title)


def draw_metrics_table(fig: Figure, summary: Mapping, title: str = "") -> Table:
    """Draw :func:`metrics_table_rows` on ``fig`` as a table, one row per metric, one column per
    split (4 decimals; "–" where a value is missing or undefined). The figure's width follows its
    longest metric label, which its column fits whole."""
    table = metrics_table_rows(summary)
    labels = {col: label for col, (label, _) in metrics_table_columns(summary).items()}
    metrics = [c for c in table.columns if c != "split"]
    cells = [[labels[c], *(_cell(v) for v in table[c])] for c in metrics]
    n = len(table)
    renderer = fig.canvas.get_renderer()
    font = FontProperties(size=8)
    label = max(renderer.get_text_width_height_descent(c[0], font, ismath=False)[0] for c in cells)
    label_inches = label / fig.dpi / (1 - 2 * TABLE_LABEL_PAD) + 0.15
    fig.set_size_inches(label_inches + 1.0 * n + 0.2, 0.28 * (len(metrics) + 1) + 0.6)
    ax = fig.subplots()
    ax.axis("off")
    tab = ax.table(
        cellText=cells,
        colLabels=["metric", *(str(s) for s in table["split"])],
        colWidths=[label_inches, *([1.0] * n)],
        cellLoc="center",
        bbox=[0, 0, 1, 1],
    )
    tab.auto_set_font_size(False)
    tab.set_fontsize(8)
    for (row, col), cell in tab.get_celld().items():
        if col == 0 and row > 0:
            cell.get_text().set_horizontalalignment("left")
            cell.PAD = TABLE_LABEL_PAD
        if row == 0:
            cell.get_text().set_fontweight("bold")
    fig.suptitle(title or "segmentation and head metrics per split", fontsize=10)
    return tab


CLASSIFIER_CURVE_COLUMNS = ("epoch", "train_loss", "val_loss", "val_accuracy", "val_auc", "lr")
SEGMENTATION_CURVE_COLUMNS = ("epoch", "train_loss", "val_loss", "val_head_accuracy", "lr")


def _read_curve(path: str | os.PathLike, columns: Sequence[str], what: str) -> pd.DataFrame:
    table = pd.read_csv(path)
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise ValueError(f"{path}: not a {what} metrics CSV (missing {missing})")
    return table


def _segmentation_scores(table: pd.DataFrame, path: str | os.PathLike) -> tuple[str, ...]:
    """The validation IoUs of a segmentation metrics CSV, against whichever masks it trained on
    (:func:`histo_wsss.evaluation.val_iou_columns`, of one class or of K > 1, for which k = 2
    stands), then the head's accuracy."""
    names = [val_iou_columns(reference, k) for reference in REFERENCES for k in (1, 2)]
    for columns in names:
        if set(columns) <= set(table.columns):
            return (*columns, "val_head_accuracy")
    wanted = " or ".join(str(list(columns)) for columns in names)
    raise ValueError(f"{path}: not a segmentation metrics CSV (missing {wanted})")


def learning_curves(
    classifier_csv: str | os.PathLike,
    segmentation_csv: str | os.PathLike,
    path: str | os.PathLike,
) -> None:
    """Both models' learning curves in one figure: one row per model.

    Columns: train/val loss, validation scores (classifier: ``val_accuracy``, ``val_auc``;
    segmentation: its IoUs against the masks it trained on, ``val_iou_vs_pseudo_pooled`` and
    ``val_iou_vs_pseudo_positive_mean`` or their ``vs_truth`` twins, ``val_mean_class_*`` for
    K > 1 classes, ``val_head_accuracy``),
    learning rate (log scale when all positive). Columns beyond those named are ignored.
    """
    classifier = _read_curve(classifier_csv, CLASSIFIER_CURVE_COLUMNS, "classifier")
    segmentation = _read_curve(segmentation_csv, SEGMENTATION_CURVE_COLUMNS, "segmentation")
    models = [
        ("classifier", classifier, ("val_accuracy", "val_auc")),
        ("segmentation", segmentation, _segmentation_scores(segmentation, segmentation_csv)),
    ]
    with figure(path, (12, 6.4)) as fig:
        axes = fig.subplots(2, 3)
        for row, (model, table, scores) in zip(axes, models, strict=True):
            epochs = table["epoch"].to_numpy()
            row[0].plot(epochs, table["train_loss"], "o-", markersize=3, label="train")
            row[0].plot(epochs, table["val_loss"], "s-", markersize=3, label="val")
            row[0].set_ylabel(f"{model}\nloss")
            for i, col in enumerate(scores):
                row[1].plot(epochs, table[col], "o-", markersize=3, color=f"C{i + 2}", label=col)
            row[1].set_ylim(-0.02, 1.02)
            row[1].set_ylabel("validation score")
            lr = table["lr"].to_numpy(dtype=np.float64)
            row[2].plot(epochs, lr, "o-", markersize=3, color="C5")
            if len(lr) and (lr > 0).all():
                row[2].set_yscale("log")
            row[2].set_ylabel("learning rate")
            for ax in row:
                ax.grid(True, alpha=0.3)
            for ax in row[:2]:
                ax.legend(fontsize=8)
        for ax in axes[1]:
            ax.set_xlabel("epoch")
        fig.suptitle("learning curves: classifier (top), segmentation network (bottom)")
