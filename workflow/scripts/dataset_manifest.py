"""List the dataset's files with their sizes and times (what rules depend on, not the files)."""

from histo_wsss.dataset import manifest
from histo_wsss.io import write_csv
from histo_wsss.logs import job_log

with job_log(snakemake.log[0]) as log:
    table = manifest(snakemake.params.images, snakemake.params.masks)
    write_csv(snakemake.output[0], table)
    log.info("%d images, %d masks", len(table), int((table["mask"] != "").sum()))
