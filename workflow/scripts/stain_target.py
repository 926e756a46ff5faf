"""Choose the Macenko reference stains (from config or from the training images)."""

import pandas as pd

from histo_wsss.logs import job_log
from histo_wsss.stain import StainParams, choose_target, save_target, target_from_image

with job_log(snakemake.log[0]) as log:
    cfg = snakemake.params.stain
    params = StainParams.from_config(cfg)
    if cfg["target"] == "auto":
        split = pd.read_csv(snakemake.input.split)
        train = split.loc[split["split"] == "train", "name"]
        paths = [snakemake.params.images[n] for n in train]
        target = choose_target(paths, params, cfg["target_images"])
    else:
        target = target_from_image(cfg["target"], params)
    save_target(snakemake.output[0], target)
    log.info("stain target from %d image(s): %s", len(target.source), target.to_json())
