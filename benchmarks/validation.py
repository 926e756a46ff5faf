"""Dataset validation: what reading every image and mask in full adds to the manifest build.

At DAG build a folder dataset's new or changed files are checked, every byte of them, so that a
truncated or corrupt file fails there and not in the first job that reads its pixels: a PNG
image by its chunk checksums (``verify``), an image of another format by decoding it, and a
mask by decoding it for its values (0 and one positive value). On a folder dataset of 224 px
demo PNG images and their masks (MHIST's size, 3,152 images):
  1. the manifest build: `snakemake --cores 1 results/data/manifest.csv` in a fresh folder
     (Snakemake's start-up, the DAG with every file checked, the dataset_manifest job);
  2. in one process, every image and mask opened for its header only (the check before), then
     read as the check now does (images verified, masks decoded), and the images decoded in
     full for comparison: the differences are the added costs, given as shares of the build
     without them (a dataset without masks, like MHIST, pays only the images' share).
The fastest of 3 repeats of each.
Usage: python benchmarks/validation.py [N]   (default: 3152)
"""

from __future__ import annotations

import shutil
import sys
import time

import pandas as pd
from PIL import Image

from common import MHIST_SIZE, WORK, dataset, folder_config, report, snakemake
from histo_wsss.dataset import DatasetSpec, _mask_problem, load_labels  # the check itself

REPEATS = 3  # the fastest of these (other work on the machine only adds time)


def _seconds(files: list, read) -> float:
    """Wall time of ``read(image)`` on every file, opened as the check opens it."""
    times = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        for path in files:
            with Image.open(path, formats=("PNG",)) as img:
                read(img)
        times.append(time.perf_counter() - start)
    return min(times)


def _mask_checks(masks: list, size: tuple[int, int]) -> float:
    """Wall time of the library's own mask check (open, decode, values) on every mask."""
    times = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        for path in masks:
            assert _mask_problem(path, size) is None, path
        times.append(time.perf_counter() - start)
    return min(times)


def measure(n_images: int) -> dict:
    data = dataset(n_images)
    builds = []
    for _ in range(REPEATS):
        workdir = WORK / f"validation_{n_images}"
        shutil.rmtree(workdir, ignore_errors=True)
        config = folder_config(data)
        builds.append(snakemake(workdir, config, "--cores", "1", "results/data/manifest.csv")[0])
    build = min(builds)
    table = pd.read_csv(data / "labels.csv")
    images = [data / "images" / n for n in table["Image Name"]]
    masks = [data / "masks" / n for n in table["Image Name"]]
    image_headers = _seconds(images, lambda img: img.size)
    mask_headers = _seconds(masks, lambda img: img.size)
    images_verified = _seconds(images, lambda img: img.verify()) - image_headers
    images_decoded = _seconds(images, lambda img: img.load()) - image_headers
    with Image.open(images[0]) as img:
        size = img.size  # every demo image has one size
    masks_decoded = _mask_checks(masks, size) - mask_headers
    classes = ("normal", "lesion")
    spec = DatasetSpec(data / "images", data / "labels.csv", classes, "lesion", data / "masks")
    start = time.perf_counter()
    load_labels(spec)
    validation = time.perf_counter() - start
    added = images_verified + masks_decoded
    before = build - added  # the manifest build with header-only checks
    return {
        "images": n_images,
        "manifest_build_s": round(build, 2),
        "validation_s": round(validation, 2),
        "added_s": round(added, 2),
        "added_share": round(added / before, 3),
        "images_verified_share": round(images_verified / before, 3),
        "masks_decoded_share": round(masks_decoded / before, 3),
        "images_decoded_share": round(images_decoded / before, 3),
    }


def main(n_images: int) -> None:
    goal = {"goal": "reading every file in full adds <= 10 % to the manifest build"}
    report("validation", [measure(n_images)], goal)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else MHIST_SIZE)
