"""Stratified, seeded train/val(/test) splits that honour a dataset's own test partition."""

from __future__ import annotations

import pandas as pd
from sklearn.model_selection import train_test_split

SPLITS = ("train", "val", "test")


def make_split(
    table: pd.DataFrame, val_fraction: float, test_fraction: float, seed: int
) -> pd.DataFrame:
    """Assign every image to ``train``, ``val`` or ``test``.

    Rows whose ``partition`` is ``test`` form the test set. Without any such row, a stratified
    ``test_fraction`` of the images is held out as test instead, so evaluation never sees
    training images. The rest is split into train/val, stratified by ``label``, with
    ``val_fraction`` going to val. Returns columns ``name``, ``label``, ``split`` sorted by name.
    """
    table = table.sort_values("name", kind="stable").reset_index(drop=True)
    split = pd.Series("train", index=table.index, dtype=object)
    is_test = table["partition"] == "test"
    if not is_test.any() and test_fraction > 0:
        held = _stratified_holdout(table, test_fraction, seed)
        is_test = table.index.isin(held)
    split[is_test] = "test"
    rest = table[~is_test]
    if val_fraction > 0:
        split[_stratified_holdout(rest, val_fraction, seed)] = "val"
    return pd.DataFrame({"name": table["name"], "label": table["label"], "split": split})


def _stratified_holdout(table: pd.DataFrame, fraction: float, seed: int) -> pd.Index:
    """Index labels of a stratified, seeded ``fraction`` of ``table``."""
    counts = table["label"].value_counts()
    if len(table) < 2 or (counts < 2).any():
        raise ValueError(
            f"cannot hold out a stratified {fraction:.0%} of {len(table)} images: every class "
            f"needs at least 2 images (counts: {counts.to_dict()})"
        )
    _, held = train_test_split(
        table.index, test_size=fraction, stratify=table["label"], random_state=seed
    )
    return pd.Index(sorted(held))


def read_split(path, positive_class: str) -> pd.DataFrame:
    """Read a split CSV written by :func:`make_split`, adding ``positive`` (0/1)."""
    split = pd.read_csv(path, dtype={"name": str, "label": str, "split": str})
    split["positive"] = (split["label"] == positive_class).astype(int)
    return split
