"""Train the image-level classifier on the train split, selecting on the val split."""

import torch

from histo_wsss.classifier import train
from histo_wsss.gpu_slots import gpu_slot
from histo_wsss.logs import job_log
from histo_wsss.splits import read_split

with job_log(snakemake.log[0]) as log, gpu_slot():
    torch.set_num_threads(snakemake.threads)
    split = read_split(snakemake.input.split, snakemake.params.positive_class)
    images = snakemake.params.images
    items = {
        part: [(images[n], p) for n, p in zip(rows["name"], rows["positive"], strict=True)]
        for part, rows in split.groupby("split")
    }
    best = train(
        items["train"],
        items["val"],
        snakemake.params.classifier,
        snakemake.output.model,
        snakemake.output.metrics,
        log=log,
    )
    log.info("best epoch: %s", best)
