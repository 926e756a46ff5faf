"""Stratified, seeded train/val(/test) splits that honour a dataset's own test partition."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
from sklearn.model_selection import train_test_split

from histo_wsss.classes import TAG_SEPARATOR

SPLITS = ("train", "val", "test")


def make_split(
    table: pd.DataFrame,
    val_fraction: float,
    test_fraction: float,
    seed: int,
    pool_rare: bool = False,
) -> pd.DataFrame:
    """Assign every image to ``train``, ``val`` or ``test``.

    Rows whose ``partition`` is ``test`` form the test set. Without any such row, a stratified
    ``test_fraction`` of the images is held out as test instead, so evaluation never sees
    training images. The rest is split into train/val, stratified by ``label``, with
    ``val_fraction`` going to val. A multi-label dataset's ``label`` is its tag set, whose
    rarer combinations cannot each be split: with ``pool_rare`` the labels of fewer than 2 images
    are pooled into one stratum, which joins the largest when it is a single image (WSSS4LUAD
    has one ``tumor;normal`` image); otherwise such a label is an error (a binary class needs
    images on both sides). Returns columns ``name``, ``label``, ``split`` sorted by name.
    """
    table = table.sort_values("name", kind="stable").reset_index(drop=True)
    split = pd.Series("train", index=table.index, dtype=object)
    is_test = table["partition"] == "test"
    if not is_test.any() and test_fraction > 0:
        held = _stratified_holdout(table, test_fraction, seed, pool_rare)
        is_test = table.index.isin(held)
    split[is_test] = "test"
    rest = table[~is_test]
    if val_fraction > 0:
        split[_stratified_holdout(rest, val_fraction, seed, pool_rare)] = "val"
    return pd.DataFrame({"name": table["name"], "label": table["label"], "split": split})


def _strata(labels: pd.Series) -> pd.Series:
    """``labels`` with those of fewer than 2 images pooled (into the largest label when the
    pool is a single image)."""
    counts = labels.value_counts()
    rare = labels.isin(counts.index[counts < 2])
    pool = counts.index[0] if rare.sum() == 1 else "\0rare"
    return labels.where(~rare, pool)


def _stratified_holdout(
    table: pd.DataFrame, fraction: float, seed: int, pool_rare: bool
) -> pd.Index:
    """Index labels of a stratified, seeded ``fraction`` of ``table``."""
    strata = _strata(table["label"]) if pool_rare else table["label"]
    counts = table["label"].value_counts()
    if len(table) < 2 or (strata.value_counts() < 2).any():
        raise ValueError(
            f"cannot hold out a stratified {fraction:.0%} of {len(table)} images: every class "
            f"needs at least 2 images (counts: {counts.to_dict()})"
        )
    _, held = train_test_split(table.index, test_size=fraction, stratify=strata, random_state=seed)
    return pd.Index(sorted(held))


def read_split(path, classes: Sequence[str]) -> pd.DataFrame:
    """Read a split CSV written by :func:`make_split`, adding ``tags`` (the foreground
    ``classes`` among the label's ``;``-separated names, in class order: a binary label is a
    tag only when it is the positive class) and ``positive`` (0/1: any tag)."""
    split = pd.read_csv(
        path, dtype={"name": str, "label": str, "split": str}, keep_default_na=False
    )
    split["tags"] = [
        TAG_SEPARATOR.join(c for c in classes if c in label.split(TAG_SEPARATOR))
        for label in split["label"]
    ]
    split["positive"] = (split["tags"] != "").astype(int)
    return split
