"""Probability maps (one per class), label maps and head probabilities for every image (the
evaluation scores the val and test images; the review queue ranks the train images)."""

import torch

from histo_wsss.classes import LabelSpace
from histo_wsss.device import resolve_device
from histo_wsss.gpu_slots import gpu_slot
from histo_wsss.io import atomic_dir
from histo_wsss.logs import job_log
from histo_wsss.prediction import save_predictions
from histo_wsss.segmentation import load_checkpoint
from histo_wsss.splits import read_split

with job_log(snakemake.log[0]) as log, gpu_slot():
    torch.set_num_threads(snakemake.threads)
    p = snakemake.params
    device = resolve_device(p.device)
    model = load_checkpoint(snakemake.input.model, device)
    space = LabelSpace(**p.labels)
    split = read_split(snakemake.input.split, space.classes)
    with atomic_dir(snakemake.output[0]) as out:
        rows = split[["name", "split", "positive"]].rename(columns={"positive": "label"})
        table = save_predictions(
            model, rows, p.images, out, p.batch_size, device, p.threshold, space
        )
    log.info("%d predictions on %s", len(table), device)
