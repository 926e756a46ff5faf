"""Validate the dataset and write the stratified train/val/test split."""

from histo_wsss.dataset import DatasetSpec, load_labels, manifest_keys
from histo_wsss.io import write_csv
from histo_wsss.logs import job_log
from histo_wsss.splits import make_split

with job_log(snakemake.log[0]) as log:
    # A folder dataset's files passed at DAG build and are in its manifest (input `images`):
    # not decoded again. The demo's (input `images` is their folder) are checked here.
    checked = manifest_keys(snakemake.input.images)
    spec = DatasetSpec.from_config(snakemake.params.dataset)
    table = load_labels(
        spec,
        checked,
        min_class_images=snakemake.params.min_class_images,
    )
    cfg = snakemake.params.split
    split = make_split(
        table,
        cfg["val_fraction"],
        cfg["test_fraction"],
        cfg["seed"],
        pool_rare=spec.format == "tags",  # tag sets, not classes, are the strata
    )
    write_csv(snakemake.output[0], split)
    log.info("split:\n%s", split.groupby(["split", "label"]).size().to_string())
