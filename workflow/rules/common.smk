"""The sample table and input functions shared by every rule."""

import sys
from dataclasses import asdict
from functools import cache
from pathlib import Path

# This process and every job import the library of this checkout, not whichever histo_wsss
# the Python environment has installed (e.g. another clone's): see histo_wsss.checkout.
SRC = str(Path(workflow.basedir) / "src")
if SRC not in sys.path:
    sys.path.insert(0, SRC)

from histo_wsss import checkout

checkout.pin(SRC)

from histo_wsss.classes import class_colors
from histo_wsss.corrections import (
    CorrectionError,
    checked_keys,
    image_size,
    list_corrections,
    read_correction,
)
from histo_wsss.dataset import (
    MIN_CLASS_IMAGES,
    DatasetError,
    DatasetSpec,
    digest,
    load_labels,
    manifest,
    manifest_keys,
    wildcard_problem,
)
from histo_wsss.demo import DEMO_KEYS, demo_names, demo_spec
from histo_wsss.io import unwritable_folders
from histo_wsss.qupath import class_labels
from histo_wsss.pseudo_masks import refine_params
from histo_wsss.shards import shard_groups
from histo_wsss.weights import PRETRAINED
from histo_wsss.weights import local_file as local_weights_file
from histo_wsss.weights import parse as parse_weights

RESULTS = config["results"]
DEMO = config["dataset"]["source"] == "demo"
TRAIN_ON_PATCHES = config["classifier"]["train_on"] == "patches"
# The classifier learns its two classes from the images' labels, unless it trains on patches
# tagged from the masks: then one class may be absent from the whole images (GlaS glands: every
# image holds a gland), and the dataset check asks nothing of the image-level counts.
MIN_CLASS_IMAGES_NEEDED = (
    0 if TRAIN_ON_PATCHES and config["patches"]["tags"] == "mask" else MIN_CLASS_IMAGES
)
DEMO_DIR = f"{RESULTS}/demo"
# mhist: MHIST's binary labels CSV; tags: a multi-label `Tags` column and class-index masks
LABELS_FORMAT = config["dataset"].get("format", "mhist")

# Paths in the config, which become inputs or outputs of jobs.
PATH_KEYS = (
    ("results",),
    ("dataset", "images"),
    ("dataset", "labels"),
    ("dataset", "masks"),
    ("stain", "target"),
    ("classifier", "weights"),
    ("segmentation", "encoder_weights"),
    ("predict", "images"),
)


def _check_paths():
    """Reject, naming the key, a config path that Snakemake would read as a wildcard, and
    results folders that cannot be written into (every output lies at most two folders below
    `results`): both would otherwise fail only when the first job that needs them runs.
    """
    for keys in PATH_KEYS:
        value = config
        for key in keys:
            value = value.get(key) or ""
        if wildcard_problem(value):
            raise WorkflowError(
                f"{'.'.join(keys)}: {value!r} {wildcard_problem(value)}"
            )
    unwritable = unwritable_folders(RESULTS, depth=2)
    if unwritable:
        raise WorkflowError(
            f"no permission to write into {', '.join(map(str, unwritable))}: the workflow "
            "writes its outputs there; make them writable (chmod u+w) or set `results` to "
            "another folder"
        )


_check_paths()


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


def demo_params():
    """What the demo generator reads: the `demo` keys of the labels format (DEMO_KEYS) and, for
    the multi-class demo, the format and the ignore index; no other key reruns it. A demo that
    cannot be drawn (e.g. a class without a texture) fails here, at DAG build."""
    params = {key: config["demo"][key] for key in DEMO_KEYS[LABELS_FORMAT]}
    if LABELS_FORMAT == "tags":
        params |= {
            "format": "tags",
            "ignore_index": config["dataset"]["ignore_index"],
        }
    if DEMO:
        try:
            demo_spec(
                params,
                config["dataset"]["classes"],
                config["dataset"].get("positive_class"),
            )
        except ValueError as err:
            raise WorkflowError(f"demo: {err}") from None
    return params


def dataset_config():
    """The `dataset` config section with the actual paths filled in."""
    images, labels, masks = dataset_paths()
    return {**config["dataset"], "images": images, "labels": labels, "masks": masks}


def _dataset_spec():
    """The dataset section as the library reads it; for the demo too: a positive_class that is
    not one of its classes fails here."""
    try:
        return DatasetSpec.from_config(dataset_config())
    except DatasetError as err:
        raise WorkflowError(f"invalid dataset: {err}") from None


DATASET_SPEC = _dataset_spec()
# The K foreground classes and how the masks encode them (histo_wsss.classes; binary: K = 1),
# as the jobs' params carry them: LabelSpace(**LABELS).
LABELS = {
    "classes": list(DATASET_SPEC.label_space.classes),
    "ignore_index": DATASET_SPEC.label_space.ignore_index,
}
# Each class's colour, the same in QuPath, the figures and the demo's contact sheet.
CLASS_COLORS = class_colors(config["dataset"]["classes"], config["qupath"]["colors"])


def label_colors():
    """`{class: [r, g, b]}` of the K > 1 classes in label order, drawn in their colours;
    empty for K = 1 (the figures' white masks and red overlays, the paper's)."""
    if len(LABELS["classes"]) == 1:
        return {}
    return {c: list(CLASS_COLORS[c]) for c in LABELS["classes"]}


def example_confusion():
    """The per-image confusion matrices by which the example figures rank K > 1 images (their
    mIoU); K = 1 ranks them by the per-image table's IoU."""
    if len(LABELS["classes"]) == 1:
        return []
    return f"{RESULTS}/segmentation/confusion.csv"


# A folder dataset's files, listed with their sizes and times (rule dataset_manifest); rules
# that read the whole dataset depend on this one file instead of on thousands of files (the DAG
# of 30,000 images builds several times faster), and still rerun when any file changes.
MANIFEST = f"{RESULTS}/data/manifest.csv"


def _samples():
    """Image and ground-truth mask paths of every sample, by name ('' where no mask).

    A user dataset is validated here, when the DAG is built (opening only the files that are
    new or changed since the last manifest); the demo when it is generated.
    """
    images, _, masks = dataset_paths()
    if DEMO:
        names = demo_names(config["demo"]["n_images"])
        return {n: f"{images}/{n}.png" for n in names}, {
            n: f"{masks}/{n}.png" for n in names
        }
    try:
        table = load_labels(
            DATASET_SPEC,
            checked=manifest_keys(MANIFEST),
            min_class_images=MIN_CLASS_IMAGES_NEEDED,
        )
    except DatasetError as err:
        raise WorkflowError(f"invalid dataset: {err}") from None
    return dict(zip(table["name"], table["image"])), dict(
        zip(table["name"], table["mask"])
    )


SAMPLE_IMAGES, SAMPLE_MASKS = _samples()
SAMPLES = sorted(SAMPLE_IMAGES)
HAS_MASKS = all(SAMPLE_MASKS.values())


def _gpu_slots():
    """The `gpu` resource this run was given (`--resources gpu=N`; 1 when none)."""
    gpu = workflow.global_resources.get("gpu")
    return max(1, int(getattr(gpu, "value", gpu) or 1))


# Threads of a job that runs a network: the cores shared between the GPU slots, so that N GPU
# jobs run side by side with --resources gpu=N, and on a CPU-only machine (one slot) the one
# running network gets every core.
GPU_JOB_THREADS = max(1, workflow.cores // _gpu_slots())


# Stages sharded like the normalization (same images per shard, one job per stain shard).
SHARDED_LIKE = {"truth": "stain", "patches": "stain", "qupath": "pseudo_masks"}


def _shard_count(stage):
    return config[SHARDED_LIKE.get(stage, stage)]["shards"]


def shard_ids(stage):
    """Shard indices of a sharded stage (its `shards` config key)."""
    return list(range(_shard_count(stage)))


@cache
def _shards(stage):
    """`([sorted names of each shard], {name: shard})` of a sharded stage, computed once (the
    input functions of every shard job of a 30,000-image DAG read them)."""
    groups = shard_groups(SAMPLES, _shard_count(stage))
    return groups, {name: k for k, group in enumerate(groups) for name in group}


def shard_members(stage):
    """Input function: the sorted sample names of the job's shard."""

    def members(wildcards):
        return _shards(stage)[0][int(wildcards.shard)]

    return members


def shard_dirs(stage):
    """Output folders of every shard of a sharded stage."""
    return [f"{RESULTS}/{stage}/shards/{k}" for k in shard_ids(stage)]


def upstream_shards(stage, upstream):
    """Input function: the `upstream` shard folders that hold the images of the job's shard."""

    def folders(wildcards):
        shard = _shards(upstream)[1]
        shards = {shard[name] for name in shard_members(stage)(wildcards)}
        return [f"{RESULTS}/{upstream}/shards/{k}" for k in sorted(shards)]

    return folders


def shard_files(stage, files, folder):
    """Input function: the dataset files (`files`: {name: path}) of the job's shard; the
    demo's whole `folder` for the demo."""

    def inputs(wildcards):
        if DEMO:
            return [folder]
        return [files[n] for n in shard_members(stage)(wildcards)]

    return inputs


def shard_file_paths(stage, files):
    """Params function: the dataset files (`files`: {name: path}) of the job's shard, in the
    order of `shard_members`."""

    def paths(wildcards):
        return [files[n] for n in shard_members(stage)(wildcards)]

    return paths


# A folder dataset's files with their sizes and times, read once per DAG build (none for the
# demo, whose files a job makes): the digests that rerun a job when one of its files changes.
SAMPLE_FILES = (
    None if DEMO else manifest(SAMPLE_IMAGES, SAMPLE_MASKS if HAS_MASKS else {})
)


def dataset_fingerprint():
    """A digest of the sizes and times of a folder dataset's files: a param of rule
    dataset_manifest, which reruns when it changes (Snakemake's params rerun trigger), i.e.
    whenever a file of the dataset is added, removed or changed."""
    return "" if DEMO else digest(SAMPLE_FILES)


def dataset_inputs():
    """Files a rule that reads the whole dataset depends on."""
    images, labels, masks = dataset_paths()
    if DEMO:
        return {"labels": labels, "images": images, "masks": masks}
    return {"labels": labels, "images": MANIFEST}


def shard_fingerprint(stage, kind):
    """Params function: a digest of the sizes and times of the job's shard of the dataset's
    `kind` files (image or mask; "" for the demo): the job reruns when one of them changes,
    even to an older time than its output (the manifest's approach)."""
    columns = [kind, f"{kind}_bytes", f"{kind}_mtime_ns"]

    def shard_digest(wildcards):
        if DEMO:
            return ""
        members = SAMPLE_FILES["name"].isin(shard_members(stage)(wildcards))
        return digest(SAMPLE_FILES.loc[members, columns])

    return shard_digest


def truth_inputs():
    """What rules that measure against the real masks depend on: the real masks at the
    working scale (rule truth_masks; none without masks)."""
    return shard_dirs("truth") if HAS_MASKS else []


def sample_files(stage, kind, ext=".png", names=SAMPLES):
    """`{name: path}` of one `kind` of output (images, tissue, masks, ...) of a sharded stage,
    for every sample or the given `names`."""
    shard = _shards(stage)[1]
    return {n: f"{RESULTS}/{stage}/shards/{shard[n]}/{kind}/{n}{ext}" for n in names}


def shard_sample_files(stage, upstream, kind, ext=".png"):
    """Params function: `sample_files` of the `upstream` stage for the job's `stage` shard
    only (not the whole dataset's paths, which every job would carry)."""

    def files(wildcards):
        return sample_files(upstream, kind, ext, shard_members(stage)(wildcards))

    return files


def truth_masks(stage=None):
    """`{name: real mask at the working scale}` (rule truth_masks) of every sample, or a
    params function giving those of the job's `stage` shard only; empty without masks.
    """
    if not HAS_MASKS:
        return {} if stage is None else (lambda wildcards: {})
    if stage is None:
        return sample_files("truth", "masks")
    return shard_sample_files(stage, "truth", "masks")


STAIN_AUTO = config["stain"]["target"] == "auto"


def stain_target_inputs(wildcards):
    """The reference image when `stain.target` names one (then adding images to the dataset
    does not change the target), else the split and the images to choose it from."""
    if not STAIN_AUTO:
        return {"reference": config["stain"]["target"]}
    return {"split": f"{RESULTS}/split/split.csv", "images": dataset_inputs()["images"]}


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")


def folder_images(key, folder):
    """The images of `folder`, which config key `key` names, sorted; an error naming the key
    and the folder when it is not a folder or holds no image, or the file whose name Snakemake
    cannot carry."""
    if not Path(folder).is_dir():
        raise WorkflowError(f"{key}: {folder} is not a folder")
    files = sorted(
        str(p) for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES
    )
    if not files:
        raise WorkflowError(f"{key}: no {'/'.join(IMAGE_SUFFIXES)} image in {folder}")
    for file in files:
        if wildcard_problem(file):
            raise WorkflowError(f"{key}: {file} {wildcard_problem(file)}")
    return files


# Self-supervised pretraining (rule pretrain) runs only when a weights key says `pretrained`;
# the key's rule then reads the encoder file and the library gets its path.
PRETRAINED_ENCODER = f"{RESULTS}/pretrain/encoder.pt"
WEIGHT_KEYS = {  # weights key: the key of the architecture it is loaded into
    ("classifier", "weights"): ("classifier", "arch"),
    ("segmentation", "encoder_weights"): ("segmentation", "encoder"),
}


def _pretrained(section, key):
    return parse_weights(config[section][key]) == PRETRAINED


def _check_pretrained_archs():
    """A network that starts from the pretrained encoder must be of its architecture."""
    for (section, key), (arch_section, arch_key) in WEIGHT_KEYS.items():
        arch = config[arch_section][arch_key]
        if _pretrained(section, key) and config["pretrain"]["arch"] != arch:
            raise WorkflowError(
                f"{section}.{key} is 'pretrained' but pretrain.arch is "
                f"{config['pretrain']['arch']} and {arch_section}.{arch_key} is {arch}: set "
                f"pretrain.arch to {arch}"
            )


_check_pretrained_archs()


def _check_refine():
    """Pseudo-mask keys that contradict each other (e.g. a background_quantile above quantile)
    fail here, naming them, not in the refinement jobs."""
    try:
        refine_params(config["pseudo_masks"])
    except ValueError as err:
        raise WorkflowError(f"pseudo_masks: {err}") from None


_check_refine()
PRETRAIN_EXTRA = config["pretrain"]["extra_images"]
PRETRAIN_EXTRA_IMAGES = (
    folder_images("pretrain.extra_images", PRETRAIN_EXTRA) if PRETRAIN_EXTRA else []
)


def pretrain_inputs(wildcards):
    """The extra images and the stain target they are normalized to (none without extras)."""
    if not PRETRAIN_EXTRA_IMAGES:
        return {}
    return {"extra": PRETRAIN_EXTRA_IMAGES, "target": f"{RESULTS}/stain/target.json"}


def pretrain_config():
    """The `pretrain` section as the library takes it (`extra_images` is the rule's input)."""
    return {k: v for k, v in config["pretrain"].items() if k != "extra_images"}


def weights_file(section, key):
    """The file a weights key makes its network start from: the pretrained encoder
    (`pretrained`) or a local weights file; None for random or ImageNet weights."""
    if _pretrained(section, key):
        return PRETRAINED_ENCODER
    return local_weights_file(config[section][key])


def classifier_weights():
    """The weights file the classifier starts from, if any (`classifier.weights`)."""
    weights = weights_file("classifier", "weights")
    return [weights] if weights else []


if TRAIN_ON_PATCHES and config["patches"]["tags"] == "mask" and not HAS_MASKS:
    raise WorkflowError(
        "patches.tags is 'mask' but the dataset has no pixel masks: set dataset.masks, or "
        "use patches.tags: image"
    )


NEGATIVE_PATCHES = config["pseudo_masks"]["negative_patches_background"]
if NEGATIVE_PATCHES and config["patches"]["tags"] != "mask":
    raise WorkflowError(
        "pseudo_masks.negative_patches_background needs patches.tags: mask (with tags from the "
        "image labels a patch without a tag is a negative image, background already)"
    )
if NEGATIVE_PATCHES and not HAS_MASKS:
    raise WorkflowError(
        "pseudo_masks.negative_patches_background tags patches from the real masks, and the "
        "dataset has none: set dataset.masks, or set it to false"
    )
WINDOW = config["cam"]["window_size"], config["cam"]["window_stride"]
if WINDOW[1] is not None and (WINDOW[0] is None or WINDOW[1] > WINDOW[0]):
    raise WorkflowError(
        f"cam.window_stride ({WINDOW[1]}) needs a cam.window_size at least as large "
        f"(got {WINDOW[0]})"
    )


def patch_shards():
    """The patch folders the classifier trains on (`classifier.train_on: patches`), one per
    stain shard; none when it trains on whole images."""
    return shard_dirs("patches") if TRAIN_ON_PATCHES else []


def patch_truth(wildcards):
    """Input function: the job's real masks at the working scale when patches are tagged from
    them (`patches.tags: mask`)."""
    if config["patches"]["tags"] != "mask":
        return []
    return f"{RESULTS}/truth/shards/{wildcards.shard}"


def classifier_config():
    """The `classifier` section as the library takes it (`weights: pretrained` becomes the
    pretrained encoder's path)."""
    if _pretrained("classifier", "weights"):
        return {**config["classifier"], "weights": PRETRAINED_ENCODER}
    return config["classifier"]


CLASSIFIER_MODEL = f"{RESULTS}/classifier/model.pt"
ENCODER_FROM_CLASSIFIER = (
    str(config["segmentation"]["encoder_weights"]).strip().lower() == "classifier"
)
if (
    ENCODER_FROM_CLASSIFIER
    and config["classifier"]["arch"] != config["segmentation"]["encoder"]
):
    raise WorkflowError(
        "segmentation.encoder_weights is 'classifier' but the classifier is a "
        f"{config['classifier']['arch']} and the segmentation encoder a "
        f"{config['segmentation']['encoder']}: set segmentation.encoder to "
        f"{config['classifier']['arch']}"
    )


def segmentation_weights():
    """The file the encoder starts from: the trained classifier (`encoder_weights:
    classifier`), the pretrained encoder or a local weights file; none for random or ImageNet
    weights."""
    if ENCODER_FROM_CLASSIFIER:
        return [CLASSIFIER_MODEL]
    weights = weights_file("segmentation", "encoder_weights")
    return [weights] if weights else []


SEGMENTATION_TARGETS = config["segmentation"]["targets"]
if SEGMENTATION_TARGETS == "ground_truth" and not HAS_MASKS:
    raise WorkflowError(
        "segmentation.targets is 'ground_truth' but the dataset has no pixel masks: set "
        "dataset.masks to the folder of masks, or use segmentation.targets: pseudo"
    )


def segmentation_config():
    """The `segmentation` section as the library takes it (`targets` picks the DAG's masks and
    names the validation IoUs; `encoder_weights: classifier` or `pretrained` becomes the file's
    path)."""
    cfg = dict(config["segmentation"])
    if ENCODER_FROM_CLASSIFIER:
        cfg["encoder_weights"] = CLASSIFIER_MODEL
    elif _pretrained("segmentation", "encoder_weights"):
        cfg["encoder_weights"] = PRETRAINED_ENCODER
    return cfg


def segmentation_target_inputs():
    """What train_segmentation learns from: the pseudo-mask shards, or the real masks."""
    if SEGMENTATION_TARGETS == "pseudo":
        return shard_dirs("pseudo_masks")
    return truth_inputs()


def segmentation_target_masks():
    """`{name: mask path}` of the masks train_segmentation learns from."""
    if SEGMENTATION_TARGETS == "pseudo":
        return sample_files("pseudo_masks", "masks")
    return truth_masks()


# The classes drawn in QuPath from the label maps (value c: class c - 1; a binary dataset's
# positive class, whose other class is the unannotated rest), in their colours.
MASK_LABELS = class_labels(
    DATASET_SPEC.label_space,
    CLASS_COLORS,
)
CORRECTION_TARGETS = f"{RESULTS}/corrections/targets"


def _corrections():
    """The files of `corrections.folder` (name, file, size, time), each checked in full here
    unless the last corrections job checked it at its current size and time (or its image is
    the demo's, not made yet: the job checks it then)."""
    try:
        table = list_corrections(config["corrections"]["folder"], SAMPLE_IMAGES)
        checked = checked_keys(CORRECTION_TARGETS)
        for row in table.itertuples(index=False):
            image = SAMPLE_IMAGES[row.name]
            key = (row.file, str(row.file_bytes), str(row.file_mtime_ns))
            if key not in checked and Path(image).is_file():
                read_correction(row.file, image_size(image), DATASET_SPEC.label_space)
    except CorrectionError as err:
        raise WorkflowError(f"invalid correction: {err}") from None
    return table


CORRECTIONS = _corrections()


def new_images():
    """Images of the `predict.images` folder (new patches to segment), sorted."""
    folder = config["predict"]["images"]
    return folder_images("predict.images", folder) if folder else []


def stain_sheet_names(n=6):
    """`n` sample names spread evenly over the sorted names: the rows of the
    stain-normalization figure (its script finds their originals in the manifest)."""
    picks = sorted({round(i * (len(SAMPLES) - 1) / max(n - 1, 1)) for i in range(n)})
    return [SAMPLES[i] for i in picks]


def final_outputs():
    outputs = [
        f"{RESULTS}/split/split.csv",
        f"{RESULTS}/stain/qc.csv",
        f"{RESULTS}/figures/stain_normalization.png",
        f"{RESULTS}/classifier/evaluation.json",
        f"{RESULTS}/figures/classifier_learning_curve.png",
        f"{RESULTS}/cam/summary.json",
        f"{RESULTS}/pseudo_masks/quality_summary.csv",
        f"{RESULTS}/segmentation/evaluation.json",
        f"{RESULTS}/segmentation/metrics_table.csv",
        *rules.report_tables.output,
        f"{RESULTS}/figures/learning_curves.png",
        *(
            f"{RESULTS}/figures/{kind}.png"
            for kind in ("segmentation_examples", "error_maps", "uncertainty_maps")
        ),
        *shard_dirs("qupath"),
        f"{RESULTS}/review/queue.csv",
        f"{RESULTS}/review/contact_sheet.png",
    ]
    if config["predict"]["images"]:
        outputs.append(f"{RESULTS}/predict/new")
    if config["pseudo_masks"]["save_steps"]:
        outputs.append(f"{RESULTS}/figures/pseudo_mask_steps.png")
    if DEMO:
        outputs.append(f"{DEMO_DIR}/contact_sheet.png")
    return outputs
