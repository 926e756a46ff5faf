"""Generate the embedded synthetic H&E demo dataset."""

from pathlib import Path

from histo_wsss.demo import demo_spec, generate
from histo_wsss.logs import job_log

with job_log(snakemake.log[0]) as log:
    spec = demo_spec(
        snakemake.params.demo, snakemake.params.classes, snakemake.params.positive_class
    )
    table = generate(spec, Path(snakemake.output.labels).parent)
    log.info("wrote %d demo images: %s", len(table), table.iloc[:, 1].value_counts().to_dict())
