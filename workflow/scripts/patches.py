"""Cut one stain shard's train and val images into tagged patches."""

from histo_wsss.io import atomic_dir, write_csv
from histo_wsss.logs import job_log
from histo_wsss.patches import PatchParams, extract
from histo_wsss.splits import read_split

with job_log(snakemake.log[0]) as log:
    p = snakemake.params
    split = read_split(snakemake.input.split, p.positive_class).set_index("name")
    names = list(p.names)
    with atomic_dir(snakemake.output[0]) as out:
        table = extract(
            names,
            [split.at[n, "split"] for n in names],
            [int(split.at[n, "positive"]) for n in names],
            [p.images[n] for n in names],
            [p.masks[n] for n in names] if p.masks else [],
            PatchParams.from_config(p.patches),
            out,
        )
        write_csv(out / "patches.csv", table)
    log.info(
        "%d patches from %d images, %d positive",
        len(table),
        table["source"].nunique(),
        int(table["positive"].sum()),
    )
