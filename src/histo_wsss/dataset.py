"""The dataset contract: an image folder, a labels CSV, optional pixel masks.

Two label formats (``dataset.format``), both read into one representation: each image's tag
set, the foreground classes it holds (:mod:`histo_wsss.classes`; the binary format is K = 1).

* ``mhist`` (binary): the labels CSV has ``Image Name`` (file name inside the image folder),
  ``Majority Vote Label`` (one of the two ``classes``), optionally
  ``Number of Annotators who Selected SSA (Out of 7)``. Masks hold 0 and one positive value
  (e.g. 0 and 255) for ``positive_class``.
* ``tags`` (multi-label, K >= 2 classes): ``Image Name`` and ``Tags``, the classes the image
  holds, ``;``-separated names from ``classes`` (at least one). Masks hold one byte per pixel:
  ``i`` for ``classes[i]``, ``ignore_index`` where no class is marked (e.g. WSSS4LUAD's 3,
  non-tissue background).

Both take an optional ``Partition`` (``train``/``test``). Masks share the image's file stem and
size. Images may have any size, and differ in size. With ``image_labels: masks`` an image's
tags come from its mask instead (the classes it holds), and the label column may be absent:
the field's GlaS gland protocol, whose every image holds glands. Every byte of a file is read
when it is checked, so that a truncated or corrupt file
fails here, before any job starts, and not hours later in the job that first reads its pixels.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from histo_wsss.classes import FORMATS, IGNORE, TAG_SEPARATOR, LabelSpace
from histo_wsss.io import open_image

NAME_COLUMN = "Image Name"
LABEL_COLUMN = "Majority Vote Label"
TAGS_COLUMN = "Tags"
ANNOTATORS_COLUMN = "Number of Annotators who Selected SSA (Out of 7)"
PARTITION_COLUMN = "Partition"
PARTITIONS = ("train", "test")
MAX_LISTED = 20
# Images each class needs outside the test partition: the split holds some out for validation,
# and the classifier must see both classes in training and in validation.
MIN_CLASS_IMAGES = 2
IMAGE_LABEL_SOURCES = ("csv", "masks")
# Threads that read the dataset's files when they are checked: PIL decodes, zlib inflates and
# checksums with the GIL released (benchmarks/validation.py, docs/benchmarks.md section 7).
CHECK_THREADS = min(8, os.cpu_count() or 1)


class DatasetError(ValueError):
    """A dataset that breaks the contract; the message lists every offending row."""


@dataclass(frozen=True)
class DatasetSpec:
    """Where a dataset lives and how its labels are read."""

    images: Path
    labels: Path
    classes: tuple[str, ...]
    positive_class: str | None
    masks: Path | None = None
    image_labels: str = "csv"
    format: str = "mhist"
    ignore_index: int = IGNORE

    def __post_init__(self):
        if self.format not in FORMATS:
            raise DatasetError(
                f"dataset.format must be one of {list(FORMATS)}, got {self.format!r}"
            )
        if self.format == "mhist":
            if len(self.classes) != 2:
                raise DatasetError(
                    f"dataset.format 'mhist' takes two classes [negative, positive], got "
                    f"{list(self.classes)}; several foreground classes are the 'tags' format"
                )
            if self.positive_class not in self.classes:
                raise DatasetError(
                    f"positive_class {self.positive_class!r} is not one of classes "
                    f"{list(self.classes)}"
                )
        else:
            if len(self.classes) < 2:
                raise DatasetError(
                    f"dataset.format 'tags' takes two classes or more, got {list(self.classes)}: "
                    "one foreground class is the 'mhist' format (classes [negative, positive] "
                    "and positive_class)"
                )
            if not len(self.classes) <= self.ignore_index <= 255:
                raise DatasetError(
                    f"dataset.ignore_index {self.ignore_index} must lie in {len(self.classes)}.."
                    f"255: mask values 0..{len(self.classes) - 1} are the classes "
                    f"{list(self.classes)}"
                )
        if self.image_labels not in IMAGE_LABEL_SOURCES:
            raise DatasetError(
                f"dataset.image_labels must be one of {list(IMAGE_LABEL_SOURCES)}, "
                f"got {self.image_labels!r}"
            )
        if self.image_labels == "masks" and self.masks is None:
            raise DatasetError("dataset.image_labels is 'masks' but dataset.masks is not set")

    @property
    def negative_class(self) -> str:
        return next(c for c in self.classes if c != self.positive_class)

    @property
    def label_space(self) -> LabelSpace:
        """The foreground classes and how the masks encode them (binary: K = 1)."""
        if self.format == "mhist":
            return LabelSpace((self.positive_class,))
        return LabelSpace(tuple(self.classes), self.ignore_index)

    @property
    def label_column(self) -> str:
        return LABEL_COLUMN if self.format == "mhist" else TAGS_COLUMN

    @classmethod
    def from_config(cls, dataset: dict) -> DatasetSpec:
        """Build from the ``dataset`` section of the workflow config."""
        masks = dataset.get("masks")
        fmt = dataset.get("format", "mhist")
        return cls(
            images=Path(dataset["images"]),
            labels=Path(dataset["labels"]),
            classes=tuple(dataset["classes"]),
            positive_class=dataset.get("positive_class") if fmt == "mhist" else None,
            masks=Path(masks) if masks else None,
            image_labels=dataset.get("image_labels", "csv"),
            format=fmt,
            ignore_index=dataset.get("ignore_index", IGNORE),
        )


def wildcard_problem(path: str) -> str | None:
    """Why Snakemake cannot take ``path`` as an input or output of a job (None if it can): it
    reads ``{`` and ``}`` as the braces of a wildcard."""
    if "{" in path or "}" in path:
        return "holds '{' or '}', which Snakemake cannot carry in a file path"
    return None


def _image_problem(path: Path) -> tuple[str | None, tuple[int, int]]:
    """Why ``path`` is not a readable RGB image (None if it is one), and its size."""
    if not path.is_file():
        return f"image file not found: {path}", (0, 0)
    try:
        with open_image(path) as img:
            mode, size = img.mode, img.size
            # Every byte, so that a truncated or corrupt file fails now: a PNG's chunk checksums
            # show it at a tenth of the cost of decoding it; other formats are decoded.
            img.verify() if img.format == "PNG" else img.load()
    except (OSError, SyntaxError) as err:
        return f"unreadable image {path}: {err}", (0, 0)
    if mode != "RGB":
        return f"image {path} has mode {mode}, expected RGB", size
    if min(size) < 1:
        return f"image {path} is empty", size
    return None, size


def _file_problems(
    image: Path, mask: Path | None, trusted: bool, space: LabelSpace
) -> tuple[list[str], tuple[str, ...]]:
    """What is wrong with an image and its mask (``None``: no mask folder), and the classes the
    mask holds (:meth:`LabelSpace.check_mask`: one decode gives both). ``trusted``: files that an
    earlier manifest lists unchanged: not checked again, only the mask read for its classes."""
    size = None
    if not trusted:
        problem, size = _image_problem(image)
        if problem:
            return [problem], ()
    if mask is None:
        return [], ()
    problem, tags = space.check_mask(mask, size)
    return [problem] if problem else [], tags


MANIFEST_KEY = ("image", "image_bytes", "image_mtime_ns", "mask", "mask_bytes", "mask_mtime_ns")


def _file_entry(path: str) -> tuple[str, int | str, int | str]:
    """``(path, size in bytes, modification time in ns)`` of a file as a :func:`manifest` row
    lists it; ``("", "", "")`` for no file (``path`` empty)."""
    if not path:
        return "", "", ""
    stat = os.stat(path)
    return path, stat.st_size, stat.st_mtime_ns


def _files_key(image: Path, mask: Path | None) -> tuple[str, ...] | None:
    """An image and its mask as a :func:`manifest` row lists them (:data:`MANIFEST_KEY`, as
    strings); ``None`` when a file cannot be stat-ed."""
    try:
        entries = (*_file_entry(str(image)), *_file_entry(str(mask) if mask else ""))
    except OSError:
        return None
    return tuple(map(str, entries))


def manifest_keys(path: str | os.PathLike) -> frozenset[tuple[str, ...]]:
    """The image/mask pairs that an earlier :func:`manifest` CSV lists (none when there is no
    such file), for :func:`load_labels` to trust while they keep their paths, sizes and times:
    a manifest is written only after its dataset passed validation."""
    if not Path(path).is_file():
        return frozenset()
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError):
        return frozenset()  # e.g. an empty file left by `snakemake --touch`
    if not set(MANIFEST_KEY) <= set(table.columns):
        return frozenset()
    return frozenset(zip(*(table[c] for c in MANIFEST_KEY), strict=True))


def _row_tags(spec: DatasetSpec, cell: str) -> tuple[str, list[str]]:
    """An image's tags (``;``-joined, class order) from its label cell, and what is wrong with
    the cell: an ``mhist`` label names one of the two classes (the positive one is the tag), a
    ``tags`` cell one or more foreground classes."""
    space = spec.label_space
    if spec.format == "mhist":
        if cell not in spec.classes:
            return "", [f"unknown label {cell!r} (expected one of {list(spec.classes)})"]
        return space.join({cell}), []
    tags = [t.strip() for t in cell.split(TAG_SEPARATOR) if t.strip()]
    unknown = [t for t in tags if t not in spec.classes]
    if unknown:
        return "", [f"unknown tag(s) {unknown} (expected names from {list(spec.classes)})"]
    if not tags:
        return "", [
            f"no tags (a row lists the classes its image holds, {TAG_SEPARATOR!r}-separated "
            f"names from {list(spec.classes)})"
        ]
    return space.join(tags), []


def _class_counts(spec: DatasetSpec, labels: pd.Series, tags: pd.Series) -> dict[str, int]:
    """Images of each class: with the label (``mhist``: both classes must be learnt) or with
    the tag (``tags``)."""
    if spec.format == "mhist":
        return {c: int((labels == c).sum()) for c in spec.classes}
    tag_sets = tags.str.split(TAG_SEPARATOR)
    return {c: int(tag_sets.map(lambda t, c=c: c in t).sum()) for c in spec.classes}


def _read_files(
    spec: DatasetSpec,
    names: Sequence[str],
    masks: Sequence[Path | None],
    checked: Collection[tuple[str, ...]],
    from_masks: bool,
) -> dict[int, tuple[list[str], tuple[str, ...]]]:
    """:func:`_file_problems` of each row that names a file, by row index, for the files that
    ``checked`` does not hold unchanged, and for every mask when the labels come from the masks
    (``from_masks``), in :data:`CHECK_THREADS` threads."""
    to_read = {}  # row index: (image, mask, trusted)
    for i, (name, mask) in enumerate(zip(names, masks, strict=True)):
        if name:
            image = spec.images / name
            trusted = bool(checked) and _files_key(image, mask) in checked
            if not trusted or from_masks:
                to_read[i] = (image, mask, trusted)
    space = spec.label_space
    with ThreadPoolExecutor(CHECK_THREADS) as pool:
        found = pool.map(lambda files: _file_problems(*files, space), to_read.values())
        return dict(zip(to_read, found, strict=True))


def load_labels(
    spec: DatasetSpec,
    checked: Collection[tuple[str, ...]] = (),
    min_class_images: int = MIN_CLASS_IMAGES,
) -> pd.DataFrame:
    """Read and validate the labels CSV; return one row per image, sorted by name.

    Columns of the result: ``name`` (file stem), ``file``, ``label`` (``mhist``: the class;
    ``tags``: the tag set, which the split stratifies by), ``tags`` (the foreground classes the
    image holds, ``;``-joined in class order; ``""`` for a binary negative), ``positive`` (0/1:
    the image holds a foreground class), ``partition``, ``image`` and ``mask`` (paths; ``mask``
    empty without a mask folder). Every problem is collected first and raised as ONE
    :class:`DatasetError` that lists the first 20 offending rows and their count. Image and mask
    files are read in full to check them unless ``checked`` (:func:`manifest_keys`) holds them
    with their current size and time. A dataset whose rows are valid but that gives a class
    fewer than ``min_class_images`` images outside the test partition is rejected too (0 where
    the classifier learns its classes from patches tagged by the masks, not from the images'
    labels).
    """
    space = spec.label_space
    label_column = spec.label_column
    if not spec.labels.is_file():
        raise DatasetError(f"{spec.labels}: labels file not found")
    try:
        table = pd.read_csv(spec.labels, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        raise DatasetError(
            f"{spec.labels}: the file is empty; expected a CSV with the columns "
            f"{[NAME_COLUMN, label_column]}"
        ) from None
    except (pd.errors.ParserError, UnicodeDecodeError) as err:
        raise DatasetError(f"{spec.labels}: cannot parse CSV ({err})") from err
    required = (NAME_COLUMN, label_column) if spec.image_labels == "csv" else (NAME_COLUMN,)
    missing = [c for c in required if c not in table.columns]
    if missing:
        raise DatasetError(
            f"{spec.labels}: missing column(s) {missing}; found {list(table.columns)}"
        )
    if table.empty:
        raise DatasetError(f"{spec.labels}: no rows")

    names = table[NAME_COLUMN].str.strip()
    duplicated = names.duplicated(keep=False)
    stems = names.map(lambda n: Path(n).stem)
    stem_clash = stems.duplicated(keep=False) & ~duplicated
    partitions = (
        table[PARTITION_COLUMN].str.strip().str.lower()
        if PARTITION_COLUMN in table.columns
        else pd.Series("train", index=table.index)
    )
    cells = (
        table[label_column].str.strip()
        if spec.image_labels == "csv"
        else pd.Series(spec.classes[-1], index=table.index)  # replaced from the masks below
    )
    masks = [spec.masks / f"{stem}.png" if spec.masks is not None else None for stem in stems]
    from_masks = spec.image_labels == "masks"
    files = _read_files(spec, names, masks, checked, from_masks)
    problems: list[str] = []
    tags = []
    rows = zip(names, stems, cells, partitions, duplicated, stem_clash, masks, strict=True)
    for i, (name, stem, cell, partition, is_duplicate, clashes, mask) in enumerate(rows):
        errs = []
        if not name:
            errs.append("empty image name")
        if wildcard_problem(name):
            errs.append(f"image name {wildcard_problem(name)}: rename the file")
        if is_duplicate:
            errs.append("duplicate image name")
        if clashes:
            errs.append(f"file stem {stem!r} is shared with another image")
        row_tags, tag_errs = _row_tags(spec, cell)
        tags.append(row_tags)
        errs.extend(tag_errs)
        if partition not in PARTITIONS:
            errs.append(f"unknown partition {partition!r} (expected train or test)")
        file_errs, mask_tags = files.get(i, ([], ()))
        errs.extend(file_errs)
        if not errs and from_masks:
            tags[-1] = space.join(mask_tags)
            if spec.format == "tags" and not tags[-1]:
                errs.append(f"no tags: its mask {mask} holds no class, only the ignore index")
        # row numbers as in a spreadsheet: +2 for the header line and 1-based numbering
        problems.extend(f"row {i + 2} ({name!r}): {e}" for e in errs)
    if problems:
        listed = "\n  ".join(problems[:MAX_LISTED])
        more = len(problems) - MAX_LISTED
        tail = f"\n  ... and {more} more" if more > 0 else ""
        raise DatasetError(
            f"{spec.labels}: {len(problems)} problem(s) in the dataset:\n  {listed}{tail}"
        )
    tags = pd.Series(tags, index=table.index)
    if spec.format == "mhist":
        labels = tags.map(lambda t: spec.positive_class if t else spec.negative_class)
    else:
        labels = tags
    counts = _class_counts(spec, labels[partitions != "test"], tags[partitions != "test"])
    scarce = [f"{c!r} has {n}" for c, n in counts.items() if n < min_class_images]
    if scarce:
        source = " (labels from the masks)" if spec.image_labels == "masks" else ""
        raise DatasetError(
            f"{spec.labels}: each class needs at least {min_class_images} images outside "
            f"Partition = test (to train and to validate the classifier on), but class "
            f"{' and '.join(scarce)}{source}"
        )

    out = pd.DataFrame(
        {
            "name": stems,
            "file": names,
            "label": labels,
            "tags": tags,
            "partition": partitions,
        }
    )
    out["positive"] = (out["tags"] != "").astype(int)
    out["image"] = [str(spec.images / f) for f in out["file"]]
    out["mask"] = [str(m) if m is not None else "" for m in masks]
    return out.sort_values("name", kind="stable").reset_index(drop=True)


def manifest(images: dict[str, str], masks: dict[str, str]) -> pd.DataFrame:
    """One row per sample (sorted by name): its image and mask paths (mask ``""`` when none)
    with their sizes in bytes and modification times (ns): a file that changes whenever one
    of the dataset's files does, so that rules can depend on it instead of on every file."""
    rows = [
        (name, *_file_entry(images[name]), *_file_entry(masks.get(name, "")))
        for name in sorted(images)
    ]
    return pd.DataFrame(rows, columns=["name", *MANIFEST_KEY])


def digest(table: pd.DataFrame) -> str:
    """A digest of (rows of) a :func:`manifest`: it changes whenever one of the files it lists
    does (path, size or modification time)."""
    return hashlib.sha256(table.to_csv(index=False).encode()).hexdigest()
