"""How well do the localisation signals at hand rank GlaS's glands? (docs/results.md)

Reads a finished run of a GlaS preset (``--preset glas``, malignant glands, default folder the
ablation's ``results/glas_ablation_classifier``, made by ``python benchmarks/glas_ablation.py
--runs classifier``; ``--preset glas_glands``, every gland, default folder
``results/glas_glands_ablation_classifier``) and scores, on the train and val positives only,
each per-pixel signal against the real masks: the pixel ROC AUC, and the IoU of its mask above
the preset's pseudo-mask quantile (over the whole image, no tissue mask), mean over images.

Signals: the run's CAMs (``cam``); Grad-CAM++ of the run's classifier averaged over input scales
0.5, 1, 1.5 and 2 (``cam_multiscale``); Grad-CAM++ of each window of the classifier's patch size
(stride half of it), times the classifier's probability on it, averaged where windows overlap
(``cam_windows``: the workflow's ``cam.window_size``, :func:`histo_wsss.cam.window_cams`); the
classifier's probability on sliding windows of its training patch size, stride a quarter of it
(``window``); the run's CAMs averaged within each SLIC superpixel of the image (about
``SUPERPIXEL_PX`` px each, compactness 30: ``cam_superpixels``, CAMs that follow the tissue's
edges instead of the windows'); the distance of each layer3 feature to its 3 nearest
features of the negative train images (``knn_to_negatives``; presets with negatives only);
hematoxylin density (scikit-image's HED deconvolution, Gaussian sigma 8 px: ``hematoxylin``);
the trained segmentation network's probability (``segmentation``). Also the mask's share per
CAM decile, and what the tissue mask leaves out: the share of non-tissue pixels inside the
mask; and the preset's pseudo-mask (IoU, and mIoU with the background) recomputed on tissue
masks whose holes smaller than N px are filled (``tissue_hole_px: N``), and with the image's
negative patches (no tag; tags from masks) as background.

    python benchmarks/glas_localisation.py [--preset glas] [run folder]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
import yaml
from scipy import ndimage
from skimage.color import rgb2hed
from skimage.segmentation import slic
from sklearn.metrics import roc_auc_score

from common import REPO, report
from histo_wsss.cam import compute_cams, resnet_target_layer, window_cams
from histo_wsss.classifier import load_checkpoint, preprocess
from histo_wsss.io import read_mask, read_rgb
from histo_wsss.patches import grid
from histo_wsss.pseudo_masks import box_mask, negative_patch_boxes, refine_params
from histo_wsss.refine import refine
from histo_wsss.stain import fill_holes

SCALES = (0.5, 1.0, 1.5, 2.0)
# Grad-CAM++ in windows (`cam.window_size` = the patch size, stride half of it): the workflow's
WINDOWS = {"method": "gradcam++", "n_samples": 1, "noise_sigma": 0.0, "smooth_activations": False}
WINDOWS |= {"batch_size": 64, "seed": 0}
HOLES = (64, 1024, 4096, 16384)
SUPERPIXEL_PX = 300  # SLIC's mean superpixel area: 17 x 17 px, a few nuclei at half scale


def one(folder: Path, pattern: str) -> Path:
    """The one file of a sharded output matching ``pattern`` (shards/*/...)."""
    (path,) = folder.glob(f"shards/*/{pattern}")
    return path


def quantile_iou(signal: np.ndarray, truth: np.ndarray, quantile: float) -> float:
    mask = signal > np.quantile(signal, quantile)
    return float((mask & truth).sum() / (mask | truth).sum())


def ious(mask: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """IoU of ``mask`` against ``truth``, and the mean of that and the background's IoU."""
    iou = (mask & truth).sum() / (mask | truth).sum()
    background = (~mask & ~truth).sum() / (~mask | ~truth).sum()
    return {"IoU": iou, "mIoU (with background)": (iou + background) / 2}


def overlap_mean(shape: tuple[int, int], size: int, at: list, values: list) -> np.ndarray:
    """Per pixel, the mean of ``values`` (one per window) of the ``size`` windows over it."""
    total, count = np.zeros(shape), np.zeros(shape)
    for (y, z), value in zip(at, values, strict=True):
        total[y : y + size, z : z + size] += value
        count[y : y + size, z : z + size] += 1
    return total / count


def superpixel_mean(signal: np.ndarray, rgb: np.ndarray) -> np.ndarray:
    """``signal`` averaged within each SLIC superpixel of ``rgb`` (about ``SUPERPIXEL_PX`` px)."""
    n_segments = max(1, rgb.shape[0] * rgb.shape[1] // SUPERPIXEL_PX)
    labels = slic(rgb, n_segments=n_segments, compactness=30, start_label=0)
    means = np.bincount(labels.ravel(), signal.ravel()) / np.bincount(labels.ravel())
    return means[labels].astype(np.float32)


class Signals:
    """The per-pixel signals of one run; see the module docstring."""

    def __init__(self, run: Path, negatives: list[str], patch: int) -> None:
        self.run, self.patch = run, patch
        self.model = load_checkpoint(run / "classifier" / "model.pt")
        self.layer = resnet_target_layer(self.model, "layer3")
        self.features: torch.Tensor | None = None
        self.layer.register_forward_hook(lambda _m, _i, out: setattr(self, "features", out))
        feats = [self.layer3(preprocess(self.image(n)[None]))[0] for n in negatives]
        self.bank = torch.cat(feats) if feats else None

    def image(self, name: str) -> np.ndarray:
        return read_rgb(one(self.run / "stain", f"images/{name}.png"))

    def layer3(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        with torch.no_grad():
            self.model(x)
        f = F.normalize(self.features, dim=1)[0]
        return f.flatten(1).T, tuple(f.shape[1:])

    def __call__(self, name: str, rgb: np.ndarray) -> dict[str, np.ndarray]:
        x = preprocess(rgb[None])
        size = tuple(x.shape[2:])
        up = lambda m: F.interpolate(m[None, None], size=size, mode="bilinear")[0, 0].numpy()  # noqa: E731
        cams = [
            up(torch.from_numpy(compute_cams(self.model, [self.layer], xs, [0], "gradcam++")[0]))
            for xs in (F.interpolate(x, scale_factor=s, mode="bilinear") for s in SCALES)
        ]
        probs = np.load(self.run / "segmentation" / "predictions" / "probs" / f"{name}.npy")
        cam = np.load(one(self.run / "cam", f"cams/{name}.npy"))[0].astype(np.float32)
        signals = {
            "cam": cam,
            "cam_superpixels": superpixel_mean(cam, rgb),
            "cam_multiscale": np.mean(cams, axis=0),
            "cam_windows": window_cams(
                self.model, [self.layer], rgb, [0], self.patch, self.patch // 2, WINDOWS, name
            )[0],
            "window": self.window(x),
            "hematoxylin": ndimage.gaussian_filter(rgb2hed(rgb)[..., 0], 8),
            "segmentation": np.asarray(probs, np.float32).reshape(-1, *size)[0],
        }
        if self.bank is not None:
            feats, cells = self.layer3(x)
            knn = torch.cdist(feats, self.bank).topk(3, largest=False).values.mean(1)
            signals["knn_to_negatives"] = up(knn.reshape(cells))
        return signals

    def probabilities(self, crops: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            return torch.sigmoid(self.model(crops)[:, 0]).numpy()

    def window(self, x: torch.Tensor) -> np.ndarray:
        """Mean sigmoid probability of the classifier over the patch-size windows (every quarter
        of a patch) covering each pixel."""
        p, (height, width) = self.patch, x.shape[2:]
        at = [(y, z) for y in grid(height, p, p // 4) for z in grid(width, p, p // 4)]
        crops = torch.cat([x[:, :, y : y + p, z : z + p] for y, z in at])
        return overlap_mean((height, width), p, at, list(self.probabilities(crops)))


DEFAULT_RUN = {"glas": "glas_ablation_classifier", "glas_glands": "glas_glands_ablation_classifier"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="glas", choices=tuple(DEFAULT_RUN))
    parser.add_argument("run", nargs="?", help="results folder (default: the ablation's preset)")
    args = parser.parse_args()
    run = Path(args.run or REPO / "results" / DEFAULT_RUN[args.preset])
    torch.set_num_threads(1)
    config = yaml.safe_load((REPO / "config" / f"{args.preset}.yaml").read_text())
    positive = config["dataset"]["positive_class"]
    split = pd.read_csv(run / "split" / "split.csv").set_index("name")
    negatives = split.index[(split["split"] == "train") & (split["label"] != positive)]
    size = config["patches"]["size"]
    signals = Signals(run, list(negatives), size)
    params = refine_params(config["pseudo_masks"])
    quantile = params.quantile
    patches = pd.concat(map(pd.read_csv, sorted(run.glob("patches/shards/*/patches.csv"))))
    negative_patches = negative_patch_boxes(patches, size)
    scores, deciles, shares, masks = [], [], [], []
    chosen = split[(split["split"] != "test") & (split["label"] == positive)]
    for name, row in chosen.iterrows():
        truth = read_mask(one(run / "truth", f"masks/{name}.png"))
        rgb = signals.image(name)
        maps = signals(name, rgb)
        for signal, values in maps.items():
            scores.append(
                {
                    "split": row["split"],
                    "signal": signal,
                    "AUC": roc_auc_score(truth.ravel(), values.ravel()),
                    f"IoU, {quantile} quantile": quantile_iou(values, truth, quantile),
                }
            )
        ranks = maps["cam"].ravel().argsort().argsort() * 10 // truth.size
        for d in range(10):
            share = truth.ravel()[ranks == d].mean()
            deciles.append({"split": row["split"], "decile": d, "in mask": share})
        tissue = read_mask(one(run / "stain", f"tissue/{name}.png"))
        record = {"split": row["split"], "non-tissue share": 1 - tissue.mean()}
        record["mask share of non-tissue"] = truth[~tissue].mean() if (~tissue).any() else np.nan
        shares.append(record)
        # the image's negative patches (tags from masks: no class) are background for certain
        negative = box_mask(tissue.shape, negative_patches.get(name, ()))
        regions = {f"tissue_hole_px: {a}": fill_holes(tissue, a) for a in HOLES}
        regions["negative patches background"] = tissue & ~negative
        for region, inside in regions.items():
            mask = refine(rgb, maps["cam"][None], [0], params, inside)[params.final_step] > 0
            masks.append({"split": row["split"], "pseudo-mask tissue": region, **ious(mask, truth)})
    notes = {"run": str(run), "positives": chosen["split"].value_counts().to_dict()}
    tables = {
        f"{args.preset}_localisation": pd.DataFrame(scores).groupby(["signal", "split"]).mean(),
        f"{args.preset}_localisation_deciles": pd.DataFrame(deciles).pivot_table(
            "in mask", "split", "decile"
        ),
        f"{args.preset}_localisation_tissue": pd.DataFrame(shares).groupby("split").mean(),
        f"{args.preset}_localisation_pseudo_masks": pd.DataFrame(masks)
        .groupby(["pseudo-mask tissue", "split"], sort=False)
        .mean(),
    }
    for name, table in tables.items():
        table.columns = [str(c) for c in table.columns]
        report(name, table.round(3).reset_index().to_dict("records"), notes)


if __name__ == "__main__":
    main()
