"""Class activation maps of each class in an image's tags, in shards that each load the model
once."""


rule cams:
    input:
        model=CLASSIFIER_MODEL,
        split=f"{RESULTS}/split/split.csv",
        stain=upstream_shards("cam", "stain"),
    output:
        directory(f"{RESULTS}/cam/shards/{{shard}}"),
    log:
        f"{RESULTS}/logs/cams/{{shard}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/cams/{{shard}}.tsv"
    conda:
        "../../envs/torch.yaml"
    threads: GPU_JOB_THREADS
    resources:
        gpu=1,
        mem_mb=4000,
    params:
        names=shard_members("cam"),
        images=shard_sample_files("cam", "stain", "images"),
        labels=LABELS,
        cam=config["cam"],
    script:
        "../scripts/cams.py"


rule cam_summary:
    input:
        cams=shard_dirs("cam"),
        split=f"{RESULTS}/split/split.csv",
        truth=truth_inputs(),
    output:
        f"{RESULTS}/cam/summary.json",
    log:
        f"{RESULTS}/logs/cam_summary.log",
    conda:
        "../../envs/torch.yaml"
    threads: 1
    resources:
        mem_mb=2000,
    params:
        masks=truth_masks(),
        labels=LABELS,
    script:
        "../scripts/cam_summary.py"
