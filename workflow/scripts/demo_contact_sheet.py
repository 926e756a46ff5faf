"""Contact sheet of demo images with their ground-truth outlines."""

from pathlib import Path

from histo_wsss.demo import contact_sheet
from histo_wsss.logs import job_log

with job_log(snakemake.log[0]):
    contact_sheet(
        Path(snakemake.input.labels).parent, snakemake.output[0], colors=snakemake.params.colors
    )
