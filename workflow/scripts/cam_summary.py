"""How well the CAMs localise: share of CAMs whose peak lies in their class's real label."""

from pathlib import Path

import pandas as pd

from histo_wsss.cam import peak_summary
from histo_wsss.classes import LabelSpace
from histo_wsss.io import write_json
from histo_wsss.logs import job_log
from histo_wsss.splits import read_split

with job_log(snakemake.log[0]) as log:
    space = LabelSpace(**snakemake.params.labels)
    peaks = pd.concat(
        pd.read_csv(Path(d) / "peaks.csv", dtype={"name": str, "class": str})
        for d in snakemake.input.cams
    )
    split = read_split(snakemake.input.split, space.classes)
    summary = peak_summary(split, peaks, snakemake.params.masks, space)
    write_json(snakemake.output[0], summary)
    for part, entry in summary.get("peak_in_mask", {}).items():
        log.info(
            "%s: CAM peak inside the real mask of its class for a share %.4f of the CAMs of %d "
            "positive images (%s)",
            *(part, entry["share"], entry["n_positive"]),
            ", ".join(f"{c} {e['share']:.4f}" for c, e in entry["classes"].items()),
        )
