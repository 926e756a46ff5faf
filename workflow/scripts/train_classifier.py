"""Train the image-level classifier on the train split (whole images, or their patches with
`classifier.train_on: patches`), selecting on the val split: one sigmoid output per foreground
class, learnt from the images' (patches') tags."""

from pathlib import Path

import pandas as pd
import torch

from histo_wsss.classes import LabelSpace
from histo_wsss.classifier import train
from histo_wsss.gpu_slots import gpu_slot
from histo_wsss.logs import job_log
from histo_wsss.splits import read_split

with job_log(snakemake.log[0]) as log, gpu_slot():
    torch.set_num_threads(snakemake.threads)
    space = LabelSpace(**snakemake.params.labels)
    cfg = dict(snakemake.params.classifier)
    if cfg.pop("train_on") == "patches":
        table = pd.concat(
            pd.read_csv(
                Path(d) / "patches.csv", dtype={"name": str, "tags": str}, keep_default_na=False
            ).assign(folder=d)
            for d in snakemake.input.patches
        )
        paths = [
            str(Path(d) / "images" / f"{n}.png")
            for d, n in zip(table["folder"], table["name"], strict=True)
        ]
        table = table.assign(path=paths).sort_values("name", kind="stable")
    else:
        table = read_split(snakemake.input.split, space.classes)
        table["path"] = [snakemake.params.images[n] for n in table["name"]]
    targets = [tuple(int(v) for v in space.tag_vector(t)) for t in table["tags"]]
    items = {
        part: [(path, targets[i]) for i, path in zip(rows.index, rows["path"], strict=True)]
        for part, rows in table.reset_index(drop=True).groupby("split")
    }
    log.info(
        "training on %s: %s",
        "patches" if snakemake.input.patches else "whole images",
        {part: len(rows) for part, rows in items.items()},
    )
    train(
        items["train"],
        items["val"],
        cfg,
        snakemake.output.model,
        snakemake.output.metrics,
        log=log,
        classes=space.classes,
    )
