"""Synthetic training data shared by the trainer tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from histo_wsss.io import write_png


def square_items(root: Path, spec, seed: int, side: int | None = None) -> list[tuple]:
    """Dark noise images of each ``((h, w), label)`` of ``spec``; positives carry a bright
    square (the mask) of ``side`` px (capped to fit), or a third of the shorter side when
    ``side`` is None. Writes ``im<n>.png`` and ``im<n>_mask.png`` under ``root``; returns
    ``(image path, mask path, label)`` items."""
    rng = np.random.default_rng(seed)
    items = []
    for n, ((h, w), label) in enumerate(spec):
        image = rng.integers(40, 90, (h, w, 3), dtype=np.uint8)
        mask = np.zeros((h, w), dtype=bool)
        if label:
            s = min(h, w) // 3 if side is None else min(side, h - 1, w - 1)
            y, x = rng.integers(0, h - s), rng.integers(0, w - s)
            image[y : y + s, x : x + s] = 230
            mask[y : y + s, x : x + s] = True
        write_png(root / f"im{n}.png", image)
        write_png(root / f"im{n}_mask.png", mask)
        items.append((root / f"im{n}.png", root / f"im{n}_mask.png", label))
    return items
