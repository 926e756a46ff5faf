"""Refine one shard of CAMs into pseudo-masks (and score each step against real masks)."""

from histo_wsss.classes import TAG_SEPARATOR, LabelSpace
from histo_wsss.io import atomic_dir, write_csv
from histo_wsss.logs import job_log
from histo_wsss.pseudo_masks import Item, refine_images, refine_params
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
    items = [
        Item(n, p.images[n], p.tissue[n], p.cams[n], tags[n], p.masks.get(n, "")) for n in p.names
    ]
    with atomic_dir(snakemake.output[0]) as out:
        table, confusion = refine_images(
            items, refine_params(p.refine), out, p.refine["save_steps"], space
        )
        write_csv(out / "pseudo_masks.csv", table)
        write_csv(out / "confusion.csv", confusion)
    log.info("%d pseudo-masks, mean refinement %.1f ms", len(table), 1000 * table["seconds"].mean())
