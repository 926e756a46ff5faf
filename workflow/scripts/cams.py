"""CAMs of one shard of images for their ground-truth class."""

import torch

from histo_wsss.cam import save_cams
from histo_wsss.classifier import load_checkpoint
from histo_wsss.device import resolve_device
from histo_wsss.gpu_slots import gpu_slot
from histo_wsss.io import atomic_dir, write_csv
from histo_wsss.logs import job_log
from histo_wsss.splits import read_split

with job_log(snakemake.log[0]) as log, gpu_slot():
    torch.set_num_threads(snakemake.threads)
    cfg = snakemake.params.cam
    device = resolve_device(cfg["device"])
    model = load_checkpoint(snakemake.input.model, device)
    positive = read_split(snakemake.input.split, [snakemake.params.positive_class])
    positive = dict(zip(positive["name"], positive["positive"], strict=True))
    items = [(n, snakemake.params.images[n], positive[n]) for n in snakemake.params.names]
    with atomic_dir(snakemake.output[0]) as out:
        peaks = save_cams(model, items, out / "cams", cfg, device)
        write_csv(out / "peaks.csv", peaks)
    log.info("%d CAMs (%s) on %s", len(peaks), cfg["method"], device)
