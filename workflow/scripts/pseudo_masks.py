"""Refine one shard of CAMs into pseudo-masks (and score each step against real masks)."""

from histo_wsss.io import atomic_dir, write_csv
from histo_wsss.logs import job_log
from histo_wsss.pseudo_masks import Item, refine_images
from histo_wsss.refine import RefineParams
from histo_wsss.splits import read_split

with job_log(snakemake.log[0]) as log:
    cfg = dict(snakemake.params.refine)
    save_steps, _ = cfg.pop("save_steps"), cfg.pop("shards")
    split = read_split(snakemake.input.split, [snakemake.params.positive_class])
    positive = dict(zip(split["name"], split["positive"], strict=True))
    p = snakemake.params
    items = [
        Item(n, p.images[n], p.tissue[n], p.cams[n], bool(positive[n]), p.masks.get(n, ""))
        for n in p.names
    ]
    with atomic_dir(snakemake.output[0]) as out:
        table = refine_images(items, RefineParams.from_config(cfg), out, save_steps)
        write_csv(out / "pseudo_masks.csv", table)
    log.info("%d pseudo-masks, mean refinement %.1f ms", len(table), 1000 * table["seconds"].mean())
