"""One shard's pseudo-masks and predicted masks as QuPath GeoJSON, at full resolution: one
annotation class per class of the label maps."""

from pathlib import Path

from histo_wsss.classes import LabelSpace
from histo_wsss.corrections import image_size
from histo_wsss.io import atomic_dir
from histo_wsss.logs import job_log
from histo_wsss.qupath import Label, mask_features, write_geojson

with job_log(snakemake.log[0]) as log:
    p = snakemake.params
    labels = [Label(**label) for label in p.labels]
    space = LabelSpace(**p.label_space)
    sources = {
        "pseudo_masks": Path(snakemake.input.pseudo) / "masks",
        "predictions": Path(snakemake.input.predictions) / "masks",
    }
    counts = dict.fromkeys(sources, 0)
    with atomic_dir(snakemake.output[0]) as out:
        for name, original in zip(p.names, p.originals, strict=True):
            size = image_size(original)
            for kind, folder in sources.items():
                # label maps: value c is class c - 1 (a binary dataset's positive class)
                mask = space.read_labels(folder / f"{name}.png")
                features = mask_features(mask, labels, size, p.tolerance)
                write_geojson(out / kind / f"{name}.geojson", features)
                counts[kind] += len(features)
    log.info(
        "%d images: %d pseudo-mask and %d prediction annotations",
        len(p.names), counts["pseudo_masks"], counts["predictions"],
    )  # fmt: skip
