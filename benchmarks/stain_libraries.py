"""Macenko stain normalization: this project's (torchstain, numpy backend, with its tissue mask
and fallbacks) against staintools' Macenko, on the same demo images and the same reference.

Both are fitted to one reference image, then normalize N images (224 px) one by one on one
core: ms/image for each, and how far apart their outputs are (CIEDE2000 colour difference per
tissue pixel: the largest, the 99th percentile, the mean; and the largest RGB difference).
Needs the bench extra: pip install -e ".[bench]" (staintools, spams-bin).
Usage: python benchmarks/stain_libraries.py [N]   (default 200)
"""

from __future__ import annotations

import sys
import time

import numpy as np
from skimage.color import deltaE_ciede2000, rgb2lab

from common import MHIST_SIZE, dataset, report
from histo_wsss.io import read_rgb
from histo_wsss.stain import StainParams, fit_stains, normalize

try:
    import staintools
except ImportError as err:
    sys.exit(f"staintools is missing ({err}): pip install -e '.[bench]'")


def _timed(fn, images):
    outputs, start = [], time.perf_counter()
    for rgb in images:
        outputs.append(fn(rgb))
    return outputs, 1000 * (time.perf_counter() - start) / len(images)


def main(n_images: int) -> None:
    import torch

    torch.set_num_threads(1)
    data = dataset(MHIST_SIZE)
    paths = sorted((data / "images").glob("*.png"))[:n_images]
    images = [read_rgb(p) for p in paths]
    reference = images[0]
    params = StainParams()

    ours_target = fit_stains(reference, params)
    theirs = staintools.StainNormalizer(method="macenko")
    theirs.fit(reference)

    ours, ours_ms = _timed(lambda rgb: normalize(rgb, ours_target, params), images)
    theirs_out, theirs_ms = _timed(theirs.transform, images)

    delta, rgb_diff, fallbacks = [], 0, 0
    for (out, tissue, record), other in zip(ours, theirs_out, strict=True):
        if not record["normalized"]:
            fallbacks += 1
            continue
        d = deltaE_ciede2000(rgb2lab(out), rgb2lab(other))[tissue]
        delta.append(d)
        diff = np.abs(out.astype(int) - other.astype(int))[tissue]
        rgb_diff = max(rgb_diff, int(diff.max()))
    delta = np.concatenate(delta)
    rows = [
        {"method": "histo_wsss (torchstain numpy + tissue mask + QC)", "ms_per_image": ours_ms},
        {"method": "staintools 2.1.2 Macenko (spams lasso)", "ms_per_image": theirs_ms},
    ]
    for row in rows:
        row["ms_per_image"] = round(row["ms_per_image"], 1)
    notes = {
        "images": n_images,
        "size_px": images[0].shape[1],
        "speed_ratio_staintools_over_ours": round(theirs_ms / ours_ms, 2),
        "ours_fallbacks": fallbacks,
        "delta_e2000_max": round(float(delta.max()), 2),
        "delta_e2000_p99": round(float(np.percentile(delta, 99)), 2),
        "delta_e2000_mean": round(float(delta.mean()), 2),
        "rgb_abs_diff_max": rgb_diff,
    }
    report("stain_libraries", rows, notes)
    print({k: v for k, v in notes.items()})


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 200)
