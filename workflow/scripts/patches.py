"""Cut one stain shard's train and val images into tagged patches."""

from histo_wsss.classes import LabelSpace
from histo_wsss.io import atomic_dir, write_csv
from histo_wsss.logs import job_log
from histo_wsss.patches import PatchParams, extract
from histo_wsss.splits import read_split

with job_log(snakemake.log[0]) as log:
    p = snakemake.params
    space = LabelSpace(**p.labels)
    split = read_split(snakemake.input.split, space.classes).set_index("name")
    names = list(p.names)
    with atomic_dir(snakemake.output[0]) as out:
        table = extract(
            names,
            [split.at[n, "split"] for n in names],
            [split.at[n, "tags"] for n in names],
            [p.images[n] for n in names],
            [p.masks[n] for n in names] if p.masks else [],
            PatchParams.from_config(p.patches),
            space,
            out,
        )
        write_csv(out / "patches.csv", table)
    log.info(
        "%d patches from %d images, %d with a tag; patches per class: %s",
        len(table),
        table["source"].nunique(),
        int(table["positive"].sum()),
        {
            c: int(table["tags"].str.split(";").map(lambda t, c=c: c in t).sum())
            for c in space.classes
        },
    )
