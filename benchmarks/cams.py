"""CAM generation: batched Smooth Grad-CAM++ (the `cams` rule's way) against per-image loops.

On N demo images of 224 px with a ResNet-18 (random weights unless a classifier checkpoint is
given: the speed does not depend on the weights), the `cam` config's defaults (8 noisy copies,
smoothed activations), on the CPU (and on CUDA when present):
  - batched: histo_wsss.cam.save_cams, `cam.batch_size` images per call (reads and saves too);
  - per image: the same Smooth Grad-CAM++ (compute_cams), one image per call;
  - pytorch-grad-cam's default usage: GradCAMPlusPlus built once, called once per image (one
    pass per image instead of 1 + 8: a lower bound on any per-image Smooth Grad-CAM++).
Also checks that batched and per-image maps agree.
Usage: python benchmarks/cams.py [N] [classifier.pt]   (default 64)
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from pytorch_grad_cam import GradCAMPlusPlus
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from common import MHIST_SIZE, REPO, dataset, report
from histo_wsss.cam import (
    compute_cams,
    image_seed,
    resnet_target_layer,
    save_cams,
)
from histo_wsss.classifier import build_model, load_checkpoint, preprocess
from histo_wsss.io import read_rgb

CLASSES = ("SSA",)


def _rate(n: int, start: float, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    return n / (time.perf_counter() - start)


def measure(model, items, cfg, device) -> list[dict]:
    model.to(device).eval()
    layer = resnet_target_layer(model)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        save_cams(model, items, tmp, cfg, device, CLASSES)
        rows.append(
            {
                "variant": f"batched (batch {cfg['batch_size']})",
                "images_per_s": _rate(len(items), start, device),
            }
        )
        batched = {n: np.load(Path(tmp) / f"{n}.npy")[0].astype(np.float32) for n, _, _ in items}

    diff, start = 0.0, time.perf_counter()
    for name, path, _ in items:
        cam = compute_cams(
            model, layer, preprocess(read_rgb(path)[None]), [0], n_samples=cfg["n_samples"],
            noise_sigma=cfg["noise_sigma"], seed=[image_seed(cfg["seed"], name)],
            smooth_activations=cfg["smooth_activations"],
        )[0]  # fmt: skip
        diff = max(diff, float(np.abs(cam - batched[name]).max()))
    rows.append(
        {"variant": "per image (same method)", "images_per_s": _rate(len(items), start, device)}
    )

    library = GradCAMPlusPlus(model, [layer])
    start = time.perf_counter()
    for _, path, _ in items:
        x = preprocess(read_rgb(path)[None]).to(device)
        library(input_tensor=x, targets=[ClassifierOutputTarget(0)])
    rows.append(
        {
            "variant": "pytorch-grad-cam GradCAMPlusPlus per image (1 pass)",
            "images_per_s": _rate(len(items), start, device),
        }
    )
    library.activations_and_grads.release()
    for row in rows:
        row["device"] = device.type
        row["images_per_s"] = round(row["images_per_s"], 2)
        row["vs_per_image"] = round(row["images_per_s"] / rows[1]["images_per_s"], 2)
    rows[0]["max_abs_diff_batched_vs_per_image"] = diff  # float16 storage: ~1e-3
    return rows


def main(n_images: int, checkpoint: str | None) -> None:
    torch.set_num_threads(2)
    cfg = yaml.safe_load((REPO / "config" / "config.yaml").read_text())["cam"]
    data = dataset(MHIST_SIZE)
    paths = sorted((data / "images").glob("*.png"))[:n_images]
    items = [(p.stem, str(p), CLASSES) for p in paths]  # K = 1: the one class's CAM
    model = load_checkpoint(checkpoint) if checkpoint else build_model("resnet18")
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    rows = [row for device in devices for row in measure(model, items, cfg, device)]
    report("cams", rows, {"images": n_images, "size_px": 224, "cam": cfg})


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 64, sys.argv[2] if len(sys.argv) > 2 else None)
