"""The presets: the paper's MHIST preset, the GlaS preset on real tissue, the supervised bound."""

import copy
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image
from snakemake.utils import validate
from workflow_runner import REPO, snakemake

from histo_wsss.classes import LabelSpace
from histo_wsss.dataset import DatasetSpec
from histo_wsss.io import read_mask, read_rgb, scaled_size, write_png
from histo_wsss.patches import PatchParams, cut

SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"
MHIST = REPO / "config" / "mhist.yaml"
GLAS = REPO / "config" / "glas.yaml"
GLAS_GLANDS = REPO / "config" / "glas_glands.yaml"
GLAS_DATA = REPO.parent / "shared" / "data" / "glas-train"
WSSS4LUAD = REPO / "config" / "wsss4luad.yaml"
WSSS4LUAD_DATA = REPO.parent / "shared" / "data" / "wsss4luad-masked"
MHIST_HEADER = [
    "Image Name",
    "Majority Vote Label",
    "Number of Annotators who Selected SSA (Out of 7)",
    "Partition",
]


def _load(path):
    return yaml.safe_load(Path(path).read_text())


def config_shards(preset: Path) -> int:
    """The preset's stain shards (the real masks at the working scale are sharded alike)."""
    return _load(preset)["stain"]["shards"]


def _job_inputs(dry_run: str, rule: str) -> str:
    """The `input:` line of ``rule``'s job in ``snakemake -n`` output."""
    match = re.search(rf"^rule {rule}:\n    input: (.*)$", dry_run, re.MULTILINE)
    assert match, f"no {rule} job in the plan"
    return match.group(1)


# --------------------------------------------------------------------------------------------
# The presets are complete and valid


@pytest.mark.parametrize(
    "preset",
    [MHIST, GLAS, GLAS_GLANDS, WSSS4LUAD],
    ids=["mhist", "glas", "glas_glands", "wsss4luad"],
)
def test_preset_sets_every_key_and_validates(preset):
    """Every key of every section but `demo` is set in the file itself, so that nothing comes
    from config/config.yaml (which snakemake layers below it when run from the repository)."""
    config = _load(preset)
    schema = _load(SCHEMA)
    for section, spec in schema["properties"].items():
        if section == "demo":
            continue
        if spec["type"] != "object":
            assert section in config, section
            continue
        missing = sorted(set(spec["properties"]) - set(config.get(section, {})))
        assert not missing, f"{preset.name}: {section} lacks {missing}"
    validate(copy.deepcopy(config), str(SCHEMA))
    assert config["dataset"]["source"] == "folder"


def test_mhist_preset_holds_the_papers_values():
    """Sections 2.1-2.4 of the paper."""
    c = _load(MHIST)
    assert c["dataset"]["classes"] == ["HP", "SSA"] and c["dataset"]["positive_class"] == "SSA"
    assert c["split"]["val_fraction"] == 0.2  # 80/20, stratified
    assert c["stain"]["target"] == "auto"  # Macenko + tissue masking
    assert c["stain"]["scale"] == 1  # the images as they are
    assert c["cam"]["layers"] == ["layer4"]  # the last convolutional block
    assert c["classifier"]["train_on"] == "images"
    clf = c["classifier"]
    assert (clf["arch"], clf["weights"], clf["crop_size"]) == ("resnet101", "imagenet", None)
    assert (clf["epochs"], clf["batch_size"], clf["lr"], clf["weight_decay"]) == (
        25,
        32,
        0.01,
        0.01,
    )
    assert (clf["tversky_alpha"], clf["tversky_beta"], clf["tversky_gamma"]) == (0.7, 0.3, 1.33)
    assert clf["unfreeze"]["layer4"] == 5 and max(clf["unfreeze"].values()) < 25
    assert clf["augment"]["flip"] and clf["augment"]["rotate90"]
    assert clf["augment"]["brightness"] > 0 and clf["augment"]["hue"] > 0  # colour jitter
    assert c["cam"]["method"] == "smoothgradcam++"
    paper_refine = {"quantile": 0.5, "open_px": 3, "close_px": 5, "min_object_px": 64}
    paper_refine |= {"crf_iterations": 5, "crf_gaussian_sxy": 3, "crf_gaussian_compat": 3}
    paper_refine |= {"crf_bilateral_sxy": 80, "crf_bilateral_srgb": 13, "crf_bilateral_compat": 10}
    paper_refine |= {"final_step": "crf"}
    assert {k: c["pseudo_masks"][k] for k in paper_refine} == paper_refine
    seg = c["segmentation"]
    paper_seg = {"arch": "DeepLabV3Plus", "encoder": "resnet101", "encoder_weights": "imagenet"}
    paper_seg |= {"lr": 0.001, "momentum": 0.9, "weight_decay": 0.001, "threshold": 0.5}
    paper_seg |= {"dice_weight": 1.0, "lovasz_weight": 0.5, "bce_head_weight": 0.2}
    paper_seg |= {"positive_only_epochs": 10, "negative_ramp_epochs": 35, "negative_max_prob": 0.3}
    paper_seg |= {"targets": "pseudo", "crop_size": None}
    assert {k: seg[k] for k in paper_seg} == paper_seg
    assert seg["grad_clip"] > 0


# --------------------------------------------------------------------------------------------
# MHIST's own format builds the paper's DAG


@pytest.fixture
def mhist_like(tmp_path):
    """A small annotations.csv with MHIST's exact header, HP/SSA labels and its own test
    partition, and generated 224 x 224 images."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(12):
        name = f"MHIST_{i:03d}.png"
        write_png(
            tmp_path / "mhist" / "images" / name, rng.integers(0, 255, (224, 224, 3), np.uint8)
        )
        ssa = i % 3 == 0
        rows.append(
            [name, "SSA" if ssa else "HP", 6 if ssa else 1, "test" if i % 4 == 0 else "train"]
        )
    table = pd.DataFrame(rows, columns=MHIST_HEADER)
    table.to_csv(tmp_path / "mhist" / "annotations.csv", index=False)
    dataset = {"images": "mhist/images", "labels": "mhist/annotations.csv"}
    return tmp_path, {"dataset": dataset}


@pytest.mark.integration
def test_mhist_preset_builds_its_dag_on_mhist_format(mhist_like):
    workdir, config = mhist_like
    assert (workdir / "mhist" / "annotations.csv").read_text().splitlines()[0] == ",".join(
        MHIST_HEADER
    )
    out = snakemake(workdir, "-n", config=config, base=MHIST).stdout
    jobs = dict(re.findall(r"^(\w+)\s+(\d+)$", out.split("Job stats:")[1], re.MULTILINE))
    assert jobs["normalize_stain"] == "16" and jobs["pseudo_masks"] == "16"
    assert jobs["cams"] == "4" and jobs["train_classifier"] == "1"
    assert "results/mhist/segmentation/evaluation.json" in out
    # `imagenet` is a keyword, not an input file of the training jobs
    assert "imagenet" not in _job_inputs(out, "train_classifier")
    assert "imagenet" not in _job_inputs(out, "train_segmentation")


@pytest.mark.integration
def test_ground_truth_targets_without_masks_fail_at_dag_build(mhist_like):
    workdir, config = mhist_like
    config["segmentation"] = {"targets": "ground_truth"}
    result = snakemake(workdir, "-n", config=config, base=MHIST, check=False)
    assert result.returncode != 0
    assert "segmentation.targets is 'ground_truth' but the dataset has no pixel masks" in (
        result.stdout + result.stderr
    )


@pytest.mark.integration
def test_ground_truth_targets_train_on_the_real_masks(tmp_path):
    out = snakemake(tmp_path, "-n", config={"segmentation": {"targets": "ground_truth"}}).stdout
    inputs = _job_inputs(out, "train_segmentation")
    # the real masks at the working scale, made from the demo's masks by rule truth_masks
    assert "results/truth/shards/0" in inputs and "pseudo_masks" not in inputs
    out = snakemake(tmp_path, "-n").stdout
    assert "pseudo_masks/shards/0" in _job_inputs(out, "train_segmentation")


# --------------------------------------------------------------------------------------------
# GlaS: real tissue of several sizes through every stage

# benign and malignant, 775 x 522 and the smaller sizes (574 x 433, 589 x 453, 567 x 430)
GLAS_IMAGES = {
    "benign": ["train_12", "train_84", "train_15", "train_2"],
    "malignant": ["train_41", "train_36", "train_1", "train_10"],
}
GLAS_TINY = {
    "stain": {"target_images": 4},
    "classifier": {"crop_size": 64, "epochs": 1, "batch_size": 4},
    "cam": {"n_samples": 1, "batch_size": 2},
    "segmentation": {"crop_size": 64, "epochs": 1, "batch_size": 4, "positive_only_epochs": 0},
    "predict": {"batch_size": 2, "figure_examples": 2},
}
GLAS_TINY["segmentation"] |= {"negative_ramp_epochs": 1, "negative_max_prob": 1.0}


@pytest.fixture(scope="module")
def glas_run(tmp_path_factory):
    """The real Snakefile with config/glas.yaml (tiny epochs) on 8 GlaS images."""
    if not GLAS_DATA.is_dir():
        pytest.skip(f"GlaS data not found at {GLAS_DATA} (see the README, 'GlaS preset')")
    workdir = tmp_path_factory.mktemp("glas")
    labels = pd.read_csv(GLAS_DATA / "labels.csv")
    chosen = [f"{name}.png" for names in GLAS_IMAGES.values() for name in names]
    labels[labels["Image Name"].isin(chosen)].to_csv(workdir / "labels.csv", index=False)
    dataset = {"images": str(GLAS_DATA / "images"), "masks": str(GLAS_DATA / "masks")}
    config = {**GLAS_TINY, "dataset": {**dataset, "labels": "labels.csv"}}
    snakemake(workdir, "--cores", "2", config=config, base=GLAS)
    return workdir, config


def _size(path):
    with Image.open(path) as img:
        return img.size[::-1]


@pytest.mark.integration
def test_glas_runs_every_stage_at_each_images_size(glas_run):
    workdir, _ = glas_run
    results = workdir / "results" / "glas"
    split = pd.read_csv(results / "split" / "split.csv")
    # no Partition = test row in GlaS: a stratified test set is held out
    assert split.groupby("split")["label"].value_counts().to_dict() == {
        ("test", "benign"): 1, ("test", "malignant"): 1, ("train", "benign"): 2,
        ("train", "malignant"): 2, ("val", "benign"): 1, ("val", "malignant"): 1,
    }  # fmt: skip
    # every stage works at the preset's working resolution, the real masks too
    scale = _load(GLAS)["stain"]["scale"]
    sizes = {n: scaled_size(_size(GLAS_DATA / "images" / f"{n}.png"), scale) for n in split["name"]}
    assert len(set(sizes.values())) == 4

    def files(stage, kind, ext):
        return {p.stem: p for p in (results / stage / "shards").glob(f"*/{kind}/*{ext}")}

    for stage, kind, ext in [
        ("stain", "images", ".png"),
        ("stain", "tissue", ".png"),
        ("cam", "cams", ".npy"),
        ("pseudo_masks", "masks", ".png"),
        ("truth", "masks", ".png"),
    ]:
        found = files(stage, kind, ext)
        # CAMs of the images with a tag (malignant), (1, H, W): K = 1
        expected = split.loc[split["label"] == "malignant", "name"] if stage == "cam" else sizes
        assert sorted(found) == sorted(expected), (stage, kind)
        for name, path in found.items():
            shape = np.load(path).shape[1:] if ext == ".npy" else _size(path)
            assert shape == sizes[name], (stage, kind, name)
    predictions = results / "segmentation" / "predictions"
    held_out = split.loc[split["split"] != "train", "name"]
    for name in held_out:
        assert np.load(predictions / "probs" / f"{name}.npy").shape == (1, *sizes[name])
        assert read_mask(predictions / "masks" / f"{name}.png").shape == sizes[name]


@pytest.mark.integration
def test_glas_is_measured_against_the_real_masks(glas_run):
    workdir, _ = glas_run
    results = workdir / "results" / "glas"
    classifier = json.loads((results / "classifier" / "evaluation.json").read_text())
    assert classifier["test"]["n"] == 2 and classifier["val"]["n"] == 2
    quality = pd.read_csv(results / "pseudo_masks" / "quality_summary.csv")
    everything = quality[quality["split"] == "all"]
    assert list(everything["step"]) == ["threshold", "morphology", "small_objects", "crf"]
    assert (everything["n_images"] == 4).all() and quality["iou_mean"].between(0, 1).all()
    summary = json.loads((results / "segmentation" / "evaluation.json").read_text())
    for part in ("val", "test"):
        assert {"pseudo", "truth"} <= set(summary[part])
    for figure in ("segmentation_examples", "error_maps", "pseudo_mask_steps", "learning_curves"):
        assert (results / "figures" / f"{figure}.png").stat().st_size > 10_000


@pytest.mark.integration
def test_glas_ground_truth_targets_rerun_only_the_segmentation(glas_run):
    workdir, config = glas_run
    upper_bound = {**config, "segmentation": {**config["segmentation"], "targets": "ground_truth"}}
    out = snakemake(workdir, "-n", config=upper_bound, base=GLAS).stdout
    jobs = set(re.findall(r"^rule (\w+):$", out, re.MULTILINE))
    assert {"train_segmentation", "predict", "evaluate_segmentation"} <= jobs
    assert not jobs & {"train_classifier", "cams", "pseudo_masks", "normalize_stain"}
    inputs = _job_inputs(out, "train_segmentation")
    # the real masks at the working scale (rule truth_masks, which reads each mask file) ...
    assert "results/glas/truth/shards/0" in inputs and "pseudo_masks" not in inputs
    truth = [f"results/glas/truth/shards/{k}" for k in range(config_shards(GLAS))]
    plan = snakemake(workdir, "-n", "-f", *truth, config=upper_bound, base=GLAS).stdout
    read = re.findall(r"^rule truth_masks:\n    input: (.*)$", plan, re.MULTILINE)
    assert f"{GLAS_DATA}/masks/train_1.png" in ", ".join(read).split(", ")
    # ... and the manifest lists each of them
    manifest = pd.read_csv(workdir / "results" / "glas" / "data" / "manifest.csv")
    assert f"{GLAS_DATA}/masks/train_1.png" in set(manifest["mask"])


@pytest.mark.integration
def test_glas_glands_labels_every_image_from_its_gland_mask(tmp_path):
    """The gland protocol: every GlaS image holds glands, so every image is `gland` and the
    split holds out images (not patches); only the mask-tagged patches carry the classifier's
    two classes (and the pseudo-masks' background), and with image-level tags the same
    dataset is refused at DAG build."""
    if not GLAS_DATA.is_dir():
        pytest.skip(f"GlaS data not found at {GLAS_DATA} (see the README, 'GlaS preset')")
    dataset = {
        "images": str(GLAS_DATA / "images"),
        "masks": str(GLAS_DATA / "gland-masks"),
        "labels": str(GLAS_DATA / "labels.csv"),
    }
    split_csv = "results/glas_glands/split/split.csv"
    snakemake(tmp_path, "--cores", "1", split_csv, config={"dataset": dataset}, base=GLAS_GLANDS)
    split = pd.read_csv(tmp_path / split_csv)
    assert split.groupby("split")["label"].value_counts().to_dict() == {
        ("test", "gland"): 17, ("train", "gland"): 54, ("val", "gland"): 14,
    }  # fmt: skip
    # window CAMs at the patch scale; the pseudo-masks read the patches tagged no gland
    preset = _load(GLAS_GLANDS)
    assert preset["cam"]["window_size"] == preset["patches"]["size"]
    plan = snakemake(tmp_path, "-n", config={"dataset": dataset}, base=GLAS_GLANDS).stdout
    assert "results/glas_glands/patches/shards/" in _job_inputs(plan, "pseudo_masks")
    image_tags = {"dataset": dataset, "patches": {"tags": "image"}}
    refused = snakemake(tmp_path, "-n", config=image_tags, base=GLAS_GLANDS, check=False)
    assert refused.returncode != 0
    assert "but class 'no_gland' has 0 (labels from the masks)" in refused.stdout + refused.stderr


# --------------------------------------------------------------------------------------------
# WSSS4LUAD: three tissue classes, patches tagged from the masks


def test_wsss4luad_preset_cuts_patches_tagged_from_the_masks(tmp_path):
    """The preset's DAG builds on the real data (68 images, classes from the `Tags` column and
    the 3-class masks, value 3 unlabelled), the classifier trains on patches tagged from the
    masks, and a patch's tags are the classes that cover min_share of it in its mask (not its
    image's tags)."""
    if not WSSS4LUAD_DATA.is_dir():
        pytest.skip(f"WSSS4LUAD data not found at {WSSS4LUAD_DATA} (see ../shared/data/README.md)")
    preset = _load(WSSS4LUAD)
    dataset = {k: str(WSSS4LUAD_DATA / k) for k in ("images", "masks")}
    dataset["labels"] = str(WSSS4LUAD_DATA / "labels.csv")
    plan = snakemake(tmp_path, "-n", config={"dataset": dataset}, base=WSSS4LUAD).stdout
    assert "results/wsss4luad/truth/shards/" in _job_inputs(plan, "patches")  # the real masks
    assert "results/wsss4luad/patches/shards/" in _job_inputs(plan, "train_classifier")
    params = PatchParams.from_config(preset["patches"])
    assert params.tags == "mask" and preset["classifier"]["train_on"] == "patches"
    space = DatasetSpec.from_config(preset["dataset"] | dataset).label_space
    assert space == LabelSpace(("tumor", "stroma", "normal"), ignore_index=3)
    labels = pd.read_csv(WSSS4LUAD_DATA / "labels.csv").set_index("Image Name")
    differ = 0
    for name in ("val_00.png", "val_09.png"):  # tumor;stroma, tumor;stroma;normal
        with Image.open(WSSS4LUAD_DATA / "masks" / name) as img:
            values = np.asarray(img)
        rows = cut(name, read_rgb(WSSS4LUAD_DATA / "images" / name), labels.at[name, "Tags"],
                   params, space, space.read_truth(WSSS4LUAD_DATA / "masks" / name))  # fmt: skip
        for row, _ in rows:
            window = values[row["y"] : row["y"] + params.size, row["x"] : row["x"] + params.size]
            shares = np.bincount(window.ravel(), minlength=4)[:3] / window.size
            expected = [c for c, s in zip(space.classes, shares, strict=True) if s >= 0.05 and s]
            assert row["tags"] == ";".join(expected), row
            differ += row["tags"] != labels.at[name, "Tags"]
    assert differ > 0  # some patches hold fewer classes than their image
