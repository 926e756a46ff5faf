"""The review queue: which training images a human look is worth most, and why.

Each train image gets three scores in [0, 1], from the segmentation network's prediction
(``results/segmentation/predictions``: K class probability maps, K = 1 for a binary dataset)
and the label map it learned from (its *target*: the pseudo-mask, or the user's correction):

* ``uncertainty``: the pixels' mean binary entropy (bits) of the predicted probabilities, per
  pixel the highest over the K classes (a pixel is as uncertain as its least certain class
  decision) -- 1 where every pixel is at 0.5, 0 where every pixel is certain;
* ``disagreement_vs_target``: ``1 - IoU`` between the predicted label map
  (:func:`histo_wsss.evaluation.predicted_labels`) and the target, the IoU being the mean over
  the classes that either holds of each class's IoU (K = 1: the binary IoU; neither holds any
  class: 0, no disagreement); unlabelled target pixels are left out;
* ``head_vs_label``: ``|head probability - image label|``, for K classes the largest over the
  classes of ``|head probability - tag|`` (``head_class`` names that class): the classification
  head doubting the image-level label (a label error, or a lesion the network cannot find).

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

from histo_wsss.classes import LabelSpace
from histo_wsss.evaluation import BINARY, predicted_labels
from histo_wsss.figures import figure
from histo_wsss.io import read_rgb
from histo_wsss.metrics import label_confusion, label_counts, scores_from_counts

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
    "head_class",
]


def entropy_bits(prob: np.ndarray) -> np.ndarray:
    """Binary entropy (bits) of probabilities: 1 at 0.5, 0 at 0 and 1."""
    p = np.clip(np.asarray(prob, dtype=np.float64), 1e-7, 1 - 1e-7)
    return -(p * np.log2(p) + (1 - p) * np.log2(1 - p))


def image_scores(
    probs: np.ndarray,
    target: np.ndarray,
    threshold: float,
    head_probs: np.ndarray,
    tags: np.ndarray,
    classes: Sequence[str] = BINARY.classes,
) -> dict:
    """The :data:`SCORES` of one image (module docstring), ``iou_prediction_vs_target`` and
    ``head_class`` (for K > 1). ``probs``: ``(K, H, W)`` (or ``(H, W)``: K = 1); ``target``: a
    label map; ``head_probs`` and ``tags``: ``(K,)`` (or scalars: K = 1), of ``classes``."""
    probs = np.asarray(probs, dtype=np.float32)
    probs = probs[None] if probs.ndim == 2 else probs
    k = len(probs)
    cm = label_confusion(predicted_labels(probs, threshold), target, k + 1)
    tp, fp, fn, _ = (c[1:] for c in label_counts(cm))
    held = tp + fp + fn > 0
    iou = (
        float(scores_from_counts(tp[held], fp[held], fn[held], 0)["iou"].mean())
        if held.any()
        else 1.0
    )
    doubt = np.abs(np.atleast_1d(np.asarray(head_probs, np.float64)) - np.atleast_1d(tags))
    return {
        "uncertainty": float(entropy_bits(probs).max(axis=0).mean()),
        "disagreement_vs_target": 1.0 - iou,
        "head_vs_label": float(doubt.max()),
        "iou_prediction_vs_target": iou,
        "head_class": classes[int(doubt.argmax())] if k > 1 else "",
    }


def _reason(row: Mapping, weights: Mapping[str, float], target_word: str) -> str:
    if row["corrected"]:
        return "corrected already"
    key = max(SCORES, key=lambda k: (weights[k] * row[k], -SCORES.index(k)))
    if key == "uncertainty":
        return f"uncertain prediction (mean entropy {row['uncertainty']:.2f} bits)"
    if key == "disagreement_vs_target":
        return f"prediction and {target_word} disagree (IoU {row['iou_prediction_vs_target']:.2f})"
    if row.get("head_class"):
        return f"head doubts the {row['head_class']} tag (|head probability - tag| {row[key]:.2f})"
    label = "positive" if row["label"] else "negative"
    return f"head doubts the label (head probability {row['head_prob']:.2f}, label {label})"


def review_queue(table: pd.DataFrame, weights: Mapping[str, float], k: int) -> pd.DataFrame:
    """Rank the images of ``table`` (one row each: ``name``, ``label``, ``head_prob``,
    ``corrected`` and the :data:`SCORES` with ``iou_prediction_vs_target``; ``head_class`` for K
    classes) for review.

    Returns :data:`QUEUE_COLUMNS`, best first: uncorrected positive images by ``score`` (the
    ``weights``-weighted mean of the scores; ties by name), uncorrected negative images by
    ``score``, then the corrected ones; ``in_round`` marks the first ``k`` uncorrected images.
    """
    total = sum(weights[s] for s in SCORES)
    out = table.copy()
    if "head_class" not in out.columns:
        out["head_class"] = ""
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
    space: LabelSpace = BINARY,
    columns: int = 4,
) -> None:
    """A figure of the queue's rows (in order): each image with its target's outline (yellow)
    and the prediction's (cyan) -- of each class of ``space``, read as its label maps --, titled
    with its rank, name and reason."""
    rows = max(1, -(-len(queue) // columns))
    with figure(path, (3.2 * columns, 3.4 * rows + 0.4)) as fig:
        axes = np.atleast_1d(fig.subplots(rows, columns)).ravel()
        for ax in axes:
            ax.set_axis_off()
        for ax, row in zip(axes, queue.itertuples(index=False), strict=False):
            ax.imshow(read_rgb(images[row.name]))
            outlines = {"yellow": targets[row.name], "cyan": predictions[row.name]}
            for color, mask_path in outlines.items():
                labels = space.read_labels(mask_path)
                for label in range(1, space.k + 1):
                    if (labels == label).any():
                        ax.contour(labels == label, levels=[0.5], colors=color, linewidths=1.0)
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
    space: LabelSpace = BINARY,
) -> pd.DataFrame:
    """The :func:`review_queue` input for the train images of ``split`` (``name``, ``split``,
    ``positive``, ``tags``): their ``predictions`` rows (``name``, ``head_prob``; for K > 1
    ``head_prob_<class>``), probability maps and targets (the correction where ``corrected``,
    else the pseudo-mask; label maps of ``space``)."""
    columns = ["head_prob"] if space.k == 1 else [f"head_prob_{c}" for c in space.classes]
    head = dict(zip(predictions["name"], predictions[columns].to_numpy(np.float64), strict=True))
    summary = dict(zip(predictions["name"], predictions["head_prob"], strict=True))
    rows = []
    train = split[split["split"] == "train"]
    for name, label, tags in zip(train["name"], train["positive"], train["tags"], strict=True):
        probs = np.load(prob_paths[name]).astype(np.float32)
        target = space.read_labels(targets[name])
        scores = image_scores(
            probs, target, threshold, head[name], space.tag_vector(tags), space.classes
        )
        rows.append(
            {"name": name, "label": int(label), "head_prob": summary[name],
             "corrected": name in corrected, **scores}
        )  # fmt: skip
    return pd.DataFrame(rows)
