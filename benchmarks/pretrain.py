"""Pretraining throughput on real tissue: images/s and the share of the step time spent waiting
for data.

SimCLR pretraining (histo_wsss.pretrain.train) of a ResNet-18 on the 85 GlaS training images
(../shared/data/glas-train/images, as they are: mostly 775 x 522 px; see ../shared/data/README.md)
for a few epochs per setting; the library's own per-epoch clock (histo_wsss.training.LoaderClock)
gives images/s (each image gives two views) and the share of the epoch spent waiting for the
data loader. The first epoch is left out of the figures (allocation and warm-up).
Usage: python benchmarks/pretrain.py [--crop 224 128] [--batch 32] [--workers 0 1] [--epochs 3]
                                    [--images N]  (the first N images; default all)
"""

from __future__ import annotations

import argparse
import itertools
import sys

import pandas as pd
import torch

from common import REPO, WORK, report
from histo_wsss.io import read_rgb
from histo_wsss.pretrain import train

GLAS = REPO.parent / "shared" / "data" / "glas-train" / "images"


def measure(images, crop: int, batch: int, workers: int, epochs: int) -> dict:
    out = WORK / "pretrain" / f"crop{crop}_batch{batch}_workers{workers}"
    cfg = {
        "epochs": epochs,
        "batch_size": batch,
        "crop_size": crop,
        "num_workers": workers,
        "device": "auto",
    }
    train(images, cfg, out / "encoder.pt", out / "metrics.csv")
    timed = pd.read_csv(out / "metrics.csv").iloc[1:]
    return {
        "crop": crop,
        "batch": batch,
        "num_workers": workers,
        "epochs_timed": len(timed),
        "images_per_s": round(float(timed["images_per_s"].mean()), 2),
        "views_per_s": round(2 * float(timed["images_per_s"].mean()), 2),
        "waiting_percent": round(100 * float(timed["waiting_share"].mean()), 1),
        "s_per_epoch": round(float(timed["seconds"].mean()), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--crop", type=int, nargs="+", default=[224, 128])
    parser.add_argument("--batch", type=int, nargs="+", default=[32])
    parser.add_argument("--workers", type=int, nargs="+", default=[0])
    parser.add_argument("--epochs", type=int, default=3, help="per setting; the first is untimed")
    parser.add_argument("--images", type=int, default=None, help="the first N images only")
    args = parser.parse_args()
    if args.epochs < 2:
        parser.error("--epochs must be >= 2 (the first epoch is not timed)")
    if not GLAS.is_dir():
        print(f"skipped: the GlaS images are not at {GLAS} (see ../shared/data/README.md)")
        sys.exit(0)
    images = [read_rgb(p) for p in sorted(GLAS.glob("*.png"))[: args.images]]
    threads = torch.get_num_threads()
    print(f"{len(images)} GlaS images; torch {torch.__version__}, {threads} threads")
    rows = [
        measure(images, crop, batch, workers, args.epochs)
        for crop, batch, workers in itertools.product(args.crop, args.batch, args.workers)
    ]
    report("pretrain", rows, {"images": len(images), "arch": "resnet18", "method": "simclr"})


if __name__ == "__main__":
    main()
