"""Reproducible matplotlib figures: the same saved results give the same bytes."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import matplotlib
import matplotlib.style
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from histo_wsss.io import atomic_path, read_mask, read_rgb

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


def pseudo_mask_steps(
    names: Sequence[str],
    images: Mapping[str, str],
    cams: Mapping[str, str],
    steps: Mapping[str, Mapping[str, str]],
    pseudo: Mapping[str, str],
    truth: Mapping[str, str],
    path: str | os.PathLike,
) -> None:
    """One row per image: image, CAM, the mask after each refinement step, ground truth."""
    columns = ["image", "CAM", *steps, "CRF (pseudo-mask)"] + (["ground truth"] if truth else [])
    with figure(path, (1.9 * len(columns), 1.9 * len(names) + 0.4)) as fig:
        axes = fig.subplots(len(names), len(columns), squeeze=False)
        for row, name in zip(axes, names, strict=True):
            rgb = read_rgb(images[name])
            panels = [rgb, np.load(cams[name]).astype(np.float32)]
            panels += [read_mask(files[name]) for files in steps.values()]
            panels.append(read_mask(pseudo[name]))
            if truth:
                panels.append(read_mask(truth[name]))
            for ax, panel, title in zip(row, panels, columns, strict=True):
                if panel.ndim == 3:
                    ax.imshow(panel)
                elif title == "CAM":
                    ax.imshow(rgb)
                    ax.imshow(panel, cmap="jet", alpha=0.5, vmin=0, vmax=1)
                else:
                    ax.imshow(panel, cmap="gray", vmin=0, vmax=1)
                ax.set_xticks([])
                ax.set_yticks([])
            row[0].set_ylabel(name, fontsize=8)
        for ax, title in zip(axes[0], columns, strict=True):
            ax.set_title(title, fontsize=9)
