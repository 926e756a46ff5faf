"""Check the corrected masks and write them as segmentation targets at the working scale."""

import os

import pandas as pd

from histo_wsss.classes import LabelSpace
from histo_wsss.corrections import COLUMNS, make_targets
from histo_wsss.io import atomic_dir
from histo_wsss.logs import job_log
from histo_wsss.splits import read_split

with job_log(snakemake.log[0]) as log:
    p = snakemake.params
    # the size and time of each file as this job reads it
    stats = {n: os.stat(f) for n, f in p.files.items()}
    corrections = pd.DataFrame(
        [(n, f, stats[n].st_size, stats[n].st_mtime_ns) for n, f in p.files.items()],
        columns=COLUMNS,
    )
    space = LabelSpace(**p.labels)
    split = read_split(snakemake.input.split, space.classes)
    with atomic_dir(snakemake.output[0]) as out:
        table = make_targets(corrections, p.images, split, space, p.scale, p.weight, out, log)
    log.info(
        "%d corrected image(s) (%d train, %d val), each listed %d time(s) per training epoch",
        len(table), (table["split"] == "train").sum(), (table["split"] == "val").sum(), p.weight,
    )  # fmt: skip
