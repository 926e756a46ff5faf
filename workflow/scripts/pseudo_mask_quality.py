"""Gather per-image pseudo-mask rows and confusion matrices; summarise each step's quality
against real masks (foreground scores, mIoU and fwIoU, and per-class scores)."""

from pathlib import Path

import pandas as pd

from histo_wsss.classes import LabelSpace
from histo_wsss.io import write_csv
from histo_wsss.logs import job_log
from histo_wsss.pseudo_masks import class_scores, quality_summary

with job_log(snakemake.log[0]) as log:
    space = LabelSpace(**snakemake.params.labels)
    shards = [Path(d) for d in snakemake.input.shards]
    table = pd.concat(pd.read_csv(d / "pseudo_masks.csv", dtype={"name": str}) for d in shards)
    confusion = pd.concat(pd.read_csv(d / "confusion.csv", dtype={"name": str}) for d in shards)
    split = pd.read_csv(snakemake.input.split, dtype={"name": str})[["name", "split"]]
    table = split.merge(table, on="name", validate="1:1").sort_values("name")
    write_csv(snakemake.output.table, table)
    summary = quality_summary(table, confusion, space.k + 1)
    write_csv(snakemake.output.summary, summary)
    write_csv(snakemake.output.classes, class_scores(table, confusion, space.classes))
    log.info("pseudo-mask quality (positive images):\n%s", summary.to_string(index=False))
