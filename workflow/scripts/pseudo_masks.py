"""Refine one shard of CAMs into pseudo-masks (and score each step against real masks); with
`negative_patches_background`, the shard's patches without a tag are background."""

import pandas as pd

from histo_wsss.classes import TAG_SEPARATOR, LabelSpace
from histo_wsss.io import atomic_dir, write_csv
from histo_wsss.logs import job_log
from histo_wsss.pseudo_masks import Item, negative_patch_boxes, refine_images, refine_params
from histo_wsss.splits import read_split

with job_log(snakemake.log[0]) as log:
    space = LabelSpace(**snakemake.params.labels)
    split = read_split(snakemake.input.split, space.classes)
    index = {c: k for k, c in enumerate(space.classes)}
    tags = {
        name: tuple(index[c] for c in joined.split(TAG_SEPARATOR) if c)
        for name, joined in zip(split["name"], split["tags"], strict=True)
    }
    p = snakemake.params
    patches = [pd.read_csv(f"{folder}/patches.csv") for folder in snakemake.input.patches]
    boxes = negative_patch_boxes(pd.concat(patches), p.patch_size) if patches else {}
    items = [
        Item(n, p.images[n], p.tissue[n], p.cams[n], tags[n], p.masks.get(n, ""), boxes.get(n, ()))
        for n in p.names
    ]
    if patches:
        shard = [item.background for item in items if item.background]
        n_boxes = sum(map(len, shard))
        log.info("%d negative patches of %d images are background", n_boxes, len(shard))
    with atomic_dir(snakemake.output[0]) as out:
        table, confusion = refine_images(
            items, refine_params(p.refine), out, p.refine["save_steps"], space
        )
        write_csv(out / "pseudo_masks.csv", table)
        write_csv(out / "confusion.csv", confusion)
    log.info("%d pseudo-masks, mean refinement %.1f ms", len(table), 1000 * table["seconds"].mean())
