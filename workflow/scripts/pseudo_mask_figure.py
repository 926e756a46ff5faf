"""Image, CAM, each refinement step and the truth side by side for a few positive images."""

import pandas as pd

from histo_wsss.figures import pick_examples, pseudo_mask_steps
from histo_wsss.logs import job_log
from histo_wsss.refine import STEPS
from histo_wsss.shards import shard_files

with job_log(snakemake.log[0]):
    p = snakemake.params
    pseudo = snakemake.input.pseudo
    table = pd.read_csv(snakemake.input.quality)
    table = table[table["positive"] == 1]
    iou = f"{p.final_step}_iou"
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
    )
