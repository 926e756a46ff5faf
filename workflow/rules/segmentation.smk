"""Segmentation network on the pseudo-masks (or the real masks): training, prediction,
evaluation."""


rule train_segmentation:
    input:
        split=f"{RESULTS}/split/split.csv",
        stain=shard_dirs("stain"),
        targets=segmentation_target_inputs(),
        corrections=CORRECTION_TARGETS,
        weights=segmentation_weights(),
    output:
        model=f"{RESULTS}/segmentation/model.pt",
        metrics=f"{RESULTS}/segmentation/metrics.csv",
    log:
        f"{RESULTS}/logs/train_segmentation.log",
    benchmark:
        f"{RESULTS}/benchmarks/train_segmentation.tsv"
    conda:
        "../../envs/torch.yaml"
    threads: GPU_JOB_THREADS
    resources:
        gpu=1,
        mem_mb=8000,
    params:
        segmentation=segmentation_config(),
        images=sample_files("stain", "images"),
        masks=segmentation_target_masks(),
        labels=LABELS,
    script:
        "../scripts/train_segmentation.py"


rule predict:
    input:
        model=f"{RESULTS}/segmentation/model.pt",
        split=f"{RESULTS}/split/split.csv",
        stain=shard_dirs("stain"),
    output:
        directory(f"{RESULTS}/segmentation/predictions"),
    log:
        f"{RESULTS}/logs/predict.log",
    benchmark:
        f"{RESULTS}/benchmarks/predict.tsv"
    conda:
        "../../envs/torch.yaml"
    threads: GPU_JOB_THREADS
    resources:
        gpu=1,
        mem_mb=4000,
    params:
        images=sample_files("stain", "images"),
        labels=LABELS,
        threshold=config["segmentation"]["threshold"],
        device=config["segmentation"]["device"],
        batch_size=config["predict"]["batch_size"],
    script:
        "../scripts/predict.py"


rule evaluate_segmentation:
    input:
        split=f"{RESULTS}/split/split.csv",
        predictions=f"{RESULTS}/segmentation/predictions",
        pseudo=shard_dirs("pseudo_masks"),
        truth=truth_inputs(),
    output:
        table=f"{RESULTS}/segmentation/per_image.csv",
        summary=f"{RESULTS}/segmentation/evaluation.json",
        confusion=f"{RESULTS}/segmentation/confusion.csv",
    log:
        f"{RESULTS}/logs/evaluate_segmentation.log",
    conda:
        "../../envs/torch.yaml"
    threads: 1
    resources:
        mem_mb=2000,
    params:
        pseudo=sample_files("pseudo_masks", "masks"),
        masks=truth_masks(),
        labels=LABELS,
        threshold=config["segmentation"]["threshold"],
    script:
        "../scripts/evaluate_segmentation.py"


rule predict_new:
    input:
        model=f"{RESULTS}/segmentation/model.pt",
        target=f"{RESULTS}/stain/target.json",
        images=new_images(),
    output:
        directory(f"{RESULTS}/predict/new"),
    log:
        f"{RESULTS}/logs/predict_new.log",
    benchmark:
        f"{RESULTS}/benchmarks/predict_new.tsv"
    conda:
        "../../envs/torch.yaml"
    threads: GPU_JOB_THREADS
    resources:
        gpu=1,
        mem_mb=4000,
    params:
        stain=config["stain"],
        labels=LABELS,
        threshold=config["segmentation"]["threshold"],
        device=config["segmentation"]["device"],
        batch_size=config["predict"]["batch_size"],
    script:
        "../scripts/predict_new.py"
