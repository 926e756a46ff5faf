"""Generate the embedded synthetic H&E demo dataset."""

from pathlib import Path

from histo_wsss.demo import DemoSpec, generate
from histo_wsss.logs import job_log

with job_log(snakemake.log[0]) as log:
    negative, positive = snakemake.params.classes
    if positive != snakemake.params.positive_class:
        negative, positive = positive, negative
    spec = DemoSpec(**snakemake.params.demo, negative_class=negative, positive_class=positive)
    table = generate(spec, Path(snakemake.output.labels).parent)
    log.info("wrote %d demo images: %s", len(table), table.iloc[:, 1].value_counts().to_dict())
