"""Bad input ends in one clear error when the DAG is built, before any job starts: the real
Snakefile planned (`snakemake -n`) on a tiny folder dataset damaged one way per case."""

import os
import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from workflow_runner import TINY, snakemake, unprivileged

from histo_wsss.demo import DemoSpec, generate

pytestmark = pytest.mark.integration

FOLDER = {"source": "folder", "images": "data/images", "labels": "data/labels.csv"}
MASKS = {**FOLDER, "masks": "data/masks"}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A tiny folder dataset (12 demo images of 64 px with masks), made once."""
    root = tmp_path_factory.mktemp("bad_input") / "data"
    generate(DemoSpec(n_images=12, size=64, test_fraction=0.25), root)
    return root


def _labels(workdir):
    return pd.read_csv(workdir / "data" / "labels.csv", dtype=str)


def _truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _empty_labels(workdir):
    (workdir / "data" / "labels.csv").write_bytes(b"")


def _braces_in_a_name(workdir):
    labels = _labels(workdir)
    os.rename(
        workdir / "data" / "images" / "demo_0003.png", workdir / "data" / "images" / "a{b}.png"
    )
    labels.loc[3, "Image Name"] = "a{b}.png"
    labels.to_csv(workdir / "data" / "labels.csv", index=False)


def _braces_in_a_new_image(workdir):
    (workdir / "new").mkdir()
    shutil.copy(workdir / "data" / "images" / "demo_0002.png", workdir / "new" / "x{y}.png")


def _noisy_mask(workdir):
    path = workdir / "data" / "masks" / "demo_0001.png"
    mask = np.asarray(Image.open(path)).copy()
    mask[(mask == 0) & (np.indices(mask.shape).sum(0) % 3 == 0)] = 2  # JPEG-like noise
    Image.fromarray(mask).save(path)


def _one_class(workdir):
    labels = _labels(workdir)
    labels["Majority Vote Label"] = "lesion"
    labels.to_csv(workdir / "data" / "labels.csv", index=False)


CASES = {
    "empty labels CSV": (
        FOLDER,
        {},
        _empty_labels,
        "data/labels.csv: the file is empty; expected a CSV with the columns "
        "['Image Name', 'Majority Vote Label']",
    ),
    "braces in an image name": (
        FOLDER,
        {},
        _braces_in_a_name,
        "row 5 ('a{b}.png'): image name holds '{' or '}', which Snakemake cannot carry in a "
        "file path: rename the file",
    ),
    "braces in a new image to predict": (
        FOLDER,
        {"predict": {"images": "new"}},
        _braces_in_a_new_image,
        "predict.images: new/x{y}.png holds '{' or '}', which Snakemake cannot carry in a file "
        "path",
    ),
    "braces in an extra image to pretrain on": (
        FOLDER,
        {"classifier": {"weights": "pretrained"}, "pretrain": {"extra_images": "new"}},
        _braces_in_a_new_image,
        "pretrain.extra_images: new/x{y}.png holds '{' or '}', which Snakemake cannot carry in "
        "a file path",
    ),
    "mask with stray values": (
        MASKS,
        {},
        _noisy_mask,
        "row 3 ('demo_0001.png'): mask data/masks/demo_0001.png has values 2 besides [0, 255]: "
        "a mask holds 0 and one positive value",
    ),
    "truncated image": (
        FOLDER,
        {},
        lambda w: _truncate(w / "data" / "images" / "demo_0004.png"),
        "row 6 ('demo_0004.png'): unreadable image data/images/demo_0004.png: ",
    ),
    "truncated mask": (
        MASKS,
        {},
        lambda w: _truncate(w / "data" / "masks" / "demo_0005.png"),
        "row 7 ('demo_0005.png'): unreadable mask data/masks/demo_0005.png: ",
    ),
    "one class": (
        FOLDER,
        {},
        _one_class,
        "data/labels.csv: each class needs at least 2 images outside Partition = test (to "
        "train and to validate the classifier on), but class 'normal' has 0",
    ),
    "unknown device": (
        FOLDER,
        {"classifier": {"device": "gpu"}},
        None,
        "'gpu' does not match '^(auto|cpu|cuda(:[0-9]+)?)$'",
    ),
    "unknown encoder": (
        FOLDER,
        {"segmentation": {"encoder": "resnet99"}},
        None,
        "'resnet99' is not one of ['resnet18', 'resnet34', 'resnet50', 'resnet101']",
    ),
    "demo with a positive class that is not a class": (
        {"source": "demo", "positive_class": "tumour"},
        {},
        None,
        "positive_class 'tumour' is not one of classes ['normal', 'lesion']",
    ),
    "pseudo-mask band above its threshold": (
        FOLDER,
        {"pseudo_masks": {"quantile": 0.5, "background_quantile": 0.6}},
        None,
        "pseudo_masks: background_quantile must be in (0, quantile = 0.5), got 0.6",
    ),
    "window stride wider than its window": (
        FOLDER,
        {"cam": {"window_size": 32, "window_stride": 48}},
        None,
        "cam.window_stride (48) needs a cam.window_size at least as large (got 32)",
    ),
    "untagged patches background with tags from the labels": (
        MASKS,
        {"pseudo_masks": {"negative_patches_background": True}},
        None,
        "pseudo_masks.negative_patches_background needs patches.tags: mask",
    ),
    "untagged patches background without masks": (
        FOLDER,
        {"pseudo_masks": {"negative_patches_background": True}, "patches": {"tags": "mask"}},
        None,
        "pseudo_masks.negative_patches_background tags patches from the real masks, and the "
        "dataset has none",
    ),
    "braces in a config path": (
        {**FOLDER, "images": "data/im{x}"},
        {},
        None,
        "dataset.images: 'data/im{x}' holds '{' or '}', which Snakemake cannot carry in a "
        "file path",
    ),
}


@pytest.mark.parametrize("case", CASES)
def test_bad_input_fails_at_dag_build_with_one_clear_error(data, tmp_path, case):
    dataset, sections, damage, message = CASES[case]
    shutil.copytree(data, tmp_path / "data")
    if damage:
        damage(tmp_path)
    config = {**TINY, **sections, "dataset": dataset}
    result = snakemake(tmp_path, "-n", config=config, check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert message in output, output[-3000:]
    assert "Traceback" not in output
    assert not (tmp_path / "results").exists()


def test_the_valid_tiny_dataset_plans(data, tmp_path):
    """The cases above fail because of their damage, not because of the dataset."""
    shutil.copytree(data, tmp_path / "data")
    snakemake(tmp_path, "-n", config={**TINY, "dataset": MASKS})


def test_a_results_folder_without_write_permission_fails_at_dag_build(data, tmp_path):
    """Checked at DAG build: the figures are written last, after hours of training."""
    shutil.copytree(data, tmp_path / "data")
    (tmp_path / "results" / "figures").mkdir(parents=True)
    (tmp_path / "results" / "figures").chmod(0o555)
    config = {**TINY, "dataset": FOLDER}
    result = snakemake(tmp_path, "-n", config=config, check=False, prefix=unprivileged())
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert (
        "no permission to write into results/figures: the workflow writes its outputs "
        "there; make them writable (chmod u+w) or set `results` to another folder" in output
    ), output[-3000:]
    assert "Traceback" not in output
