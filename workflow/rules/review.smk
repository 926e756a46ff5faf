"""Human in the loop: masks out to QuPath, a review queue, corrected masks back in."""


rule corrections:
    input:
        split=f"{RESULTS}/split/split.csv",
    output:
        directory(CORRECTION_TARGETS),
    log:
        f"{RESULTS}/logs/corrections.log",
    benchmark:
        f"{RESULTS}/benchmarks/corrections.tsv"
    conda:
        "../../envs/refine.yaml"
    threads: 1
    resources:
        mem_mb=2000,
    params:
        # not the files as inputs: a digest of their names, sizes and times (the manifest's way)
        fingerprint=digest(CORRECTIONS),
        files=dict(zip(CORRECTIONS["name"], CORRECTIONS["file"])),
        images={n: SAMPLE_IMAGES[n] for n in CORRECTIONS["name"]},
        labels=LABELS,
        scale=config["stain"]["scale"],
        weight=config["corrections"]["weight"],
    script:
        "../scripts/corrections.py"


rule qupath_export:
    input:
        pseudo=f"{RESULTS}/pseudo_masks/shards/{{shard}}",
        predictions=f"{RESULTS}/segmentation/predictions",
    output:
        directory(f"{RESULTS}/qupath/shards/{{shard}}"),
    log:
        f"{RESULTS}/logs/qupath_export/{{shard}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/qupath_export/{{shard}}.tsv"
    conda:
        "../../envs/refine.yaml"
    threads: 1
    resources:
        mem_mb=1000,
    params:
        names=shard_members("qupath"),
        originals=shard_file_paths("qupath", SAMPLE_IMAGES),
        labels=[asdict(label) for label in MASK_LABELS],
        label_space=LABELS,
        tolerance=config["qupath"]["simplify_px"],
    script:
        "../scripts/qupath_export.py"


rule review_queue:
    input:
        split=f"{RESULTS}/split/split.csv",
        predictions=f"{RESULTS}/segmentation/predictions",
        pseudo=shard_dirs("pseudo_masks"),
        corrections=CORRECTION_TARGETS,
        stain=shard_dirs("stain"),
        qupath=shard_dirs("qupath"),
        manifest=MANIFEST,
    output:
        queue=f"{RESULTS}/review/queue.csv",
        sheet=report(
            f"{RESULTS}/review/contact_sheet.png",
            caption="../report/review_contact_sheet.rst",
            category="Review",
        ),
    log:
        f"{RESULTS}/logs/review_queue.log",
    benchmark:
        f"{RESULTS}/benchmarks/review_queue.tsv"
    conda:
        "../../envs/refine.yaml"
    threads: 1
    resources:
        mem_mb=2000,
    params:
        # the files are found in the input folders (shard_files), not listed here: the report
        # prints a figure's params in its info panel
        review=config["review"],
        threshold=config["segmentation"]["threshold"],
        labels=LABELS,
    script:
        "../scripts/review_queue.py"
