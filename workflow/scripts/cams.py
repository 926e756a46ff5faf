"""CAMs of one shard of images, one per class of each image's tags (none for untagged images)."""

import torch

from histo_wsss.cam import save_cams
from histo_wsss.classes import TAG_SEPARATOR, LabelSpace
from histo_wsss.classifier import load_checkpoint
from histo_wsss.device import resolve_device
from histo_wsss.gpu_slots import gpu_slot
from histo_wsss.io import atomic_dir, write_csv
from histo_wsss.logs import job_log
from histo_wsss.splits import read_split

with job_log(snakemake.log[0]) as log, gpu_slot():
    torch.set_num_threads(snakemake.threads)
    cfg = snakemake.params.cam
    space = LabelSpace(**snakemake.params.labels)
    device = resolve_device(cfg["device"])
    model = load_checkpoint(snakemake.input.model, device)
    split = read_split(snakemake.input.split, space.classes)
    tags = dict(zip(split["name"], split["tags"], strict=True))
    items = [
        (n, snakemake.params.images[n], tags[n].split(TAG_SEPARATOR))
        for n in snakemake.params.names
        if tags[n]
    ]
    with atomic_dir(snakemake.output[0]) as out:
        peaks = save_cams(model, items, out / "cams", cfg, device, space.classes)
        write_csv(out / "peaks.csv", peaks)
    windows = f" in {cfg['window_size']}-px windows" if cfg["window_size"] else ""
    log.info(
        "%d CAMs (%s%s) of %d tagged images on %s",
        *(len(peaks), cfg["method"], windows, len(items), device),
    )
