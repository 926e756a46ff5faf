"""The review queue: which training images a human look is worth most, and why.

Each train image gets three scores in [0, 1], from the segmentation network's prediction
(``results/segmentation/predictions``) and the mask it learned from (its *target*: the
pseudo-mask, or the user's correction):

* ``uncertainty``: the mean binary entropy (bits) of the predicted probabilities -- 1 where
  every pixel is at 0.5, 0 where every pixel is certain;
* ``disagreement_vs_target``: ``1 - IoU`` between the predicted mask (``prob >= threshold``)
  and the target (both empty: 0, no disagreement);
* ``head_vs_label``: ``|head probability - image label|``: the classification head doubting the
  image-level label (a label error, or a lesion the network cannot find).

The queue ranks the images by the weighted mean of the three (``review.weights``); the reason
given is the score that contributes most, in words. Negative images come after the positive
ones: their target is empty by their label, so a correction cannot change it (a look can only
question the label). Corrected images have had their look: they are ranked last and never in
the round. The round is the first ``review.k`` of the rest. On GlaS, a queue ranked on the
score alone filled its first rounds with benign images that the network painted malignant
(docs/review.md).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from histo_wsss.figures import figure
from histo_wsss.io import read_mask, read_rgb
from histo_wsss.metrics import confusion, scores_from_counts

SCORES = ("uncertainty", "disagreement_vs_target", "head_vs_label")
QUEUE_COLUMNS = [
    "rank",
    "name",
    "in_round",
    "corrected",
    "score",
    "reason",
    "label",
    "head_prob",
    *SCORES,
    "iou_prediction_vs_target",
]


def entropy_bits(prob: np.ndarray) -> np.ndarray:
    """Binary entropy (bits) of probabilities: 1 at 0.5, 0 at 0 and 1."""
    p = np.clip(np.asarray(prob, dtype=np.float64), 1e-7, 1 - 1e-7)
    return -(p * np.log2(p) + (1 - p) * np.log2(1 - p))


def image_scores(
    prob: np.ndarray, target: np.ndarray, threshold: float, head_prob: float, label: int
) -> dict:
    """The :data:`SCORES` of one image (module docstring) and ``iou_prediction_vs_target``."""
    pred = np.asarray(prob) >= threshold
    iou = float(scores_from_counts(*confusion(pred, target))["iou"])
    return {
        "uncertainty": float(entropy_bits(prob).mean()),
        "disagreement_vs_target": 1.0 - iou,
        "head_vs_label": abs(float(head_prob) - int(label)),
        "iou_prediction_vs_target": iou,
    }


def _reason(row: Mapping, weights: Mapping[str, float], target_word: str) -> str:
    if row["corrected"]:
        return "corrected already"
    key = max(SCORES, key=lambda k: (weights[k] * row[k], -SCORES.index(k)))
    if key == "uncertainty":
        return f"uncertain prediction (mean entropy {row['uncertainty']:.2f} bits)"
    if key == "disagreement_vs_target":
        return f"prediction and {target_word} disagree (IoU {row['iou_prediction_vs_target']:.2f})"
    label = "positive" if row["label"] else "negative"
    return f"head doubts the label (head probability {row['head_prob']:.2f}, label {label})"


def review_queue(table: pd.DataFrame, weights: Mapping[str, float], k: int) -> pd.DataFrame:
    """Rank the images of ``table`` (one row each: ``name``, ``label``, ``head_prob``,
    ``corrected`` and the :data:`SCORES` with ``iou_prediction_vs_target``) for review.

    Returns :data:`QUEUE_COLUMNS`, best first: uncorrected positive images by ``score`` (the
    ``weights``-weighted mean of the scores; ties by name), uncorrected negative images by
    ``score``, then the corrected ones; ``in_round`` marks the first ``k`` uncorrected images.
    """
    total = sum(weights[s] for s in SCORES)
    out = table.copy()
    out["score"] = sum(weights[s] * out[s] for s in SCORES) / total
    out["negative"] = out["label"] == 0
    out = out.sort_values(
        ["corrected", "negative", "score", "name"], ascending=[True, True, False, True]
    )
    out["rank"] = np.arange(1, len(out) + 1)
    out["in_round"] = ~out["corrected"] & (out["rank"] <= k)
    out["reason"] = [
        _reason(row, weights, "correction" if row["corrected"] else "pseudo-mask")
        for row in out.to_dict("records")
    ]
    return out[QUEUE_COLUMNS].round(4).reset_index(drop=True)


def contact_sheet(
    queue: pd.DataFrame,
    images: Mapping[str, str],
    targets: Mapping[str, str],
    predictions: Mapping[str, str],
    path: str | os.PathLike,
    columns: int = 4,
) -> None:
    """A figure of the queue's rows (in order): each image with its target's outline (yellow)
    and the prediction's (cyan), titled with its rank, name and reason."""
    rows = max(1, -(-len(queue) // columns))
    with figure(path, (3.2 * columns, 3.4 * rows + 0.4)) as fig:
        axes = np.atleast_1d(fig.subplots(rows, columns)).ravel()
        for ax in axes:
            ax.set_axis_off()
        for ax, row in zip(axes, queue.itertuples(index=False), strict=False):
            ax.imshow(read_rgb(images[row.name]))
            outlines = {"yellow": targets[row.name], "cyan": predictions[row.name]}
            for color, mask_path in outlines.items():
                mask = read_mask(mask_path)
                if mask.any():
                    ax.contour(mask, levels=[0.5], colors=color, linewidths=1.0)
            reason = row.reason.replace(" (", "\n(", 1)
            ax.set_title(f"#{row.rank} {row.name}\n{reason}", fontsize=7)
        fig.suptitle(
            "Review queue, top of this round: target outline yellow, prediction cyan",
            fontsize=9,
        )


def train_rows(
    split: pd.DataFrame,
    predictions: pd.DataFrame,
    prob_paths: Mapping[str, str],
    targets: Mapping[str, str],
    corrected: Sequence[str],
    threshold: float,
) -> pd.DataFrame:
    """The :func:`review_queue` input for the train images of ``split`` (``name``, ``split``,
    ``positive``): their ``predictions`` rows (``name``, ``head_prob``), probability maps and
    targets (the correction where ``corrected``, else the pseudo-mask)."""
    head = dict(zip(predictions["name"], predictions["head_prob"], strict=True))
    rows = []
    train = split[split["split"] == "train"]
    for name, label in zip(train["name"], train["positive"], strict=True):
        prob = np.load(prob_paths[name]).astype(np.float32)
        scores = image_scores(prob, read_mask(targets[name]), threshold, head[name], int(label))
        rows.append(
            {"name": name, "label": int(label), "head_prob": head[name],
             "corrected": name in corrected, **scores}
        )  # fmt: skip
    return pd.DataFrame(rows)
