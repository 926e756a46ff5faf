"""The sample table and input functions shared by every rule."""

import sys
from pathlib import Path

# The library is importable from the checkout even where it is not installed: Snakemake hands
# this process's sys.path on to the jobs' scripts.
SRC = str(Path(workflow.basedir) / "src")
if SRC not in sys.path:
    sys.path.insert(0, SRC)

from histo_wsss.dataset import DatasetError, DatasetSpec, load_labels
from histo_wsss.demo import demo_names
from histo_wsss.shards import shard_names

RESULTS = config["results"]
DEMO = config["dataset"]["source"] == "demo"
DEMO_DIR = f"{RESULTS}/demo"


def dataset_paths():
    """Images folder, labels CSV and masks folder (None when absent) of the dataset."""
    ds = config["dataset"]
    if DEMO:
        return f"{DEMO_DIR}/images", f"{DEMO_DIR}/labels.csv", f"{DEMO_DIR}/masks"
    missing = [k for k in ("images", "labels") if not ds.get(k)]
    if missing:
        raise WorkflowError(
            f"dataset.source is 'folder' but dataset.{missing[0]} is not set"
        )
    return ds["images"], ds["labels"], ds.get("masks")


def dataset_config():
    """The `dataset` config section with the actual paths filled in."""
    images, labels, masks = dataset_paths()
    return {**config["dataset"], "images": images, "labels": labels, "masks": masks}


def _sample_images():
    """Image path of every sample, by name; a user dataset is validated here, at DAG build."""
    if DEMO:
        images = dataset_paths()[0]
        return {n: f"{images}/{n}.png" for n in demo_names(config["demo"]["n_images"])}
    try:
        table = load_labels(DatasetSpec.from_config(dataset_config()))
    except DatasetError as err:
        raise WorkflowError(f"invalid dataset: {err}") from None
    return dict(zip(table["name"], table["image"]))


SAMPLE_IMAGES = _sample_images()
SAMPLES = sorted(SAMPLE_IMAGES)


def shard_ids(stage):
    """Shard indices of a sharded stage (its `shards` config key)."""
    return list(range(config[stage]["shards"]))


def shard_members(stage):
    """Input function: the sorted sample names of the job's shard."""

    def members(wildcards):
        return shard_names(SAMPLES, int(wildcards.shard), config[stage]["shards"])

    return members


def shard_images(stage):
    """Input function: image paths of the job's shard (the demo folder for the demo)."""

    def images(wildcards):
        if DEMO:
            return [dataset_paths()[0]]
        return [SAMPLE_IMAGES[n] for n in shard_members(stage)(wildcards)]

    return images


def shard_image_paths(stage):
    """Params function: image paths of the job's shard, in the order of `shard_members`."""

    def paths(wildcards):
        return [SAMPLE_IMAGES[n] for n in shard_members(stage)(wildcards)]

    return paths


def dataset_inputs():
    """Files a rule that reads the whole dataset depends on."""
    images, labels, masks = dataset_paths()
    if DEMO:
        return {"labels": labels, "images": images, "masks": masks}
    return {"labels": labels, "images": list(SAMPLE_IMAGES.values())}


def stain_target_input():
    """The reference image when `stain.target` names one."""
    target = config["stain"]["target"]
    return [] if target == "auto" else [target]


def final_outputs():
    outputs = [
        f"{RESULTS}/split/split.csv",
        f"{RESULTS}/stain/qc.csv",
    ]
    if DEMO:
        outputs.append(f"{DEMO_DIR}/contact_sheet.png")
    return outputs
