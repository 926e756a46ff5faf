"""The real Snakefile, run by snakemake on a tiny demo dataset."""

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image
from report_html import html_tables, info_panel_bytes, report_items
from workflow_runner import REPO, TINY, snakemake

from histo_wsss.io import read_mask, read_rgb

pytestmark = pytest.mark.integration


@pytest.fixture
def run(tiny_run):
    return tiny_run


def test_every_stage_produced_its_outputs(run):
    results = run / "results"
    labels = pd.read_csv(results / "demo" / "labels.csv")
    assert len(labels) == 24
    split = pd.read_csv(results / "split" / "split.csv")
    assert list(split.columns) == ["name", "label", "split"]
    assert len(split) == 24 and set(split["split"]) == {"train", "val", "test"}
    # the demo's own Partition = test rows are exactly the test split
    demo_test = set(labels.loc[labels["Partition"] == "test", "Image Name"].str[:-4])
    assert set(split.loc[split["split"] == "test", "name"]) == demo_test

    qc = pd.read_csv(results / "stain" / "qc.csv", keep_default_na=False)
    assert sorted(qc["name"]) == sorted(split["name"])
    flagged = qc[qc["normalized"].astype(str) == "False"]
    assert len(flagged) >= 1 and flagged["reason"].str.contains("tissue fraction").all()
    shards = sorted((results / "stain" / "shards").iterdir())
    assert [p.name for p in shards] == ["0", "1"]
    images = {p.stem: p for s in shards for p in (s / "images").glob("*.png")}
    assert sorted(images) == sorted(split["name"])
    name = qc.loc[qc["normalized"].astype(str) == "True", "name"].iloc[0]
    original = read_rgb(results / "demo" / "images" / f"{name}.png")
    normalized = read_rgb(images[name])
    assert normalized.shape == original.shape and not np.array_equal(normalized, original)
    tissue = read_mask(images[name].parent.parent / "tissue" / f"{name}.png")
    assert tissue.shape == original.shape[:2] and 0.3 < tissue.mean() <= 1
    assert (results / "demo" / "contact_sheet.png").stat().st_size > 10_000


def test_classifier_cams_and_pseudo_masks(run):
    results = run / "results"
    split = pd.read_csv(results / "split" / "split.csv")
    metrics = pd.read_csv(results / "classifier" / "metrics.csv")
    assert list(metrics["epoch"]) == [1, 2]
    evaluation = json.loads((results / "classifier" / "evaluation.json").read_text())
    assert set(evaluation) == {"val", "test"}
    assert evaluation["test"]["n"] == (split["split"] == "test").sum()
    assert (results / "figures" / "classifier_learning_curve.png").stat().st_size > 10_000

    cams = {p.stem: p for p in (results / "cam" / "shards").glob("*/cams/*.npy")}
    assert sorted(cams) == sorted(split.loc[split["label"] == "lesion", "name"])  # positives
    cam = np.load(cams[min(cams)])
    assert cam.dtype == np.float16 and cam.shape == (1, 96, 96) and cam.max() == 1
    summary = json.loads((results / "cam" / "summary.json").read_text())
    assert summary["has_ground_truth"] and set(summary["peak_in_mask"]) == {"train", "val", "test"}

    masks = {p.stem: p for p in (results / "pseudo_masks" / "shards").glob("*/masks/*.png")}
    assert sorted(masks) == sorted(split["name"])
    positive = dict(zip(split["name"], split["label"] == "lesion", strict=True))
    for name, path in masks.items():
        values = np.unique(np.asarray(Image.open(path)))
        assert set(values) <= {0, 255}
        assert (255 in values) <= positive[name]  # negative images: all background
    quality = pd.read_csv(results / "pseudo_masks" / "quality_summary.csv")
    assert list(quality["split"].unique())[-1] == "all"
    everything = quality[quality["split"] == "all"]
    assert list(everything["step"]) == ["threshold", "morphology", "small_objects", "crf"]
    assert (everything["n_images"] == sum(positive.values())).all()
    assert "iou_pooled" in quality and "iou_micro" not in quality
    assert (results / "figures" / "pseudo_mask_steps.png").stat().st_size > 20_000


def test_segmentation_predictions_evaluation_and_figures(run):
    results = run / "results"
    split = pd.read_csv(results / "split" / "split.csv")
    metrics = pd.read_csv(results / "segmentation" / "metrics.csv")
    assert list(metrics["epoch"]) == [1, 2]
    log = (results / "logs" / "train_segmentation.log").read_text()
    assert "classifier/model.pt: loaded into the resnet18 encoder" in log  # the demo's default
    assert "epoch 1/2:" in log and "epoch 2/2:" in log and "\r" not in log  # no bar text
    assert "selecting the checkpoint on val_iou_vs_pseudo_pooled" in log
    assert list(metrics.columns[4:6]) == [
        "val_iou_vs_pseudo_pooled",
        "val_iou_vs_pseudo_positive_mean",
    ]
    predictions = pd.read_csv(results / "segmentation" / "predictions" / "predictions.csv")
    held_out = split[split["split"].isin(["val", "test"])]
    # every image: the review queue ranks the train images by their predictions
    assert sorted(predictions["name"]) == sorted(split["name"])
    name = held_out["name"].iloc[0]
    prob = np.load(results / "segmentation" / "predictions" / "probs" / f"{name}.npy")
    assert prob.dtype == np.float16 and prob.shape == (1, 96, 96)  # K = 1 class
    assert 0 <= prob.min() and prob.max() <= 1
    per_image = pd.read_csv(results / "segmentation" / "per_image.csv")
    assert {"pseudo_iou", "truth_iou", "head_prob"} <= set(per_image.columns)
    negatives = per_image[per_image["label"] == 0]
    assert (
        len(negatives) and negatives[["pseudo_iou", "truth_iou", "truth_dice"]].isna().all().all()
    )
    evaluation_log = (results / "logs" / "evaluate_segmentation.log").read_text()
    assert "test vs truth: IoU positive mean " in evaluation_log and "{" not in evaluation_log
    summary = json.loads((results / "segmentation" / "evaluation.json").read_text())
    assert set(summary) == {"val", "test"}
    assert {"pseudo", "truth", "negative_images_with_positive_pixels", "head_accuracy"} <= set(
        summary["test"]
    )
    # the K-class scores of the one class (K = 1) beside the binary ones, and the baselines
    truth = summary["test"]["truth"]
    assert list(truth["classes"]) == truth["confusion"]["labels"] == ["background", "lesion"]
    assert truth["classes"]["lesion"]["iou"] == pytest.approx(truth["pooled"]["iou"])
    assert truth["miou"] == pytest.approx(truth["pooled"]["miou"])
    assert set(truth["baselines"]) == {"majority_class", "most_frequent_tag"}
    assert 0 <= truth["baselines"]["most_frequent_tag"]["miou"] <= 1
    confusion = pd.read_csv(results / "segmentation" / "confusion.csv")
    assert list(confusion.columns) == [
        "name",
        "split",
        "reference",
        "truth_label",
        "pred_label",
        "pixels",
    ]
    test_truth = confusion[(confusion["split"] == "test") & (confusion["reference"] == "truth")]
    assert test_truth["pixels"].sum() == sum(map(sum, truth["confusion"]["matrix"]))
    table = pd.read_csv(results / "segmentation" / "metrics_table.csv")
    assert sorted(table["split"]) == ["test", "val"]
    for figure in (
        "segmentation_examples",
        "error_maps",
        "uncertainty_maps",
        "learning_curves",
        "metrics_table",
    ):
        assert (results / "figures" / f"{figure}.png").stat().st_size > 10_000, figure


@pytest.fixture(scope="module")
def report(tiny_run):
    """The tiny run's self-contained report, rendered once: ``{path: item}``."""
    snakemake(tiny_run, "--report", "report.html")
    return report_items(tiny_run / "report.html")


# Every table of the report: its item's name and the result it shows.
REPORT_TABLES = {
    "stain_qc": "stain/qc.csv",
    "classifier_evaluation": "classifier/evaluation.json",
    "cam_summary": "cam/summary.json",
    "pseudo_mask_quality": "pseudo_masks/quality.csv",
    "pseudo_mask_quality_summary": "pseudo_masks/quality_summary.csv",
    "pseudo_mask_class_scores": "pseudo_masks/class_scores.csv",
    "segmentation_evaluation": "segmentation/evaluation.json",
    "metrics_table": "segmentation/metrics_table.csv",
    "segmentation_per_image": "segmentation/per_image.csv",
}
REPORT_FIGURES = {
    "contact_sheet",
    "stain_normalization",
    "classifier_learning_curve",
    "pseudo_mask_steps",
    "segmentation_examples",
    "error_maps",
    "uncertainty_maps",
    "learning_curves",
    "metrics_table",
}


def test_the_report_shows_every_table_and_figure_captioned_with_a_short_info_panel(run, report):
    shown = {(Path(p).stem, item["mime_type"]) for p, item in report.items()}
    assert shown == {(t, "text/html") for t in REPORT_TABLES} | {
        (f, "image/png") for f in REPORT_FIGURES
    }  # nothing that only downloads
    for path, item in report.items():
        assert item["caption"].strip(), path
        assert info_panel_bytes(item) < 2048, (path, item["job_properties"]["params"][:300])
        assert "results/" not in item["job_properties"]["params"], path  # names, not paths
        if item["mime_type"] != "text/html":
            continue
        source = run / "results" / REPORT_TABLES[Path(path).stem]
        [rows] = html_tables(item["content"].decode())
        if source.suffix == ".csv":
            table = pd.read_csv(source).drop(columns="seconds", errors="ignore")  # wall times
            if Path(path).stem == "metrics_table":  # two splits, many scores: a score per row
                assert rows[0] == ["split", *table["split"]], path
                assert [row[0] for row in rows[1:]] == list(table.columns[1:]), path
            else:
                assert rows[0] == list(table.columns) and len(rows) == len(table) + 1, path
        else:
            splits = [s for s in ("train", "val", "test") if f'"{s}":' in source.read_text()]
            assert rows[0] == ["metric", *splits] and len(rows) > 2, path


def test_the_pseudo_mask_steps_caption_names_the_configured_final_step(report):
    final = yaml.safe_load((REPO / "config" / "config.yaml").read_text())["pseudo_masks"]
    final = TINY.get("pseudo_masks", {}).get("final_step", final["final_step"])
    [caption] = [i["caption"] for p, i in report.items() if p.endswith("pseudo_mask_steps.png")]
    assert f"the mask after <strong>{final}</strong>" in caption


def test_the_reports_description_names_the_configured_cam_method(run, report):
    method = yaml.safe_load((REPO / "config" / "config.yaml").read_text())["cam"]["method"]
    text = (run / "report.html").read_text()
    described = r"class activation maps of the ground-truth class(\s|\\n)+\(" + re.escape(method)
    assert re.search(described + r"\)", text)  # whole images: no window named


def test_the_report_carries_the_stylesheet_that_shows_tall_figures_from_their_top(run, report):
    # the workflow profile's report-stylesheet (docs/usage.md#the-report)
    css = (REPO / "workflow" / "report" / "report.css").read_text()
    assert "align-items: safe center" in css and css in (run / "report.html").read_text()
    examples = {Path(p).stem: i["caption"] for p, i in report.items() if "/figures/" in p}
    assert [k for k in ("Figure 2", "Figure 3", "Figure 4") if k in examples["error_maps"]] == [
        "Figure 3"
    ]  # each example figure has a caption of its own


def test_the_segmentation_checkpoint_holds_no_path_of_the_run_folder(run):
    import torch

    config = torch.load(run / "results" / "segmentation" / "model.pt", weights_only=True)["config"]
    assert config["encoder_weights"] == "model.pt"  # the classifier's checkpoint, by name
    assert "results" not in repr(config) and str(run) not in repr(config)


def test_a_deleted_figure_comes_back_byte_identical(run):
    figure = run / "results" / "figures" / "error_maps.png"
    before = figure.read_bytes()
    figure.unlink()
    plan = snakemake(run, "-n").stdout
    assert "figure_examples" in plan and "train_segmentation" not in plan
    snakemake(run, "--cores", "1")
    assert figure.read_bytes() == before


def test_every_job_wrote_a_log(run):
    logs = {
        p.relative_to(run / "results" / "logs").as_posix()
        for p in (run / "results" / "logs").rglob("*.log")
    }
    assert {"demo_dataset.log", "split.log", "stain_target.log", "stain_qc.log"} <= logs
    assert {"normalize_stain/0.log", "normalize_stain/1.log"} <= logs
    assert {"train_classifier.log", "cams/0.log", "cams/1.log", "pseudo_masks/2.log"} <= logs
    assert "kept their colours" in (run / "results" / "logs" / "stain_qc.log").read_text()


def test_split_is_byte_identical_across_runs(run, tmp_path):
    snakemake(tmp_path, "--cores", "1", "results/split/split.csv")
    for rel in ("split/split.csv", "demo/labels.csv", "demo/images/demo_0003.png"):
        assert (tmp_path / "results" / rel).read_bytes() == (run / "results" / rel).read_bytes()


def _folder_config(run, tmp_path, labels):
    shutil.copytree(run / "results" / "demo", tmp_path / "data")
    labels.to_csv(tmp_path / "data" / "labels.csv", index=False)
    return {
        **TINY,
        "dataset": {
            "source": "folder",
            "images": "data/images",
            "labels": "data/labels.csv",
            "masks": "data/masks",
        },
    }


def test_folder_dataset_is_planned_per_image(run, tmp_path):
    labels = pd.read_csv(run / "results" / "demo" / "labels.csv")
    out = snakemake(tmp_path, "-n", config=_folder_config(run, tmp_path, labels)).stdout
    assert "demo_dataset" not in out
    assert "normalize_stain" in out and "data/images/demo_0005.png" in out


def test_bad_dataset_fails_at_dag_build_listing_the_rows(run, tmp_path):
    labels = pd.read_csv(run / "results" / "demo" / "labels.csv")
    labels.loc[2, "Majority Vote Label"] = "tumour"
    labels.loc[5, "Image Name"] = "missing.png"
    result = snakemake(tmp_path, "-n", config=_folder_config(run, tmp_path, labels), check=False)
    message = result.stdout + result.stderr
    assert result.returncode != 0
    assert "2 problem(s)" in message
    assert "row 4 ('demo_0002.png'): unknown label 'tumour'" in message
    assert "row 7 ('missing.png'): image file not found" in message
    assert not (tmp_path / "results").exists()


def test_jobs_import_the_library_of_the_checkout_they_run_from(tmp_path):
    """A second copy of the repository run with this environment, whose installed histo_wsss
    is this checkout's: the jobs import the copy's library, not the installed one."""
    clone = tmp_path / "clone"
    ignored = (".*", "results", "*.egg-info", "__pycache__", "benchmarks", "docs")
    shutil.copytree(REPO, clone, ignore=shutil.ignore_patterns(*ignored))
    snakemake(tmp_path / "run", "--cores", "1", "results/split/split.csv", repo=clone)
    for job in ("demo_dataset", "split"):
        log = (tmp_path / "run" / "results" / "logs" / f"{job}.log").read_text()
        assert f"job started (histo_wsss from {clone}/src/histo_wsss)" in log.splitlines()[0]


def test_an_encoder_unlike_the_classifier_fails_at_dag_build(tmp_path):
    config = {**TINY, "classifier": {**TINY["classifier"], "arch": "resnet34"}}
    result = snakemake(tmp_path, "-n", config=config, check=False)
    assert result.returncode != 0
    assert (
        "segmentation.encoder_weights is 'classifier' but the classifier is a resnet34 and the "
        "segmentation encoder a resnet18" in result.stdout + result.stderr
    )
