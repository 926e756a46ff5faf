"""K = 3 classes against K = 1, measured side by side in one run (issue 15's target: within 20 %).

  1. DAG build: `snakemake -n` with nothing built on a folder dataset of N demo images of 224 px:
     the binary demo's (MHIST's format, K = 1) and the multi-class demo's (a `Tags` column and
     class-index masks, 3 classes), the two alternated R times; the best wall time of each (the
     DAG validates every labels row and mask at build, as a first run does).
  2. CAMs: histo_wsss.cam.save_cams, the `cam` defaults of config/config.yaml, a ResNet-18 of K
     outputs (random weights: the speed does not depend on them), on M tagged images of each
     demo (K = 1: its positive images, one CAM each; K = 3: every image, a CAM per tag).
  3. Pseudo-mask refinement: histo_wsss.pseudo_masks.refine_images on those CAMs with the
     `pseudo_masks` defaults (steps kept, each scored against the real mask): K = 1 with
     `background: threshold`; K = 3 with threshold and with tissue (every tissue pixel a class).
Each timing is the best of R runs, K = 1 and K = 3 alternated. Images per second for each; for
the CAMs also CAMs (image, tag) per second: an image's tags share its noisy forward passes
(histo_wsss.cam's "Cost"), so an extra tag costs only what follows the target layer.
Usage: python benchmarks/multiclass.py [N] [M] [R]   (default 1000 64 3; N >= 3 M: the binary
demo's tagged images are its positive half)
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
import yaml

from common import REPO, WORK, dataset, folder_config, job_count, report, snakemake
from histo_wsss.cam import save_cams
from histo_wsss.classes import LabelSpace
from histo_wsss.classifier import build_model
from histo_wsss.demo import COLUMNS, TAGS_COLUMNS, DemoSpec, generate
from histo_wsss.io import read_rgb, write_png
from histo_wsss.pseudo_masks import Item, refine_images
from histo_wsss.refine import RefineParams
from histo_wsss.stain import tissue_mask

CLASSES = ("tumor", "stroma", "lymphocytes")  # config/demo_multiclass.yaml's
BINARY = LabelSpace(("lesion",))
TISSUES = LabelSpace(CLASSES, ignore_index=255)


def multiclass_dataset(n_images: int, size: int = 224) -> Path:
    """The multi-class demo's folder dataset of ``n_images`` images, made once under WORK."""
    root = WORK / f"multiclass_{n_images}_{size}"
    if not (root / "labels.csv").is_file():
        print(f"rendering {n_images} multi-class demo images of {size} px ...", flush=True)
        generate(DemoSpec(n_images=n_images, size=size, seed=0, tissues=CLASSES), root)
    return root


def configs(n_images: int) -> dict[int, dict]:
    """The `snakemake -n` config of each K."""
    tags = {
        "format": "tags",
        "classes": list(CLASSES),
        "ignore_index": 255,
        "positive_class": None,
    }
    return {
        1: folder_config(dataset(n_images)),
        3: folder_config(
            multiclass_dataset(n_images), dataset=tags, pseudo_masks={"background": "tissue"}
        ),
    }


def dag_rows(n_images: int, repeats: int) -> list[dict]:
    seconds: dict[int, list[float]] = {1: [], 3: []}
    jobs = {}
    for _ in range(repeats):
        for k, config in configs(n_images).items():
            workdir = WORK / f"multiclass_dag_{k}"
            shutil.rmtree(workdir, ignore_errors=True)
            wall, out = snakemake(workdir, config, "-n")
            seconds[k].append(wall)
            jobs[k] = job_count(out)
    return [
        {
            "stage": "DAG build (snakemake -n)",
            "K": k,
            "images": n_images,
            "jobs": jobs[k],
            "seconds": round(min(s), 2),
        }
        for k, s in seconds.items()
    ]


def items_of(root: Path, n_images: int) -> list[tuple[str, str, list[str], str]]:
    """``(name, image, tags, mask)`` of the first ``n_images`` tagged images of a demo dataset
    (binary: its positive images, tagged with the positive class)."""
    table = pd.read_csv(root / "labels.csv")
    if TAGS_COLUMNS[1] in table:
        tags = table[TAGS_COLUMNS[1]].str.split(";").tolist()
    else:
        table = table[table[COLUMNS[1]] == DemoSpec().positive_class]
        tags = [BINARY.classes] * len(table)
    names = table[COLUMNS[0]].tolist()
    return [
        (Path(n).stem, str(root / "images" / n), t, str(root / "masks" / n))
        for n, t in zip(names[:n_images], tags[:n_images], strict=True)
    ]


def refine_inputs(items: list, space: LabelSpace, out: Path) -> list[Item]:
    """The refinement's items of ``(name, image, tags, mask)`` items, their tissue masks and
    real label maps written once under ``out``, their CAMs read from ``out / "cams"``."""
    index = {c: i for i, c in enumerate(space.classes)}
    refine_items = []
    for name, image, tags, mask in items:
        tissue, truth = out / "tissue" / f"{name}.png", out / "truth" / f"{name}.png"
        write_png(tissue, tissue_mask(read_rgb(image)))
        space.write_labels(truth, space.read_truth(mask))
        cams = str(out / "cams" / f"{name}.npy")
        refine_items.append(
            Item(name, image, str(tissue), cams, tuple(index[t] for t in tags), str(truth))
        )
    return refine_items


def _best(seconds: dict, key: tuple, start: float) -> None:
    seconds[key] = min(seconds.get(key, float("inf")), time.perf_counter() - start)


def stage_rows(roots: dict[int, Path], n_images: int, repeats: int) -> list[dict]:
    """CAMs and pseudo-masks of each K, the two alternated ``repeats`` times; the best times."""
    torch.set_num_threads(2)
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    cam_cfg = config["cam"]
    refine_cfg = {
        k: v for k, v in config["pseudo_masks"].items() if k not in ("save_steps", "shards")
    }
    spaces = {1: BINARY, 3: TISSUES}
    items = {k: items_of(roots[k], n_images) for k in spaces}
    models = {k: build_model("resnet18", None, n_classes=k) for k in spaces}
    seconds: dict[tuple[str, int], float] = {}
    n_cams = {}
    with tempfile.TemporaryDirectory() as tmp:
        refine_items = {
            k: refine_inputs(items[k], space, Path(tmp) / f"k{k}") for k, space in spaces.items()
        }
        for _ in range(repeats):
            for k, space in spaces.items():
                out = Path(tmp) / f"k{k}"
                shutil.rmtree(out / "cams", ignore_errors=True)
                start = time.perf_counter()
                peaks = save_cams(
                    models[k],
                    [i[:3] for i in items[k]],
                    out / "cams",
                    cam_cfg,
                    torch.device("cpu"),
                    space.classes,
                )
                _best(seconds, ("CAMs (save_cams)", k), start)
                n_cams[k] = len(peaks)
                for background in ("threshold", "tissue") if k > 1 else ("threshold",):
                    params = RefineParams.from_config(refine_cfg | {"background": background})
                    masks = out / "pseudo_masks" / background
                    shutil.rmtree(masks, ignore_errors=True)
                    start = time.perf_counter()
                    refine_images(refine_items[k], params, masks, True, space)
                    stage = f"pseudo-masks (refine_images, background {background})"
                    _best(seconds, (stage, k), start)
    rows = []
    for (stage, k), best in seconds.items():
        row = {"stage": stage, "K": k, "images": len(items[k]), "seconds": round(best, 2)}
        row["images_per_s"] = len(items[k]) / best
        if stage.startswith("CAMs"):
            row |= {"cams": n_cams[k], "cams_per_s": n_cams[k] / best}
        rows.append(row)
    return rows


def main(n_dag: int, n_stage: int, repeats: int) -> None:
    rows = dag_rows(n_dag, repeats)
    rows += stage_rows({1: dataset(n_dag), 3: multiclass_dataset(n_dag)}, n_stage, repeats)
    for row in rows:
        stage = row["stage"].split(" (")[0]
        base = next(r for r in rows if r["K"] == 1 and r["stage"].startswith(stage))
        if "images_per_s" in row:
            row["K3_vs_K1"] = round(row["images_per_s"] / base["images_per_s"], 3)
            row["images_per_s"] = round(row["images_per_s"], 2)
            if "cams_per_s" in row:
                row["cams_per_s"] = round(row["cams_per_s"], 2)
        else:
            row["K3_vs_K1"] = round(base["seconds"] / row["seconds"], 3)  # speed: >= 0.8 meets it
    report("multiclass", rows, {"dag_images": n_dag, "stage_images": n_stage, "repeats": repeats})


if __name__ == "__main__":
    args = [int(a) for a in sys.argv[1:]]
    main(*(args + [1000, 64, 3][len(args) :]))
