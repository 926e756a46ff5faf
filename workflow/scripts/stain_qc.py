"""Gather the shards' QC rows into one table and log the fallbacks."""

from pathlib import Path

import pandas as pd

from histo_wsss.io import write_csv
from histo_wsss.logs import job_log

with job_log(snakemake.log[0]) as log:
    qc = pd.concat(
        [pd.read_csv(Path(d) / "qc.csv", keep_default_na=False) for d in snakemake.input]
    )
    qc = qc.sort_values("name").reset_index(drop=True)
    write_csv(snakemake.output[0], qc)
    fallback = qc[~qc["normalized"]]
    log.info("%d images, %d kept their colours", len(qc), len(fallback))
    for row in fallback.itertuples():
        log.info("  %s: %s", row.name, row.reason)
