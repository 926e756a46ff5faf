"""Gather per-image pseudo-mask rows; summarise each step's quality against real masks."""

from pathlib import Path

import pandas as pd

from histo_wsss.io import write_csv
from histo_wsss.logs import job_log
from histo_wsss.pseudo_masks import quality_summary

with job_log(snakemake.log[0]) as log:
    table = pd.concat(pd.read_csv(Path(d) / "pseudo_masks.csv") for d in snakemake.input.shards)
    split = pd.read_csv(snakemake.input.split)[["name", "split"]]
    table = split.merge(table, on="name", validate="1:1").sort_values("name")
    write_csv(snakemake.output.table, table)
    summary = quality_summary(table)
    write_csv(snakemake.output.summary, summary)
    log.info("pseudo-mask quality (positive images):\n%s", summary.to_string(index=False))
