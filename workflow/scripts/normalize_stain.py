"""Normalize one shard of images and write its tissue masks and QC rows."""

import json
from pathlib import Path

from histo_wsss.io import atomic_dir, write_csv
from histo_wsss.logs import job_log
from histo_wsss.stain import StainParams, StainTarget, normalize_images

with job_log(snakemake.log[0]) as log:
    target = StainTarget.from_json(json.loads(Path(snakemake.input.target).read_text()))
    with atomic_dir(snakemake.output[0]) as out:
        qc = normalize_images(
            snakemake.params.names,
            snakemake.params.images,
            out,
            target,
            StainParams.from_config(snakemake.params.stain),
        )
        write_csv(out / "qc.csv", qc)
    log.info("normalized %d/%d images", int(qc["normalized"].sum()), len(qc))
