"""Rank the train images for review; draw the top of the queue."""

from pathlib import Path

import pandas as pd

from histo_wsss.classes import LabelSpace
from histo_wsss.corrections import TABLE
from histo_wsss.io import write_csv
from histo_wsss.logs import job_log
from histo_wsss.review import contact_sheet, review_queue, train_rows
from histo_wsss.shards import shard_files
from histo_wsss.splits import read_split

with job_log(snakemake.log[0]) as log:
    p = snakemake.params
    predictions = Path(snakemake.input.predictions)
    corrections = Path(snakemake.input.corrections)
    corrected = set(pd.read_csv(corrections / TABLE, dtype={"name": str})["name"])
    pseudo = shard_files(snakemake.input.pseudo, "masks")
    targets = {
        n: str(corrections / "masks" / f"{n}.png") if n in corrected else path
        for n, path in pseudo.items()
    }
    originals = pd.read_csv(snakemake.input.manifest, dtype={"name": str}, keep_default_na=False)
    geojson = {
        kind: shard_files(snakemake.input.qupath, kind, ".geojson")
        for kind in ("pseudo_masks", "predictions")
    }
    space = LabelSpace(**p.labels)
    split = read_split(snakemake.input.split, space.classes)
    rows = train_rows(
        split,
        pd.read_csv(predictions / "predictions.csv", dtype={"name": str}),
        {n: str(predictions / "probs" / f"{n}.npy") for n in split["name"]},
        targets,
        corrected,
        p.threshold,
        space,
    )
    queue = review_queue(rows, p.review["weights"], p.review["k"])
    queue["image"] = queue["name"].map(
        dict(zip(originals["name"], originals["image"], strict=True))
    )
    for kind, files in geojson.items():
        queue[f"{kind}_geojson"] = queue["name"].map(files)
    write_csv(snakemake.output.queue, queue)
    top = queue[queue["in_round"]]
    predicted = {n: str(predictions / "masks" / f"{n}.png") for n in top["name"]}
    contact_sheet(
        top,
        shard_files(snakemake.input.stain, "images"),
        targets,
        predicted,
        snakemake.output.sheet,
        space,
    )
    log.info(
        "review round: %d of %d train images (%d corrected already); first: %s, %s",
        len(top), len(queue), len(corrected & set(queue["name"])),
        *(top[["name", "reason"]].iloc[0] if len(top) else ("none", "")),
    )  # fmt: skip
