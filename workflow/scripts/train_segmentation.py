"""Train the segmentation network on the pseudo-masks of the train split; select on val."""

import torch

from histo_wsss.gpu_slots import gpu_slot
from histo_wsss.logs import job_log
from histo_wsss.segmentation import train
from histo_wsss.splits import read_split

with job_log(snakemake.log[0]) as log, gpu_slot():
    torch.set_num_threads(snakemake.threads)
    p = snakemake.params
    split = read_split(snakemake.input.split, [p.positive_class])
    items = {
        part: [
            (p.images[n], p.masks[n], y)
            for n, y in zip(rows["name"], rows["positive"], strict=True)
        ]
        for part, rows in split.groupby("split")
    }
    train(
        items["train"],
        items["val"],
        p.segmentation,
        snakemake.output.model,
        snakemake.output.metrics,
        log=log,
    )
