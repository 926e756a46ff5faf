"""Pretrain the ResNet encoder, self-supervised, on the train and val images (never the test
split; labels unused) and the extra images, stain-normalized to the run's target."""

import json
from pathlib import Path

import torch

from histo_wsss.gpu_slots import gpu_slot
from histo_wsss.io import read_rgb
from histo_wsss.logs import job_log
from histo_wsss.pretrain import train
from histo_wsss.splits import read_split
from histo_wsss.stain import StainParams, StainTarget, normalize

with job_log(snakemake.log[0]) as log, gpu_slot():
    torch.set_num_threads(snakemake.threads)
    p = snakemake.params
    split = read_split(snakemake.input.split, [])  # labels unused
    names = split.loc[split["split"].isin(["train", "val"]), "name"]
    images = [read_rgb(p.images[n]) for n in names]
    extra = list(snakemake.input.get("extra", []))
    if extra:
        target = StainTarget.from_json(json.loads(Path(snakemake.input.target).read_text()))
        params = StainParams.from_config(p.stain)
        records = [normalize(read_rgb(path), target, params) for path in extra]
        images += [image for image, _, _ in records]
        kept = [
            Path(path).name
            for path, (_, _, qc) in zip(extra, records, strict=True)
            if not qc["normalized"]
        ]
        if kept:
            log.info("%d extra image(s) kept their colours (too little tissue, or no fit): %s",
                     len(kept), ", ".join(kept[:10]))  # fmt: skip
    log.info("pretraining on %d train+val images and %d extra images", len(names), len(extra))
    train(images, p.pretrain, snakemake.output.encoder, snakemake.output.metrics, log=log)
