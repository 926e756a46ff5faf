"""Saving a segmentation model's predictions.

Per image: ``probs/<name>.npy`` (float16 probability map of the positive class, at the image's
own size: the whole image is predicted at once, padded to the encoder stride and cropped back
-- no tiling, no resizing), ``masks/<name>.png`` (255 where the probability is at least the
threshold, else 0), and one row of ``predictions.csv`` with the head's image-level probability
and the predicted area.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from histo_wsss.io import atomic_path, write_csv, write_png
from histo_wsss.segmentation import predict


def save_predictions(
    model: nn.Module,
    table: pd.DataFrame,
    images: dict[str, str],
    out_dir: str | Path,
    batch_size: int,
    device: torch.device,
    threshold: float = 0.5,
) -> pd.DataFrame:
    """Predict every image named in ``table['name']`` (``images`` maps names to paths).

    The returned table (also written as ``predictions.csv``) keeps ``table``'s columns and adds
    ``head_prob`` and ``pred_area_fraction``.
    """
    out_dir = Path(out_dir)
    names = list(table["name"])
    rows = []
    outputs = predict(model, [images[n] for n in names], batch_size, device)
    for name, (_, prob, head_prob) in zip(names, outputs, strict=True):
        with atomic_path(out_dir / "probs" / f"{name}.npy") as tmp:
            np.save(tmp, prob.astype(np.float16))
        mask = prob >= threshold
        write_png(out_dir / "masks" / f"{name}.png", mask)
        rows.append({"head_prob": round(float(head_prob), 6), "pred_area_fraction": mask.mean()})
    result = pd.concat([table.reset_index(drop=True), pd.DataFrame(rows)], axis=1)
    write_csv(out_dir / "predictions.csv", result)
    return result
