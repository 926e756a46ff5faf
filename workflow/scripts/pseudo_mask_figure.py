"""Image, a CAM per class, each refinement step and the truth side by side for a few positive
images, spread over the range of the final mask's score vs truth (K = 1: IoU; K > 1: the
image's mIoU, from the shards' confusion matrices) or, without truth, of its area."""

from pathlib import Path

import pandas as pd

from histo_wsss.classes import LabelSpace
from histo_wsss.figures import image_scores, palette_of, pick_examples, pseudo_mask_steps
from histo_wsss.logs import job_log
from histo_wsss.refine import STEPS
from histo_wsss.shards import shard_files

with job_log(snakemake.log[0]):
    p = snakemake.params
    space = LabelSpace(**p.labels)
    pseudo = snakemake.input.pseudo
    table = pd.read_csv(snakemake.input.quality, dtype={"name": str})
    table = table[table["positive"] == 1]
    iou = f"{p.final_step}_iou"
    if space.k > 1 and iou in table:
        confusion = (pd.read_csv(Path(d) / "confusion.csv", dtype={"name": str}) for d in pseudo)
        rows = pd.concat(confusion)
        final = rows[rows["step"] == p.final_step]
        table[iou] = table["name"].map(image_scores(final, space.k + 1))
    score = iou if iou in table else f"{p.final_step}_area"
    names = pick_examples(dict(zip(table["name"], table[score], strict=True)), p.n_images)
    pseudo_mask_steps(
        names,
        shard_files(snakemake.input.stain, "images"),
        shard_files(snakemake.input.cams, "cams", ".npy"),
        {step: shard_files(pseudo, f"steps/{step}") for step in STEPS},
        p.final_step,
        shard_files(snakemake.input.truth, "masks"),
        snakemake.output[0],
        ious=dict(zip(table["name"], table[iou], strict=True)) if iou in table else None,
        palette=palette_of(space, p.colors),
    )
