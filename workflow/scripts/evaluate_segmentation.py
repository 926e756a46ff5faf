"""Score the predictions against pseudo-masks and, where the dataset has them, real masks."""

from pathlib import Path

import pandas as pd

from histo_wsss.evaluation import evaluate_images, summarize, summary_lines
from histo_wsss.io import write_csv, write_json
from histo_wsss.logs import job_log

with job_log(snakemake.log[0]) as log:
    p = snakemake.params
    predictions = Path(snakemake.input.predictions)
    rows = pd.read_csv(predictions / "predictions.csv", dtype={"name": str})
    rows = rows[rows["split"].isin(["val", "test"])]  # the train images serve the review queue
    rows["prob_path"] = [str(predictions / "probs" / f"{n}.npy") for n in rows["name"]]
    rows["pseudo_path"] = [p.pseudo[n] for n in rows["name"]]
    rows["truth_path"] = [p.masks.get(n, "") for n in rows["name"]]
    table = evaluate_images(rows, p.threshold)
    write_csv(snakemake.output.table, table)
    summary = summarize(table)
    write_json(snakemake.output.summary, summary)
    for line in summary_lines(summary):
        log.info("%s", line)
