"""Figure 2 (panels), 3 (error maps) or 4 (uncertainty) of the paper for a few test images."""

from pathlib import Path

import pandas as pd

from histo_wsss import figures
from histo_wsss.logs import job_log
from histo_wsss.shards import shard_files

DRAW = {
    "segmentation_examples": figures.segmentation_panels,
    "error_maps": figures.error_maps,
    "uncertainty_maps": figures.uncertainty_maps,
}

with job_log(snakemake.log[0]):
    p = snakemake.params
    images = shard_files(snakemake.input.stain, "images")
    pseudo = shard_files(snakemake.input.pseudo, "masks")
    masks = shard_files(snakemake.input.truth, "masks")
    kind = snakemake.wildcards.kind
    table = pd.read_csv(snakemake.input.table, dtype={"name": str})
    positives = table[(table["label"] == 1) & (table["split"] == "test")]
    if positives.empty:
        positives = table[table["label"] == 1]
    score = "truth_iou" if "truth_iou" in positives else "pseudo_iou"
    names = figures.pick_examples(
        dict(zip(positives["name"], positives[score], strict=True)), p.n_examples
    )
    probs = Path(snakemake.input.predictions) / "probs"
    examples = [
        figures.load_example(images[n], probs / f"{n}.npy", pseudo[n], masks.get(n, ""), name=n)
        for n in names
    ]
    if kind == "error_maps":
        reference = "truth" if masks else "pseudo"
        for ex in examples:
            ex["pred"] = ex["prob"] >= p.threshold
            ex["reference"] = ex[reference]
        DRAW[kind](examples, snakemake.output[0], title=f"prediction vs {reference}")
    else:
        DRAW[kind](examples, snakemake.output[0])
