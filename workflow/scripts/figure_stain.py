"""Stain normalization before and after for a few images spread over the dataset."""

import pandas as pd

from histo_wsss.figures import stain_sheet
from histo_wsss.io import read_mask, read_rgb
from histo_wsss.logs import job_log
from histo_wsss.shards import shard_files

with job_log(snakemake.log[0]):
    p = snakemake.params
    qc = pd.read_csv(snakemake.input.qc, keep_default_na=False).set_index("name")
    normalized = shard_files(snakemake.input.stain, "images")
    tissue = shard_files(snakemake.input.stain, "tissue")
    manifest = pd.read_csv(snakemake.input.manifest, dtype={"name": str}, keep_default_na=False)
    originals = dict(zip(manifest["name"], manifest["image"], strict=True))
    rows = [
        {
            "name": name,
            "original": read_rgb(originals[name], p.scale),
            "normalized": read_rgb(normalized[name]),
            "tissue": read_mask(tissue[name]),
            "tissue_fraction": qc.loc[name, "tissue_fraction"],
            "normalized_ok": str(qc.loc[name, "normalized"]) == "True",
            "reason": qc.loc[name, "reason"],
        }
        for name in p.names
    ]
    stain_sheet(rows, snakemake.output[0])
