"""Corrected masks: what a user drops into the ``corrections.folder`` after a review round.

A correction is named after its image (``<image name>.png`` or ``.geojson``/``.json``) and drawn
at the image's full resolution: a PNG mask in the dataset's mask format, read by the rules of its
real masks (:meth:`histo_wsss.classes.LabelSpace.read_truth`: a binary dataset's 0 and one
positive value; a ``tags`` dataset's class indices ``0..K-1`` and its ignore index, which
leaves those pixels out of training), or a GeoJSON file exported from QuPath
(:mod:`histo_wsss.qupath`; each annotation's classification names one of the dataset's classes,
as the export writes them; what no annotation covers is background). It replaces the image's
pseudo-mask as the segmentation target: a label map at the working scale, written as the
pseudo-masks are (:meth:`~histo_wsss.classes.LabelSpace.write_labels`).

The folder is listed when the DAG is built (:func:`list_corrections`; hidden files, e.g. a
copy in progress, are skipped) and its names, sizes and times feed a digest, as the dataset
manifest's do: adding or changing a file reruns the job that turns the corrections into targets
(:func:`make_targets`), and so the segmentation and what follows, without each file being an
input of the DAG. Every file is read in full and checked before it is used, so a half-written
or malformed one stops the run naming the file instead of entering training.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Mapping
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from histo_wsss.classes import IGNORE, LabelSpace, majority_resize
from histo_wsss.io import scale_mask, write_csv
from histo_wsss.qupath import GeoJSONError, class_labels, rasterize, read_geojson

SUFFIXES = (".png", ".geojson", ".json")
#: Columns of :func:`list_corrections`; ``file``, ``file_bytes``, ``file_mtime_ns`` identify a
#: version of a file that has been checked.
COLUMNS = ["name", "file", "file_bytes", "file_mtime_ns"]
TABLE = "corrections.csv"


class CorrectionError(ValueError):
    """A correction that cannot be used; the message names the file."""


def list_corrections(folder: str | os.PathLike | None, names: Collection[str]) -> pd.DataFrame:
    """The correction files of ``folder`` (:data:`COLUMNS`, sorted by name); none when
    ``folder`` is None or empty.

    Raises :class:`CorrectionError` naming the file for a file of another kind than
    :data:`SUFFIXES`, one named after no image of ``names``, or a second file for one image.
    """
    rows = []
    if folder:
        if not Path(folder).is_dir():
            raise CorrectionError(f"corrections.folder: {folder} is not a folder")
        for path in sorted(Path(folder).iterdir()):
            if path.name.startswith(".") or path.is_dir():
                continue  # hidden: a copy or an editor's save in progress
            if path.suffix.lower() not in SUFFIXES:
                raise CorrectionError(
                    f"{path}: a correction is a PNG mask or a QuPath GeoJSON file "
                    f"({', '.join(SUFFIXES)}) named after its image"
                )
            if path.stem not in names:
                raise CorrectionError(
                    f"{path}: no image of the dataset is named {path.stem!r} (a correction "
                    "takes its image's name: <name>.png or <name>.geojson)"
                )
            stat = path.stat()
            rows.append((path.stem, str(path), stat.st_size, stat.st_mtime_ns))
    table = pd.DataFrame(rows, columns=COLUMNS)
    twice = table["name"][table["name"].duplicated()]
    if len(twice):
        files = table.loc[table["name"] == twice.iloc[0], "file"]
        raise CorrectionError(
            f"{' and '.join(files)}: two corrections of one image; keep one of them"
        )
    return table


def checked_keys(folder: str | os.PathLike) -> frozenset[tuple[str, ...]]:
    """``(file, file_bytes, file_mtime_ns)`` of the corrections that :func:`make_targets` wrote
    into ``folder`` (none when it has not run): files it checked and that keep their size and
    time need no check at the next DAG build."""
    table = Path(folder) / TABLE
    if not table.is_file():
        return frozenset()
    try:
        done = pd.read_csv(table, dtype=str, keep_default_na=False)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError):
        return frozenset()
    if not set(COLUMNS) <= set(done.columns):
        return frozenset()
    return frozenset(zip(done["file"], done["file_bytes"], done["file_mtime_ns"], strict=True))


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """``(height, width)`` of an image, from its header."""
    with Image.open(path) as img:
        return img.height, img.width


def read_correction(
    path: str | os.PathLike, size: tuple[int, int], space: LabelSpace
) -> tuple[np.ndarray, list[str]]:
    """The full-resolution label map (uint8: 0 background, ``c`` class ``c - 1``, 255
    unlabelled) of a correction of an image of ``size`` (height, width) in a dataset of the
    label ``space``, and notes on repaired geometries. Raises :class:`CorrectionError` naming
    the file when it cannot be read in full, is of another size, holds other values than the
    dataset's masks do, or names a class that is not one of the dataset's."""
    path = str(path)
    if Path(path).suffix.lower() == ".png":
        problem, _ = space.check_mask(path, (size[1], size[0]))
        if problem:
            raise CorrectionError(f"{path}: {problem}")
        return space.read_truth(path), []
    try:
        areas, notes = read_geojson(path, class_labels(space), size)
    except GeoJSONError as err:
        raise CorrectionError(str(err)) from None
    return rasterize(areas, size), notes


def scale_labels(labels: np.ndarray, scale: float, space: LabelSpace) -> np.ndarray:
    """A full-resolution label map resized by ``scale`` as the dataset's real masks are
    (:meth:`histo_wsss.classes.LabelSpace.read_truth`): a binary mask as
    :func:`histo_wsss.io.read_mask` resizes it, a class-index one by majority."""
    if space.ignore_index is None:
        return scale_mask(labels == 1, scale).astype(np.uint8)
    return majority_resize(labels, scale)


def make_targets(
    corrections: pd.DataFrame,
    images: Mapping[str, str],
    split: pd.DataFrame,
    space: LabelSpace,
    scale: float,
    weight: int,
    out_dir: str | os.PathLike,
    log,
) -> pd.DataFrame:
    """Check every correction and write it as a segmentation target: ``masks/<name>.png`` at
    the working ``scale`` (a label map of ``space``, as the pseudo-masks: 0/255 for a binary
    dataset) and :data:`TABLE` (:data:`COLUMNS`, ``split``, ``weight``, ``area_fraction``: the
    share of the target's pixels that hold a class) in ``out_dir``.

    ``images``: the original image of each corrected name; ``split``: the split table (a test
    image's correction is an error: the test images stay out of training).
    """
    out_dir = Path(out_dir)
    splits = dict(zip(split["name"], split["split"], strict=True))
    rows = []
    for row in corrections.itertuples(index=False):
        if splits[row.name] == "test":
            raise CorrectionError(
                f"{row.file}: {row.name} is a test image; its mask must stay out of training "
                "(correct train or val images only)"
            )
        labels, notes = read_correction(row.file, image_size(images[row.name]), space)
        for note in notes:
            log.warning("%s", note)
        target = scale_labels(labels, scale, space)
        space.write_labels(out_dir / "masks" / f"{row.name}.png", target)
        rows.append(
            {
                **row._asdict(),
                "split": splits[row.name],
                "weight": weight,
                "area_fraction": round(float(np.mean((target > 0) & (target != IGNORE))), 6),
            }
        )
    table = pd.DataFrame(rows, columns=[*COLUMNS, "split", "weight", "area_fraction"])
    write_csv(out_dir / TABLE, table)
    return table
