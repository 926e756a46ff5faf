"""How well do the localisation signals at hand rank GlaS's malignant glands? (docs/results.md)

Reads a finished GlaS run (default: the ablation's preset, ``results/glas_ablation_classifier``,
made by ``python benchmarks/glas_ablation.py --runs classifier``) and scores, on the train and
val positives only, each per-pixel signal against the real gland masks: the pixel ROC AUC and
the IoU of its 0.3-quantile mask (the preset's pseudo-mask threshold), mean over images.

Signals: the run's CAMs (``cam``); Grad-CAM++ of the run's classifier averaged over input scales
0.5, 1, 1.5 and 2 (``cam_multiscale``); the classifier's probability on sliding windows of its
training patch size, stride a quarter of it (``window``); the distance of each layer3 feature
to its 3 nearest features of the benign train images (``knn_to_benign``); hematoxylin density
(scikit-image's HED deconvolution, Gaussian sigma 8 px: ``hematoxylin``); the trained
segmentation network's probability (``segmentation``). Also the gland share per CAM decile, and
what the tissue mask leaves out: the share of non-tissue pixels that are gland, and the preset's
pseudo-mask recomputed on tissue masks whose holes up to N px are filled.

    python benchmarks/glas_localisation.py [results/glas_ablation_classifier]
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
from skimage import morphology
from skimage.color import rgb2hed
from sklearn.metrics import roc_auc_score

from common import REPO, report
from histo_wsss.cam import compute_cams, resnet_target_layer
from histo_wsss.classifier import load_checkpoint, preprocess
from histo_wsss.io import read_mask, read_rgb
from histo_wsss.pseudo_masks import refine_params
from histo_wsss.refine import refine

SCALES = (0.5, 1.0, 1.5, 2.0)
QUANTILE = 0.3
HOLES = (64, 1024, 4096, 16384)


def one(folder: Path, pattern: str) -> Path:
    """The one file of a sharded output matching ``pattern`` (shards/*/...)."""
    (path,) = folder.glob(f"shards/*/{pattern}")
    return path


def quantile_iou(signal: np.ndarray, truth: np.ndarray) -> float:
    mask = signal > np.quantile(signal, QUANTILE)
    return float((mask & truth).sum() / (mask | truth).sum())


class Signals:
    """The per-pixel signals of one run; see the module docstring."""

    def __init__(self, run: Path, split: pd.DataFrame, patch: int) -> None:
        self.run, self.patch = run, patch
        self.model = load_checkpoint(run / "classifier" / "model.pt")
        self.layer = resnet_target_layer(self.model, "layer3")
        self.features: torch.Tensor | None = None
        self.layer.register_forward_hook(lambda _m, _i, out: setattr(self, "features", out))
        benign = split.index[(split["split"] == "train") & (split["label"] == "benign")]
        self.bank = torch.cat([self.layer3(preprocess(self.image(n)[None]))[0] for n in benign])

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
        feats, grid = self.layer3(x)
        knn = torch.cdist(feats, self.bank).topk(3, largest=False).values.mean(1)
        probs = np.load(self.run / "segmentation" / "predictions" / "probs" / f"{name}.npy")
        return {
            "cam": np.load(one(self.run / "cam", f"cams/{name}.npy"))[0].astype(np.float32),
            "cam_multiscale": np.mean(cams, axis=0),
            "window": self.window(x),
            "knn_to_benign": up(knn.reshape(grid)),
            "hematoxylin": ndimage.gaussian_filter(rgb2hed(rgb)[..., 0], 8),
            "segmentation": np.asarray(probs, np.float32).reshape(-1, *size)[0],
        }

    def window(self, x: torch.Tensor) -> np.ndarray:
        """Mean sigmoid probability of the classifier over the windows covering each pixel."""
        (h, w), p = x.shape[2:], self.patch
        starts = [sorted({*range(0, max(n - p, 0) + 1, p // 4), max(n - p, 0)}) for n in (h, w)]
        corners = [(y, z) for y in starts[0] for z in starts[1]]
        with torch.no_grad():
            crops = torch.cat([x[:, :, y : y + p, z : z + p] for y, z in corners])
            probs = torch.sigmoid(self.model(crops)[:, 0]).numpy()
        total, count = np.zeros((h, w)), np.zeros((h, w))
        for (y, z), prob in zip(corners, probs, strict=True):
            total[y : y + p, z : z + p] += prob
            count[y : y + p, z : z + p] += 1
        return total / count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", nargs="?", default=REPO / "results" / "glas_ablation_classifier")
    run = Path(parser.parse_args().run)
    torch.set_num_threads(1)
    config = yaml.safe_load((REPO / "config" / "glas.yaml").read_text())
    split = pd.read_csv(run / "split" / "split.csv").set_index("name")
    signals = Signals(run, split, config["patches"]["size"])
    params = refine_params(config["pseudo_masks"])
    scores, deciles, holes = [], [], []
    chosen = split[(split["split"] != "test") & (split["label"] == "malignant")]
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
                    f"IoU, {QUANTILE} quantile": quantile_iou(values, truth),
                }
            )
        ranks = maps["cam"].ravel().argsort().argsort() * 10 // truth.size
        for d in range(10):
            share = truth.ravel()[ranks == d].mean()
            deciles.append({"split": row["split"], "decile": d, "gland": share})
        tissue = read_mask(one(run / "stain", f"tissue/{name}.png"))
        record = {"split": row["split"], "non-tissue share": 1 - tissue.mean()}
        record["gland share of non-tissue"] = truth[~tissue].mean() if (~tissue).any() else np.nan
        for area in HOLES:
            filled = morphology.remove_small_holes(tissue, max_size=area - 1)
            mask = refine(rgb, maps["cam"][None], [0], params, filled)[params.final_step] > 0
            record[f"IoU, holes <= {area} px filled"] = (mask & truth).sum() / (mask | truth).sum()
        holes.append(record)
    notes = {"run": str(run), "positives": chosen["split"].value_counts().to_dict()}
    tables = {
        "glas_localisation": pd.DataFrame(scores).groupby(["signal", "split"]).mean(),
        "glas_localisation_deciles": pd.DataFrame(deciles).pivot_table("gland", "split", "decile"),
        "glas_localisation_tissue": pd.DataFrame(holes).groupby("split").mean(),
    }
    for name, table in tables.items():
        table.columns = [str(c) for c in table.columns]
        report(name, table.round(3).reset_index().to_dict("records"), notes)


if __name__ == "__main__":
    main()
