"""Train the segmentation network (one output channel per foreground class) on the
pseudo-masks of the train split (a user's correction in place of an image's pseudo-mask, a
corrected train image listed `weight` times), with the images' tags as the head's targets;
select on val."""

from pathlib import Path

import pandas as pd
import torch

from histo_wsss.classes import LabelSpace
from histo_wsss.corrections import TABLE
from histo_wsss.gpu_slots import gpu_slot
from histo_wsss.logs import job_log
from histo_wsss.segmentation import train
from histo_wsss.splits import read_split

with job_log(snakemake.log[0]) as log, gpu_slot():
    torch.set_num_threads(snakemake.threads)
    p = snakemake.params
    space = LabelSpace(**p.labels)
    split = read_split(snakemake.input.split, space.classes)
    corrections = Path(snakemake.input.corrections)
    corrected = pd.read_csv(corrections / TABLE, dtype={"name": str})
    weight = dict(zip(corrected["name"], corrected["weight"], strict=True))
    masks = {**p.masks, **{n: str(corrections / "masks" / f"{n}.png") for n in weight}}
    items = {
        part: [
            (p.images[n], masks[n], tuple(space.tag_vector(tags)))
            for n, tags in zip(rows["name"], rows["tags"], strict=True)
            for _ in range(weight.get(n, 1) if part == "train" else 1)
        ]
        for part, rows in split.groupby("split")
    }
    if weight:
        log.info(
            "%d corrected image(s) replace their pseudo-masks (%s)",
            len(weight),
            ", ".join(f"{n} x{w}" for n, w in weight.items()),
        )
    train(
        items["train"],
        items["val"],
        p.segmentation,
        snakemake.output.model,
        snakemake.output.metrics,
        log=log,
    )
