"""Orchestration overhead of the CPU stages (stain normalization, pseudo-mask refinement).

Images/s of each stage three ways, side by side on the same images:
  - snakemake --cores 2 with the project's sharding (`shards` jobs of many images each; the
    wall time of the whole snakemake call: start-up, DAG, job start-ups, the work);
  - the raw library calls in one loop per core (2 forked processes, half of the images each,
    the library already imported): the ceiling;
  - snakemake with one job per image (`shards` = the number of images), on the small set only.
The pseudo-masks read CAMs: here blurred ground-truth masks written where the `cams` rule puts
them and marked up to date with `snakemake --touch` (the refinement's cost does not depend on
where a CAM came from).
Usage: python benchmarks/orchestration.py [N_SMALL N_LARGE]   (default 200 3152)
"""

from __future__ import annotations

import os

# One BLAS/OpenMP thread per process, as Snakemake gives a `threads: 1` job: the raw loops run
# one process per core, and more threads per process would only oversubscribe the cores.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import json
import multiprocessing as mp
import shutil
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from common import WORK, dataset, folder_config, report, snakemake
from histo_wsss.classes import LabelSpace
from histo_wsss.io import read_mask
from histo_wsss.pseudo_masks import Item, refine_images
from histo_wsss.refine import RefineParams
from histo_wsss.shards import shard_of
from histo_wsss.splits import read_split
from histo_wsss.stain import StainParams, StainTarget, normalize_images

CORES = 2
CAM_SHARDS = 2


def _config(data: Path, shards: int) -> dict:
    return folder_config(
        data, stain={"shards": shards}, cam={"shards": CAM_SHARDS}, pseudo_masks={"shards": shards}
    )


def _fake_cams(workdir: Path, data: Path, names: list[str]) -> None:
    """Blurred, noisy ground-truth masks as CAMs, where the `cams` rule writes them."""
    rng = np.random.default_rng(0)
    for name in names:
        truth = read_mask(data / "masks" / f"{name}.png").astype(np.float32)
        cam = cv2.GaussianBlur(truth, (0, 0), 8) + rng.normal(0, 0.05, truth.shape)
        cam = np.clip(cam / max(cam.max(), 1e-6), 0, 1).astype(np.float16)
        folder = workdir / "results" / "cam" / "shards" / str(shard_of(name, CAM_SHARDS)) / "cams"
        folder.mkdir(parents=True, exist_ok=True)
        np.save(folder / f"{name}.npy", cam[None])  # K = 1
    classifier = workdir / "results" / "classifier"
    classifier.mkdir(parents=True, exist_ok=True)
    (classifier / "model.pt").touch()
    (classifier / "metrics.csv").touch()


def snakemake_stages(data: Path, shards: int, tag: str) -> dict:
    """Seconds of the normalization and of the pseudo-mask shards through snakemake."""
    workdir = WORK / f"orchestration_{tag}"
    shutil.rmtree(workdir, ignore_errors=True)
    config = _config(data, shards)
    snakemake(workdir, config, "--cores", str(CORES), "results/stain/target.json")
    stain = [f"results/stain/shards/{k}" for k in range(shards)]
    normalize_s, _ = snakemake(workdir, config, "--cores", str(CORES), *stain)
    names = pd.read_csv(workdir / "results" / "split" / "split.csv")["name"].tolist()
    _fake_cams(workdir, data, names)
    cams = [f"results/cam/shards/{k}" for k in range(CAM_SHARDS)]
    snakemake(workdir, config, "--touch", "--cores", "1", *cams)
    masks = [f"results/pseudo_masks/shards/{k}" for k in range(shards)]
    refine_s, out = snakemake(workdir, config, "--cores", str(CORES), *masks)
    if f"{shards} of {shards} steps (100%) done" not in out:
        raise RuntimeError(f"expected {shards} pseudo-mask jobs:\n{out[-3000:]}")
    return {"workdir": workdir, "names": names, "normalize": normalize_s, "pseudo_masks": refine_s}


def _normalize_part(args) -> None:
    names, images, out, target = args
    normalize_images(names, images, out, target, StainParams())


def _refine_part(args) -> None:
    items, out = args
    refine_images(items, RefineParams(), out, True, LabelSpace(("lesion",)))


def _forked(fn, parts) -> float:
    start = time.perf_counter()
    with mp.get_context("fork").Pool(CORES) as pool:
        pool.map(fn, parts)
    return time.perf_counter() - start


def raw_loops(run: dict, data: Path) -> dict:
    """Seconds of the same work as plain library loops, one forked process per core."""
    workdir, names = run["workdir"], run["names"]
    scratch = workdir / "raw"
    shutil.rmtree(scratch, ignore_errors=True)
    target = StainTarget.from_json(
        json.loads((workdir / "results" / "stain" / "target.json").read_text())
    )
    halves = [names[k::CORES] for k in range(CORES)]
    images = {n: str(data / "images" / f"{n}.png") for n in names}
    normalize_s = _forked(
        _normalize_part,
        [(h, [images[n] for n in h], scratch / f"stain{k}", target) for k, h in enumerate(halves)],
    )
    split = read_split(workdir / "results" / "split" / "split.csv", ["lesion"])
    positive = dict(zip(split["name"], split["positive"], strict=True))
    stain = workdir / "results" / "stain" / "shards"
    cams = workdir / "results" / "cam" / "shards"
    shards = len(list(stain.iterdir()))

    def item(n: str) -> Item:
        k = shard_of(n, shards)
        return Item(
            n,
            str(stain / str(k) / "images" / f"{n}.png"),
            str(stain / str(k) / "tissue" / f"{n}.png"),
            str(cams / str(shard_of(n, CAM_SHARDS)) / "cams" / f"{n}.npy"),
            (0,) if positive[n] else (),
            str(data / "masks" / f"{n}.png"),
        )

    refine_s = _forked(
        _refine_part, [([item(n) for n in h], scratch / f"masks{k}") for k, h in enumerate(halves)]
    )
    return {"normalize": normalize_s, "pseudo_masks": refine_s}


def main(small: int, large: int) -> None:
    rows = []
    for n in (small, large):
        data = dataset(n)
        sharded = snakemake_stages(data, 4, f"{n}_sharded")
        raw = raw_loops(sharded, data)
        per_image = snakemake_stages(data, n, f"{n}_per_image") if n == small else None
        for stage in ("normalize", "pseudo_masks"):
            row = {"images": n, "stage": stage}
            row["raw_loop_x2_img_s"] = round(n / raw[stage], 1)
            row["snakemake_4_shards_img_s"] = round(n / sharded[stage], 1)
            row["sharded_vs_raw"] = round(raw[stage] / sharded[stage], 2)
            if per_image:
                row["snakemake_per_image_img_s"] = round(n / per_image[stage], 1)
                row["per_image_vs_raw"] = round(raw[stage] / per_image[stage], 2)
            rows.append(row)
    report("orchestration", rows, {"cores": CORES, "goal": "sharded_vs_raw >= 0.9"})


if __name__ == "__main__":
    args = [int(a) for a in sys.argv[1:]] or [200, 3152]
    main(*args)
