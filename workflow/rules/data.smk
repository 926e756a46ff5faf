"""The embedded demo dataset and the train/val/test split."""


rule demo_dataset:
    output:
        images=directory(f"{DEMO_DIR}/images"),
        masks=directory(f"{DEMO_DIR}/masks"),
        labels=f"{DEMO_DIR}/labels.csv",
    log:
        f"{RESULTS}/logs/demo_dataset.log",
    benchmark:
        f"{RESULTS}/benchmarks/demo_dataset.tsv"
    conda:
        "../../envs/preprocess.yaml"
    threads: 1
    resources:
        mem_mb=1000,
    params:
        demo=demo_params(),
        classes=config["dataset"]["classes"],
        positive_class=config["dataset"]["positive_class"],
    script:
        "../scripts/demo_dataset.py"


rule demo_contact_sheet:
    input:
        images=f"{DEMO_DIR}/images",
        masks=f"{DEMO_DIR}/masks",
        labels=f"{DEMO_DIR}/labels.csv",
    output:
        report(
            f"{DEMO_DIR}/contact_sheet.png",
            caption="../report/contact_sheet.rst",
            category="Data",
            subcategory="Figures",
        ),
    log:
        f"{RESULTS}/logs/demo_contact_sheet.log",
    conda:
        "../../envs/preprocess.yaml"
    threads: 1
    resources:
        mem_mb=1000,
    params:
        # the multi-class demo's classes and their colours; None: the binary demo
        colors=label_colors() or None,
    script:
        "../scripts/demo_contact_sheet.py"


rule dataset_manifest:
    input:
        labels=dataset_paths()[1],
    output:
        MANIFEST,
    log:
        f"{RESULTS}/logs/dataset_manifest.log",
    conda:
        "../../envs/preprocess.yaml"
    threads: 1
    resources:
        mem_mb=1000,
    params:
        images=SAMPLE_IMAGES,
        masks=SAMPLE_MASKS if HAS_MASKS else {},
        # not the files as inputs: Snakemake tracking 60,000 of them took most of a large DAG
        fingerprint=dataset_fingerprint(),
    script:
        "../scripts/dataset_manifest.py"


rule split:
    input:
        **dataset_inputs(),
    output:
        f"{RESULTS}/split/split.csv",
    log:
        f"{RESULTS}/logs/split.log",
    conda:
        "../../envs/preprocess.yaml"
    threads: 1
    resources:
        mem_mb=1000,
    params:
        dataset=dataset_config(),
        split=config["split"],
        min_class_images=MIN_CLASS_IMAGES_NEEDED,
    script:
        "../scripts/split.py"
