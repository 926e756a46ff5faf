"""How well the CAMs localise: share of positive images whose CAM peak lies in the truth."""

from pathlib import Path

import pandas as pd

from histo_wsss.cam import peak_hits
from histo_wsss.io import write_json
from histo_wsss.logs import job_log
from histo_wsss.splits import read_split

with job_log(snakemake.log[0]) as log:
    peaks = pd.concat(pd.read_csv(Path(d) / "peaks.csv") for d in snakemake.input.cams)
    split = read_split(snakemake.input.split, [snakemake.params.positive_class])
    table = split.merge(peaks[["name", "peak_row", "peak_col"]], on="name", validate="1:1")
    summary = {"n_images": len(table), "has_ground_truth": bool(snakemake.params.masks)}
    if snakemake.params.masks:
        positives = table[table["positive"] == 1].copy()
        positives["peak_in_mask"] = peak_hits(positives, snakemake.params.masks)
        summary["peak_in_mask"] = {
            part: {"n_positive": len(rows), "share": round(float(rows["peak_in_mask"].mean()), 4)}
            for part, rows in positives.groupby("split")
        }
    write_json(snakemake.output[0], summary)
    for part, entry in summary.get("peak_in_mask", {}).items():
        log.info(
            "%s: CAM peak inside the real mask for a share %.4f of %d positive images",
            *(part, entry["share"], entry["n_positive"]),
        )
