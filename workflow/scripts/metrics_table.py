"""The main metrics per split as a CSV table and as a figure."""

import json
from pathlib import Path

from histo_wsss.figures import metrics_table, metrics_table_rows
from histo_wsss.io import write_csv
from histo_wsss.logs import job_log

with job_log(snakemake.log[0]):
    summary = json.loads(Path(snakemake.input[0]).read_text())
    write_csv(snakemake.output.table, metrics_table_rows(summary))
    metrics_table(summary, snakemake.output.figure)
