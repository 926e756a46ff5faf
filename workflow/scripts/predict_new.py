"""Segment a folder of new images: stain-normalize them to the workflow's target, predict."""

import json
from pathlib import Path

import pandas as pd
import torch

from histo_wsss.classes import LabelSpace
from histo_wsss.device import resolve_device
from histo_wsss.gpu_slots import gpu_slot
from histo_wsss.io import atomic_dir, write_csv
from histo_wsss.logs import job_log
from histo_wsss.prediction import save_predictions
from histo_wsss.segmentation import load_checkpoint
from histo_wsss.stain import StainParams, StainTarget, normalize_images

with job_log(snakemake.log[0]) as log, gpu_slot():
    torch.set_num_threads(snakemake.threads)
    p = snakemake.params
    paths = list(snakemake.input.images)
    names = [Path(f).stem for f in paths]
    if len(set(names)) != len(names):
        raise ValueError(f"predict.images: several files share a stem: {sorted(names)}")
    target = StainTarget.from_json(json.loads(Path(snakemake.input.target).read_text()))
    device = resolve_device(p.device)
    model = load_checkpoint(snakemake.input.model, device)
    with atomic_dir(snakemake.output[0]) as out:
        qc = normalize_images(names, paths, out, target, StainParams.from_config(p.stain))
        write_csv(out / "stain_qc.csv", qc)
        normalized = {n: str(out / "images" / f"{n}.png") for n in names}
        rows = pd.DataFrame({"name": names, "source": paths})
        table = save_predictions(
            model, rows, normalized, out, p.batch_size, device, p.threshold, LabelSpace(**p.labels)
        )
    log.info("segmented %d new images on %s", len(table), device)
