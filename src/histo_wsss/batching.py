"""Batches of images of any size: every batch holds images of one size.

The networks are fully convolutional (global pooling before the classifier's and the
segmentation head's linear layers), so every image is processed at its own resolution: no
resizing and no tiling. Inference streams consecutive images of one size as a batch
(:func:`same_size_runs`); training groups its images by size (:func:`size_batches`), or trains on
random square crops (``crop_size``, :class:`histo_wsss.training.Augmentation`), which all share
one size. DeepLabV3+ pads its input to the encoder's stride and crops the output back
(:func:`histo_wsss.segmentation.forward_padded`).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from typing import TypeVar

import numpy as np

T = TypeVar("T")

__all__ = ["same_size_runs", "size_batches"]


def same_size_runs(
    items: Iterable[T], batch_size: int, size: Callable[[T], Hashable]
) -> Iterator[list[T]]:
    """Consecutive runs of at most ``batch_size`` items of one ``size(item)``, in order.

    ``items`` is consumed lazily (e.g. images read one by one): a run ends when it is full or
    when the next item has another size.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    run: list[T] = []
    for item in items:
        if run and (len(run) == batch_size or size(item) != size(run[0])):
            yield run
            run = []
        run.append(item)
    if run:
        yield run


def size_batches(
    indices: Sequence[int],
    sizes: Sequence[tuple[int, int]],
    batch_size: int,
    rng: np.random.Generator | None = None,
) -> list[list[int]]:
    """Cut ``indices`` into batches of same-size images (``sizes[i]`` = size of image ``i``).

    With ``rng`` (training): the indices are shuffled, grouped by size (sizes in order of first
    appearance), cut into chunks of ``batch_size``; a final chunk of ONE image joins the
    previous chunk of its size (that batch has ``batch_size + 1`` images; BatchNorm cannot
    train on a batch of one) and a size with a single image is left out; the batch order is
    shuffled. Without ``rng`` (evaluation): the indices keep their order within each size,
    chunks of one are kept, no shuffling.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    order = list(indices)
    if rng is not None:
        order = [order[i] for i in rng.permutation(len(order))]
    groups: dict[tuple, list[int]] = {}
    for i in order:
        groups.setdefault(tuple(sizes[i]), []).append(i)
    batches: list[list[int]] = []
    for group in groups.values():
        chunks = [group[k : k + batch_size] for k in range(0, len(group), batch_size)]
        if rng is not None and len(chunks[-1]) == 1:
            last = chunks.pop()
            if chunks:
                chunks[-1] += last
        batches += chunks
    if rng is not None:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches
