"""Dataset validation: what reading every image and mask in full adds to the manifest build.

At DAG build a folder dataset's new or changed files are checked, every byte of them, so that a
truncated or corrupt file fails there and not in the first job that reads its pixels: a PNG
image by its chunk checksums (``verify``), an image of another format by decoding it, and a
mask by decoding it for its values (:meth:`histo_wsss.classes.LabelSpace.check_mask`), in
``histo_wsss.dataset.CHECK_THREADS`` threads. On a folder dataset of 224 px demo PNG images and
their masks (MHIST's size, 3,152 images):
  1. the manifest build: `snakemake --cores 1 results/data/manifest.csv` in a fresh folder
     (Snakemake's start-up, the DAG with every file checked, the dataset_manifest job);
  2. in one process, one thread, every image and mask opened for its header only (the check
     before), then read as the check now does (images verified, masks checked), and the images
     decoded in full for comparison: the differences are the added work;
  3. the whole validation (``load_labels``) in one thread and in ``CHECK_THREADS``: what the
     threads take off the added work's wall time.
The added costs are given as shares of the build without them (a dataset without masks, like
MHIST, pays only the images' share), in wall time and in CPU time (user + system: on a machine
that other jobs share, it varies less than the wall time). The fastest of the repeats of each.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import time

import pandas as pd
from PIL import Image

from common import MHIST_SIZE, WORK, dataset, folder_config, report, snakemake
from histo_wsss import dataset as validation  # the check itself
from histo_wsss.dataset import DatasetSpec, load_labels

MANIFEST = "results/data/manifest.csv"


def _clock() -> tuple[float, float]:
    """Wall time and this process's CPU time (every thread's, user + system) in seconds."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return time.perf_counter(), usage.ru_utime + usage.ru_stime


def _fastest(run, repeats: int) -> tuple[float, float]:
    """The least wall and the least CPU seconds of ``repeats`` calls of ``run()``."""
    times = []
    for _ in range(repeats):
        wall, cpu = _clock()
        run()
        end_wall, end_cpu = _clock()
        times.append((end_wall - wall, end_cpu - cpu))
    return min(w for w, _ in times), min(c for _, c in times)


def _each(files: list, read):
    """``read(image)`` on every file, opened as the check opens a PNG."""

    def run():
        for path in files:
            with Image.open(path, formats=("PNG",)) as img:
                read(img)

    return run


def _builds(data, n_images: int, repeats: int) -> tuple[float, float]:
    """The manifest build (wall, CPU of the snakemake process and its job)."""
    times = []
    for _ in range(repeats):
        workdir = WORK / f"validation_{n_images}"
        shutil.rmtree(workdir, ignore_errors=True)
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        wall, _ = snakemake(workdir, folder_config(data), "--cores", "1", MANIFEST)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
        times.append((wall, cpu))
    return min(w for w, _ in times), min(c for _, c in times)


def measure(n_images: int, repeats: int) -> list[dict]:
    data = dataset(n_images)
    build = _builds(data, n_images, repeats)
    table = pd.read_csv(data / "labels.csv")
    images = [data / "images" / n for n in table["Image Name"]]
    masks = [data / "masks" / n for n in table["Image Name"]]
    classes = ("normal", "lesion")
    spec = DatasetSpec(data / "images", data / "labels.csv", classes, "lesion", data / "masks")
    space = spec.label_space
    with Image.open(images[0]) as img:
        size = img.size  # every demo image has one size

    def check_masks():
        for path in masks:
            assert space.check_mask(path, size)[0] is None, path

    image_headers = _fastest(_each(images, lambda img: img.size), repeats)
    mask_headers = _fastest(_each(masks, lambda img: img.size), repeats)
    verified = _fastest(_each(images, lambda img: img.verify()), repeats)
    decoded = _fastest(_each(images, lambda img: img.load()), repeats)
    masks_checked = _fastest(check_masks, repeats)
    threads = validation.CHECK_THREADS
    validation.CHECK_THREADS = 1
    serial = _fastest(lambda: load_labels(spec), repeats)
    validation.CHECK_THREADS = threads
    pooled = _fastest(lambda: load_labels(spec), repeats)

    rows = []
    for i, clock in enumerate(("wall", "cpu")):
        images_verified = verified[i] - image_headers[i]
        masks_decoded = masks_checked[i] - mask_headers[i]
        added_serial = images_verified + masks_decoded
        # what the threads take off the validation is taken off its added work (the check
        # before was serial); never below nothing
        added = max(0.0, added_serial - max(0.0, serial[i] - pooled[i]))
        before = build[i] - added  # the manifest build with header-only checks
        rows.append(
            {
                "seconds": clock,
                "images": n_images,
                "manifest_build": round(build[i], 2),
                "validation_1_thread": round(serial[i], 2),
                f"validation_{threads}_threads": round(pooled[i], 2),
                "added_1_thread": round(added_serial, 2),
                f"added_{threads}_threads": round(added, 2),
                "share_1_thread": round(added_serial / before, 3),
                f"share_{threads}_threads": round(added / before, 3),
                "share_images_verified": round(images_verified / before, 3),
                "share_masks_decoded": round(masks_decoded / before, 3),
                "share_images_decoded": round((decoded[i] - image_headers[i]) / before, 3),
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("images", nargs="?", type=int, default=MHIST_SIZE, help="dataset size")
    parser.add_argument("--repeats", type=int, default=3, help="the fastest of these counts")
    args = parser.parse_args()
    goal = {"goal": "reading every file in full adds <= 10 % to the manifest build"}
    report("validation", measure(args.images, args.repeats), goal)


if __name__ == "__main__":
    main()
