"""Figure 2 (panels), 3 (error maps) or 4 (uncertainty) of the paper for a few test images:
positives spread over the range of their score (K = 1: IoU; K > 1: the image's mIoU, from the
evaluation's confusion matrices), then the negative image with the most predicted pixels."""

from pathlib import Path

import pandas as pd

from histo_wsss import figures
from histo_wsss.classes import LabelSpace
from histo_wsss.evaluation import predicted_labels
from histo_wsss.logs import job_log
from histo_wsss.shards import shard_files

DRAW = {
    "segmentation_examples": figures.segmentation_panels,
    "error_maps": figures.error_maps,
    "uncertainty_maps": figures.uncertainty_maps,
}

with job_log(snakemake.log[0]):
    p = snakemake.params
    space = LabelSpace(**p.labels)
    palette = figures.palette_of(space, p.colors)
    images = shard_files(snakemake.input.stain, "images")
    pseudo = shard_files(snakemake.input.pseudo, "masks")
    masks = shard_files(snakemake.input.truth, "masks")
    kind = snakemake.wildcards.kind
    table = pd.read_csv(snakemake.input.table, dtype={"name": str})
    reference = "truth" if masks else "pseudo"
    scores = dict(zip(table["name"], table[f"{reference}_iou"], strict=True))
    if space.k > 1:
        confusion = pd.read_csv(snakemake.input.confusion, dtype={"name": str})
        confusion = confusion[confusion["reference"] == reference]
        scores = figures.image_scores(confusion, space.k + 1)

    def of_label(label):
        """The test images of ``label``, or every evaluated one when the test split has none."""
        rows = table[(table["label"] == label) & (table["split"] == "test")]
        return rows if len(rows) else table[table["label"] == label]

    positives = of_label(1)["name"]
    names = figures.pick_examples({n: scores[n] for n in positives}, p.n_examples)
    negatives = of_label(0).sort_values(["pred_area", "name"], ascending=[False, True])
    probs = Path(snakemake.input.predictions) / "probs"
    examples = []
    for name, negative in [(n, False) for n in names] + [(n, True) for n in negatives["name"][:1]]:
        ex = figures.load_example(
            images[name], probs / f"{name}.npy", pseudo[name], masks.get(name, ""), name, space
        )
        ex["negative"] = negative
        ex["iou"] = None if negative else scores[name]
        ex["pred"] = predicted_labels(ex["prob"], p.threshold)
        ex["reference"] = ex[reference]
        examples.append(ex)
    if kind == "error_maps":
        DRAW[kind](examples, snakemake.output[0], reference=reference, palette=palette)
    else:
        DRAW[kind](
            examples,
            snakemake.output[0],
            threshold=p.threshold,
            reference=reference,
            palette=palette,
        )
