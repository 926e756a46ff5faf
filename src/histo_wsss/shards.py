"""Deterministic assignment of images to shard jobs, and the files a sharded stage wrote.

A shard is chosen from a stable hash of the image name, so adding images to a dataset changes
only the shards the new images fall into; the others keep their inputs and are not rerun.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Iterable
from pathlib import Path


def shard_of(name: str, n_shards: int) -> int:
    """Return the shard index (0-based) of an image name."""
    if n_shards < 1:
        raise ValueError(f"n_shards must be >= 1, got {n_shards}")
    return zlib.crc32(name.encode("utf-8")) % n_shards


def shard_groups(names: Iterable[str], n_shards: int) -> list[list[str]]:
    """The sorted names of each shard, in shard order (one pass over ``names``)."""
    groups: list[list[str]] = [[] for _ in range(n_shards)]
    for name in sorted(names):
        groups[shard_of(name, n_shards)].append(name)
    return groups


def shard_files(folders: Iterable[str | os.PathLike], kind: str, suffix: str = ".png") -> dict:
    """``{name: path}`` of the ``kind`` files (``<folder>/<kind>/<name><suffix>``) of a sharded
    stage's output ``folders``: what a job that reads the whole stage finds there, so that it
    needs no list of every path among its parameters (which the report would print)."""
    found = {}
    for folder in folders:
        for path in sorted((Path(folder) / kind).glob(f"*{suffix}")):
            found[path.name[: -len(suffix)]] = str(path)
    return found
