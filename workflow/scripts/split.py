"""Validate the dataset and write the stratified train/val/test split."""

from histo_wsss.dataset import DatasetSpec, load_labels
from histo_wsss.io import write_csv
from histo_wsss.logs import job_log
from histo_wsss.splits import make_split

with job_log(snakemake.log[0]) as log:
    table = load_labels(DatasetSpec.from_config(snakemake.params.dataset))
    cfg = snakemake.params.split
    split = make_split(table, cfg["val_fraction"], cfg["test_fraction"], cfg["seed"])
    write_csv(snakemake.output[0], split)
    log.info("split:\n%s", split.groupby(["split", "label"]).size().to_string())
