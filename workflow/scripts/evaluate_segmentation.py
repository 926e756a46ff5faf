"""Score the predictions against pseudo-masks and, where the dataset has them, real masks, per
class, beside the two trivial baselines (every labelled pixel the majority class; every pixel of
an image its most frequent tag)."""

from pathlib import Path

import pandas as pd

from histo_wsss.classes import LabelSpace
from histo_wsss.evaluation import (
    baseline_confusions,
    evaluate_images,
    label_pixels,
    summarize,
    summary_lines,
)
from histo_wsss.io import write_csv, write_json
from histo_wsss.logs import job_log
from histo_wsss.splits import read_split

with job_log(snakemake.log[0]) as log:
    p = snakemake.params
    space = LabelSpace(**p.labels)
    split = read_split(snakemake.input.split, space.classes)
    predictions = Path(snakemake.input.predictions)
    rows = pd.read_csv(predictions / "predictions.csv", dtype={"name": str})
    rows = rows[rows["split"].isin(["val", "test"])]  # the train images serve the review queue
    rows["prob_path"] = [str(predictions / "probs" / f"{n}.npy") for n in rows["name"]]
    rows["pseudo_path"] = [p.pseudo[n] for n in rows["name"]]
    rows["truth_path"] = [p.masks.get(n, "") for n in rows["name"]]
    table, confusion = evaluate_images(rows, p.threshold, space)
    write_csv(snakemake.output.table, table)
    write_csv(snakemake.output.confusion, confusion)
    # the baselines learn from the train split: its masks' pixels per class, its images' tags
    train = split[split["split"] == "train"]
    references = {"pseudo": p.pseudo, "truth": p.masks}
    train_pixels = {
        ref: label_pixels([paths[n] for n in train["name"]], space)
        for ref, paths in references.items()
        if paths and (confusion["reference"] == ref).any()
    }
    tags = dict(zip(split["name"], split["tags"], strict=True))
    baselines = baseline_confusions(confusion, tags, train_pixels, train["tags"], space)
    summary = summarize(table, confusion, space.classes, baselines)
    write_json(snakemake.output.summary, summary)
    for line in summary_lines(summary):
        log.info("%s", line)
