"""Classifier accuracy, balanced accuracy, AUC and confusion matrix on val and test: of each
class and their means for K classes."""

import numpy as np
import torch

from histo_wsss.classes import LabelSpace
from histo_wsss.classifier import evaluate, evaluation_line, load_checkpoint, predict
from histo_wsss.device import resolve_device
from histo_wsss.gpu_slots import gpu_slot
from histo_wsss.io import write_json
from histo_wsss.logs import job_log
from histo_wsss.splits import read_split

with job_log(snakemake.log[0]) as log, gpu_slot():
    torch.set_num_threads(snakemake.threads)
    space = LabelSpace(**snakemake.params.labels)
    device = resolve_device(snakemake.params.device)
    model = load_checkpoint(snakemake.input.model, device)
    split = read_split(snakemake.input.split, space.classes)
    results = {}
    for part in ("val", "test"):
        rows = split[split["split"] == part]
        if rows.empty:
            continue
        paths = [snakemake.params.images[n] for n in rows["name"]]
        probs = predict(model, paths, snakemake.params.batch_size, device)
        labels = np.stack([space.tag_vector(t) for t in rows["tags"]]).astype(int)
        results[part] = evaluate(labels, probs.astype(np.float64), classes=space.classes)
        log.info("%s: %s", part, evaluation_line(results[part]))
    write_json(snakemake.output[0], results)
