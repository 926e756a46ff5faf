"""Saving a segmentation model's predictions.

Per image: ``probs/<name>.npy`` (float16 ``(K, H, W)``: each class's probability map, at the
image's own size: the whole image is predicted at once, padded to the encoder stride and cropped
back -- no tiling, no resizing), ``masks/<name>.png`` (the label map of
:func:`histo_wsss.evaluation.predicted_labels`: background where no class reaches the
threshold, else the most probable class; written by
:meth:`histo_wsss.classes.LabelSpace.write_labels`, so 255 where the probability is at least the
threshold, else 0, for K = 1), and one row of ``predictions.csv`` with the head's image-level
probabilities and the predicted area.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from histo_wsss.classes import LabelSpace
from histo_wsss.evaluation import BINARY, predicted_labels
from histo_wsss.io import atomic_path, write_csv
from histo_wsss.segmentation import predict


def save_predictions(
    model: nn.Module,
    table: pd.DataFrame,
    images: dict[str, str],
    out_dir: str | Path,
    batch_size: int,
    device: torch.device,
    threshold: float = 0.5,
    space: LabelSpace = BINARY,
) -> pd.DataFrame:
    """Predict every image named in ``table['name']`` (``images`` maps names to paths) with a
    network of ``space``'s K classes.

    The returned table (also written as ``predictions.csv``) keeps ``table``'s columns and adds
    ``head_prob`` (the highest class probability of the head: that the image holds any class;
    for K = 1 the positive class's), for K > 1 ``head_prob_<class>`` per class, and
    ``pred_area_fraction`` (the share of pixels predicted as any class).
    """
    out_dir = Path(out_dir)
    names = list(table["name"])
    rows = []
    outputs = predict(model, [images[n] for n in names], batch_size, device)
    for name, (_, probs, heads) in zip(names, outputs, strict=True):
        if len(probs) != space.k:
            raise ValueError(f"the network has {len(probs)} class(es), the dataset {space.k}")
        with atomic_path(out_dir / "probs" / f"{name}.npy") as tmp:
            np.save(tmp, probs.astype(np.float16))
        labels = predicted_labels(probs, threshold)
        space.write_labels(out_dir / "masks" / f"{name}.png", labels)
        row = {"head_prob": round(float(heads.max()), 6)}
        if space.k > 1:
            per_class = zip(space.classes, heads, strict=True)
            row |= {f"head_prob_{c}": round(float(p), 6) for c, p in per_class}
        rows.append({**row, "pred_area_fraction": float(np.mean(labels > 0))})
    result = pd.concat([table.reset_index(drop=True), pd.DataFrame(rows)], axis=1)
    write_csv(out_dir / "predictions.csv", result)
    return result
