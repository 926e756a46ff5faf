"""Partial reruns, GPU tagging and reproducibility of the real Snakefile, on the tiny demo."""

import os
import re
import shutil
import signal
import subprocess
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from workflow_runner import REPO, SNAKEMAKE, TINY, planned_jobs, snakemake

from histo_wsss.io import read_mask
from histo_wsss.shards import shard_of

pytestmark = pytest.mark.integration

# The rules that run a network: exactly these must declare `resources: gpu=1`.
MODEL_RULES = {
    "pretrain",
    "train_classifier",
    "evaluate_classifier",
    "cams",
    "train_segmentation",
    "predict",
    "predict_new",
}

# Every job downstream of the pseudo-masks, with the tiny config's shard counts.
SEGMENTATION_AND_AFTER = {
    "train_segmentation": 1,
    "predict": 1,
    "evaluate_segmentation": 1,
    "figure_examples": 3,
    "figure_learning_curves": 1,
    "metrics_table": 1,
    "qupath_export": TINY["pseudo_masks"]["shards"],
    "review_queue": 1,
    "report_tables": 1,
    "all": 1,
}
PSEUDO_MASKS_AND_AFTER = {
    "pseudo_masks": TINY["pseudo_masks"]["shards"],
    "pseudo_mask_quality": 1,
    "pseudo_mask_figure": 1,
    **SEGMENTATION_AND_AFTER,
}


def _with(section: str, **values) -> dict:
    return {**TINY, section: {**TINY.get(section, {}), **values}}


# Both networks start from the pretrained encoder; the segmentation network learns from the real
# masks (the supervised bound), so that it needs no CAMs: the run below builds only the two
# networks (TARGETS) and what they need. It pretrains on a folder of extra images too.
PRETRAINED = {
    **TINY,
    "classifier": {**TINY["classifier"], "epochs": 1, "weights": "pretrained"},
    "segmentation": {
        **TINY["segmentation"],
        "epochs": 1,
        "encoder_weights": "pretrained",
        "targets": "ground_truth",
    },
    "pretrain": {"epochs": 1, "batch_size": 4, "crop_size": 32},
}
WITH_EXTRA = {**PRETRAINED, "pretrain": {**PRETRAINED["pretrain"], "extra_images": "extra"}}
TARGETS = ("results/classifier/model.pt", "results/segmentation/model.pt")


def test_a_crf_parameter_reruns_the_pseudo_masks_and_what_follows(tiny_run):
    config = _with("pseudo_masks", crf_bilateral_srgb=10)
    assert planned_jobs(tiny_run, config) == PSEUDO_MASKS_AND_AFTER


def test_a_segmentation_parameter_reruns_segmentation_and_after(tiny_run):
    config = _with("segmentation", lr=0.005)
    assert planned_jobs(tiny_run, config) == SEGMENTATION_AND_AFTER


@pytest.mark.parametrize("change", [{"noise_sigma": 0.2}, {"window_size": 48}])
def test_a_cam_parameter_keeps_the_classifier(tiny_run, change):
    config = _with("cam", **change)
    cams = {"cams": TINY["cam"]["shards"], "cam_summary": 1}
    assert planned_jobs(tiny_run, config) == {**cams, **PSEUDO_MASKS_AND_AFTER}


# The demo's patches tagged from its masks, for the pseudo-masks only (the classifier keeps
# training on whole images).
MASK_PATCHES = {**TINY, "patches": {"size": 32, "stride": 32, "tags": "mask"}}
UNTAGGED_BACKGROUND = {
    **MASK_PATCHES,
    "pseudo_masks": {**TINY["pseudo_masks"], "negative_patches_background": True},
}


def test_untagged_patches_as_background_add_the_patches_to_the_pseudo_masks(tiny_run):
    """Off, the patches are in no job's inputs: their keys rerun nothing. On, the patches are
    cut (one job per stain shard) and the pseudo-masks and what follows are made again."""
    assert planned_jobs(tiny_run, MASK_PATCHES) == {}
    expected = {"patches": TINY["stain"]["shards"], **PSEUDO_MASKS_AND_AFTER}
    assert planned_jobs(tiny_run, UNTAGGED_BACKGROUND) == expected


def test_window_cams_and_untagged_patches_run_on_the_demo(tiny_run, tmp_path):
    """The tiny run copied and its CAMs and pseudo-masks made again with 48-px window CAMs and
    the untagged 32-px patches as background: every train and val pseudo-mask is background in
    its untagged patches, and the CAMs differ from the whole-image ones."""
    workdir = tmp_path / "run"
    shutil.copytree(tiny_run, workdir, symlinks=True)
    config = {**UNTAGGED_BACKGROUND, "cam": {**TINY["cam"], "window_size": 48}}
    snakemake(workdir, "--cores", "2", "results/pseudo_masks/quality.csv", config=config)
    results = workdir / "results"
    patches = pd.concat(pd.read_csv(f) for f in results.glob("patches/shards/*/patches.csv"))
    assert set(patches["split"]) == {"train", "val"} and 0 < patches["positive"].mean() < 1
    checked = 0
    for row in patches[patches["positive"] == 0].itertuples():
        (path,) = results.glob(f"pseudo_masks/shards/*/masks/{row.source}.png")
        assert not read_mask(path)[row.y : row.y + 32, row.x : row.x + 32].any(), row.name
        checked += 1
    assert checked == (patches["positive"] == 0).sum() > 0
    logs = "".join(p.read_text() for p in results.glob("logs/pseudo_masks/*.log"))
    logged = re.findall(r"(\d+) negative patches of (\d+) images", logs)
    assert len(logged) == TINY["pseudo_masks"]["shards"]  # each job counts its own images
    assert sum(int(n) for n, _ in logged) == checked
    with_negatives = patches.loc[patches["positive"] == 0, "source"].nunique()
    assert sum(int(k) for _, k in logged) == with_negatives
    logs = "".join(p.read_text() for p in results.glob("logs/cams/*.log"))
    assert "CAMs (smoothgradcam++ in 48-px windows) of" in logs
    cams = sorted(results.glob("cam/shards/*/cams/*.npy"))
    assert cams and not any(
        np.array_equal(np.load(new), np.load(tiny_run / new.relative_to(workdir))) for new in cams
    )


def test_a_correction_reruns_only_the_segmentation_and_after(tiny_run):
    """A QuPath GeoJSON dropped into the corrections folder (here the exported prediction of
    a train image); not the classifier, CAMs or pseudo-masks. An empty folder is no correction;
    a half-written file and one named after no image stop the plan, naming the file."""
    folder = tiny_run / "corrections"
    folder.mkdir()
    config = {**TINY, "corrections": {"folder": "corrections"}}
    split = pd.read_csv(tiny_run / "results" / "split" / "split.csv")
    name = split.loc[split["split"] == "train", "name"].iloc[0]
    shard = shard_of(name, TINY["pseudo_masks"]["shards"])
    exported = tiny_run / f"results/qupath/shards/{shard}/predictions/{name}.geojson"
    correction = folder / f"{name}.geojson"
    try:
        assert planned_jobs(tiny_run, config) == {}
        shutil.copy(exported, correction)
        assert planned_jobs(tiny_run, config) == {"corrections": 1, **SEGMENTATION_AND_AFTER}
        correction.write_text(exported.read_text()[:50])  # half-written
        result = snakemake(tiny_run, "-n", config=config, check=False)
        assert result.returncode != 0
        assert f"corrections/{name}.geojson: cannot read GeoJSON" in result.stdout + result.stderr
        correction.rename(folder / "unknown.png")
        result = snakemake(tiny_run, "-n", config=config, check=False)
        assert "no image of the dataset is named 'unknown'" in result.stdout + result.stderr
    finally:
        shutil.rmtree(folder)
    assert planned_jobs(tiny_run) == {}


def test_a_figure_parameter_reruns_only_its_figures(tiny_run):
    config = _with("predict", figure_examples=2)
    assert planned_jobs(tiny_run, config) == {"figure_examples": 3, "all": 1}


def test_nothing_changed_plans_nothing(tiny_run):
    assert planned_jobs(tiny_run) == {}
    assert not (tiny_run / "results" / "pretrain").exists()  # no key says `pretrained`


@pytest.fixture(scope="module")
def pretrained_run(tiny_run, tmp_path_factory):
    """The tiny run copied, then both networks retrained from an encoder pretrained on its train
    and val images and two extra images."""
    workdir = tmp_path_factory.mktemp("pretrained")
    shutil.copytree(tiny_run, workdir, dirs_exist_ok=True)
    (workdir / "extra").mkdir()
    for name in ("demo_0000.png", "demo_0001.png"):
        shutil.copy(workdir / "results" / "demo" / "images" / name, workdir / "extra" / name)
    snakemake(workdir, "--cores", "2", *TARGETS, config=WITH_EXTRA)
    return workdir


def test_both_networks_start_from_the_pretrained_encoder(pretrained_run):
    logs = pretrained_run / "results" / "logs"
    encoder = "results/pretrain/encoder.pt"
    assert (
        f"{encoder}: loaded resnet18 backbone weights"
        in (logs / "train_classifier.log").read_text()
    )
    assert (
        f"{encoder}: loaded into the resnet18 encoder"
        in (logs / "train_segmentation.log").read_text()
    )
    assert (
        "pretraining on 20 train+val images and 2 extra images"
        in (logs / "pretrain.log").read_text()
    )
    assert planned_jobs(pretrained_run, WITH_EXTRA, *TARGETS) == {}
    added = pretrained_run / "extra" / "another.png"
    shutil.copy(pretrained_run / "results" / "demo" / "images" / "demo_0002.png", added)
    try:
        expected = dict.fromkeys(("pretrain", "train_classifier", "train_segmentation"), 1)
        assert planned_jobs(pretrained_run, WITH_EXTRA, *TARGETS) == expected
    finally:
        added.unlink()


@pytest.mark.parametrize(
    ("section", "key", "value", "rerun"),
    [
        ("pretrain", "temperature", 0.5, {"pretrain", "train_classifier", "train_segmentation"}),
        ("classifier", "lr", 0.005, {"train_classifier"}),
        ("segmentation", "lr", 0.005, {"train_segmentation"}),
    ],
)
def test_only_a_pretraining_key_reruns_pretraining(pretrained_run, section, key, value, rerun):
    config = {**WITH_EXTRA, section: {**WITH_EXTRA[section], key: value}}
    assert planned_jobs(pretrained_run, config, *TARGETS) == dict.fromkeys(rerun, 1)


def test_a_deleted_figure_plans_only_its_own_job(tiny_run):
    figure = tiny_run / "results" / "figures" / "uncertainty_maps.png"
    kept = figure.read_bytes()
    figure.unlink()
    try:
        assert planned_jobs(tiny_run) == {"figure_examples": 1, "all": 1}
    finally:
        figure.write_bytes(kept)


def test_added_images_rerun_their_shards_and_what_learns_from_them(tiny_run, tmp_path):
    """A folder dataset with a fixed stain reference, run to the end; then one image more in
    the dataset and one more in the folder of new images to predict.

    What the design allows: normalization is per shard (an image's shard is a hash of its
    name) and a fixed reference does not depend on the data, so only the new image's shard is
    normalized again. The split, and so the training set, changes: the classifier, every CAM
    and pseudo-mask and the segmentation network are trained or made again, as they must be.
    A new image to predict reruns only the prediction of the new-images folder.
    """
    data = tmp_path / "data"
    shutil.copytree(tiny_run / "results" / "demo", data)
    labels = pd.read_csv(data / "labels.csv")
    added = labels.iloc[-1]
    added_name = Path(added["Image Name"]).stem
    labels.iloc[:-1].to_csv(data / "labels.csv", index=False)
    qc = pd.read_csv(tiny_run / "results" / "stain" / "qc.csv")
    reference = qc.loc[qc["normalized"].astype(str) == "True", "name"].iloc[0]
    new_images = tmp_path / "new"
    new_images.mkdir()
    for name in labels["Image Name"].iloc[:2]:
        shutil.copy(data / "images" / name, new_images / name)
    config = {
        **TINY,
        "dataset": {
            "source": "folder",
            "images": "data/images",
            "labels": "data/labels.csv",
            "masks": "data/masks",
        },
        "stain": {"shards": 4, "target": f"data/images/{reference}.png"},
        "predict": {"images": "new"},
    }
    snakemake(tmp_path, "--cores", "2", config=config)
    assert planned_jobs(tmp_path, config) == {}

    # A mask changed in place (a newer time) reruns the manifest, its shard of the masks at the
    # working scale (1 of 4) and what reads the masks; the normalization does not read them.
    # Its old time back, nothing is to be done again.
    mask = data / "masks" / f"{Path(labels['Image Name'].iloc[0]).stem}.png"
    times = (mask.stat().st_atime_ns, mask.stat().st_mtime_ns)
    os.utime(mask, ns=(times[0], times[1] + 10**9))
    touched = planned_jobs(tmp_path, config)
    assert touched["dataset_manifest"] == 1 and "pseudo_masks" in touched
    assert touched["truth_masks"] == 1
    assert "normalize_stain" not in touched
    os.utime(mask, ns=times)
    assert planned_jobs(tmp_path, config) == {}

    labels.to_csv(data / "labels.csv", index=False)
    shutil.copy(data / "images" / added["Image Name"], new_images / "another.png")
    jobs = planned_jobs(tmp_path, config)
    assert jobs.pop("normalize_stain") == 1  # of 4: the shard of the added image only
    assert jobs.pop("truth_masks") == 1  # and of its mask
    assert "stain_target" not in jobs
    assert jobs.pop("predict_new") == 1
    retrained = {
        "stain_qc": 1,
        "figure_stain_normalization": 1,
        "dataset_manifest": 1,
        "split": 1,
        "train_classifier": 1,
        "evaluate_classifier": 1,
        "classifier_learning_curve": 1,
        "cams": TINY["cam"]["shards"],
        "cam_summary": 1,
        "corrections": 1,  # it reads the split (no correction of a test image)
        **PSEUDO_MASKS_AND_AFTER,
    }
    assert jobs == retrained
    plan = snakemake(tmp_path, "-n", config=config).stdout
    shard = shard_of(added_name, 4)
    assert f"results/stain/shards/{shard}\n" in plan


# --------------------------------------------------------------------------------------------
# Resuming after a crash


def _killed_mid_job(workdir: Path, target: str, temporary: str) -> None:
    """Start snakemake to make ``target`` and kill -9 it and its jobs once ``temporary`` (a
    glob under ``workdir``) exists: mid-job, as a crash or an out-of-memory kill would."""
    cmd = [str(SNAKEMAKE), "--snakefile", str(REPO / "Snakefile"), "--configfile"]
    cmd += [str(REPO / "config" / "config.yaml"), "test_config.yaml", "--cores", "2", target]
    job = subprocess.Popen(cmd, cwd=workdir, start_new_session=True, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not list(workdir.glob(temporary)):
        assert job.poll() is None and time.monotonic() < deadline, "no job to kill"
        time.sleep(0.002)  # a tiny CAM shard's temporary folder lives about 0.2 s
    os.killpg(job.pid, signal.SIGKILL)
    job.wait()


def test_a_run_killed_mid_job_resumes_after_unlock_and_leaves_no_temporaries(tiny_run, tmp_path):
    """A CAM shard of the tiny run made again, killed while it is being written."""
    workdir = tmp_path / "run"
    shutil.copytree(tiny_run, workdir, symlinks=True)
    shards = workdir / "results" / "cam" / "shards"
    shutil.rmtree(shards / "0")
    (workdir / "results" / "cam" / "summary.json").unlink()
    target = "results/cam/summary.json"
    _killed_mid_job(workdir, target, "results/cam/shards/.0.*")
    assert [p.name for p in shards.iterdir() if p.name.startswith(".")]  # the killed job's

    again = snakemake(workdir, "--cores", "2", target, check=False)
    assert again.returncode != 0 and "LockException" in again.stdout + again.stderr
    snakemake(workdir, "--unlock")
    snakemake(workdir, "--cores", "2", target)
    assert sorted(p.name for p in shards.iterdir()) == ["0", "1"]
    made = sorted((tiny_run / "results" / "cam").rglob("*.npy"))
    split = pd.read_csv(tiny_run / "results" / "split" / "split.csv")
    assert len(made) == (split["label"] == "lesion").sum()  # a CAM of each positive image
    for cam in made:
        rel = cam.relative_to(tiny_run)
        assert (workdir / rel).read_bytes() == cam.read_bytes(), rel


# --------------------------------------------------------------------------------------------
# GPU tagging

MODEL_CALL = re.compile(r"\b(train|load_checkpoint)\(")


def _rule_scripts() -> dict[str, str]:
    """``{rule: script source}`` of every rule of the workflow that runs a script."""
    scripts = {}
    for smk in (REPO / "workflow" / "rules").glob("*.smk"):
        for block in re.split(r"^rule ", smk.read_text(), flags=re.M)[1:]:
            name = block.split(":", 1)[0]
            script = re.search(r'script:\s*"([^"]+)"', block)
            if script:
                scripts[name] = (smk.parent / script.group(1)).read_text()
    return scripts


def _planned_resources(workdir: Path, config: dict) -> dict[str, str]:
    """``{rule: resources line}`` of every job ``snakemake -n`` plans from scratch."""
    out = snakemake(workdir, "-n", config=config).stdout
    blocks = re.findall(r"^rule (\w+):\n(.*?)(?=^\S|\Z)", out, flags=re.M | re.S)
    return {rule: re.search(r"resources: (.*)", body).group(1) for rule, body in blocks}


def test_exactly_the_rules_that_run_a_model_declare_a_gpu(tiny_run, tmp_path):
    images = str(tiny_run / "results" / "demo" / "images")
    # every optional rule in the plan: pretraining, patches, new images to segment
    classifier = {**PRETRAINED["classifier"], "train_on": "patches"}
    config = {**PRETRAINED, "classifier": classifier, "predict": {"images": images}}
    resources = _planned_resources(tmp_path, config)
    scripts = _rule_scripts()
    # dataset_manifest serves folder datasets only; it runs no model
    assert set(scripts) - {"all", "dataset_manifest"} <= set(resources), "every rule is planned"
    runs_model = {rule for rule, source in scripts.items() if MODEL_CALL.search(source)}
    gpu = {rule for rule, line in resources.items() if re.search(r"\bgpu=1\b", line)}
    assert runs_model == MODEL_RULES
    assert gpu == runs_model


@pytest.mark.parametrize(("cores", "gpus"), [(4, 1), (4, 2)])
def test_gpu_jobs_share_the_cores_between_the_gpu_slots(tmp_path, cores, gpus):
    """One GPU slot (or a CPU-only machine): a network job gets every core; N slots: 1/N each."""
    args = ("-n", "--cores", str(cores), "--resources", f"gpu={gpus}")
    out = snakemake(tmp_path, *args, config=PRETRAINED).stdout
    blocks = re.findall(r"^rule (\w+):\n(.*?)(?=^\S|\Z)", out, flags=re.M | re.S)
    found = {rule: re.search(r"threads: (\d+)", body) for rule, body in blocks}
    threads = {rule: int(m.group(1)) if m else 1 for rule, m in found.items()}
    assert {threads[rule] for rule in MODEL_RULES - {"predict_new"}} == {cores // gpus}
    assert {n for rule, n in threads.items() if rule not in MODEL_RULES} == {1}


def _job_spans(logs: Path) -> dict[str, tuple[datetime, datetime]]:
    """``{log name: (start, end)}`` from the "job started" / "job finished" lines of job logs."""
    spans = {}
    for path in logs.rglob("*.log"):
        lines = path.read_text().splitlines()
        times = [
            datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f") for line in (lines[0], lines[-1])
        ]
        assert "job started (histo_wsss from" in lines[0], path
        assert lines[-1].endswith("job finished"), path
        spans[path.relative_to(logs).with_suffix("").as_posix()] = tuple(times)
    return spans


def _overlap(a: tuple, b: tuple) -> bool:
    return a[0] < b[1] and b[0] < a[1]


# --------------------------------------------------------------------------------------------
# Reproducibility and GPU slots, from a second clean run


@pytest.fixture(scope="module")
def twin_run(tmp_path_factory):
    """A second clean run of the same config, with ``--cores 2 --resources gpu=1``."""
    workdir = tmp_path_factory.mktemp("twin")
    snakemake(workdir, "--cores", "2", "--resources", "gpu=1")
    return workdir


def test_gpu_jobs_never_overlap_under_one_gpu_slot(twin_run):
    spans = _job_spans(twin_run / "results" / "logs")
    gpu = {k: v for k, v in spans.items() if k.split("/")[0] in MODEL_RULES}
    assert {"cams/0", "cams/1", "train_classifier", "train_segmentation"} <= set(gpu)
    names = sorted(gpu)
    for i, first in enumerate(names):
        for second in names[i + 1 :]:
            assert not _overlap(gpu[first], gpu[second]), (first, second)
    # Two cores did run other jobs side by side: the order above was not forced by the cores.
    others = [v for k, v in spans.items() if k not in gpu]
    assert any(_overlap(a, b) for i, a in enumerate(others) for b in others[i + 1 :])


# What records wall-clock time: job logs, benchmarks, the `seconds` column of tables (the
# training metrics, the per-image pseudo-mask tables) and the modification times of the dataset
# manifest (`*_mtime_ns`: the demo's files are written anew by each run). Everything else must be
# byte-identical.
TIMED = ("logs/", "benchmarks/")


def _timed_columns(header: bytes) -> list[str]:
    return [c for c in header.decode().split(",") if c == "seconds" or c.endswith("_mtime_ns")]


def test_two_clean_runs_give_byte_identical_results(tiny_run, twin_run):
    first, second = tiny_run / "results", twin_run / "results"
    files = sorted(p.relative_to(first).as_posix() for p in first.rglob("*") if p.is_file())
    assert files == sorted(
        p.relative_to(second).as_posix() for p in second.rglob("*") if p.is_file()
    )
    compared = [f for f in files if not f.startswith(TIMED)]
    assert {"split/split.csv", "segmentation/evaluation.json", "figures/error_maps.png"} <= set(
        compared
    )
    assert sum(f.startswith("pseudo_masks/shards/") and f.endswith(".png") for f in compared) >= 24
    differ, timed = [], []
    for rel in compared:
        a, b = (first / rel).read_bytes(), (second / rel).read_bytes()
        columns = _timed_columns(a.split(b"\n", 1)[0]) if rel.endswith(".csv") else []
        if columns:
            timed.append(rel)
            a, b = (pd.read_csv(d / rel).drop(columns=columns) for d in (first, second))
            if not a.equals(b):
                differ.append(rel)
        elif a != b:
            differ.append(rel)
    assert differ == [], _training_lines(first, second)
    assert {"classifier/metrics.csv", "pseudo_masks/quality.csv", "data/manifest.csv"} <= set(timed)


def _training_lines(*results: Path) -> str:
    """The model jobs' "training ... on <device>" log lines of each run (threads included)."""
    return "\n".join(
        f"{r.parent.name}: {line}"
        for r in results
        for log in ("train_classifier", "train_segmentation")
        for line in (r / "logs" / f"{log}.log").read_text().splitlines()
        if " training " in line
    )
