"""Macenko stain normalization and tissue masks, in parallel shards, with a QC table; the real
masks at the same working scale."""


rule stain_target:
    input:
        unpack(stain_target_inputs),
    output:
        f"{RESULTS}/stain/target.json",
    log:
        f"{RESULTS}/logs/stain_target.log",
    benchmark:
        f"{RESULTS}/benchmarks/stain_target.tsv"
    conda:
        "../../envs/preprocess.yaml"
    threads: 1
    resources:
        mem_mb=2000,
    params:
        images=SAMPLE_IMAGES if STAIN_AUTO else {},
        stain=config["stain"],
    script:
        "../scripts/stain_target.py"


rule normalize_stain:
    input:
        target=f"{RESULTS}/stain/target.json",
        images=shard_files("stain", SAMPLE_IMAGES, dataset_paths()[0]),
    output:
        directory(f"{RESULTS}/stain/shards/{{shard}}"),
    log:
        f"{RESULTS}/logs/normalize_stain/{{shard}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/normalize_stain/{{shard}}.tsv"
    conda:
        "../../envs/preprocess.yaml"
    threads: 1
    resources:
        mem_mb=2000,
    params:
        names=shard_members("stain"),
        images=shard_file_paths("stain", SAMPLE_IMAGES),
        stain=config["stain"],
    script:
        "../scripts/normalize_stain.py"


rule stain_qc:
    input:
        shard_dirs("stain"),
    output:
        f"{RESULTS}/stain/qc.csv",
    log:
        f"{RESULTS}/logs/stain_qc.log",
    conda:
        "../../envs/preprocess.yaml"
    threads: 1
    resources:
        mem_mb=1000,
    script:
        "../scripts/stain_qc.py"


rule truth_masks:
    input:
        masks=shard_files("truth", SAMPLE_MASKS, dataset_paths()[2]),
    output:
        directory(f"{RESULTS}/truth/shards/{{shard}}"),
    log:
        f"{RESULTS}/logs/truth_masks/{{shard}}.log",
    conda:
        "../../envs/preprocess.yaml"
    threads: 1
    resources:
        mem_mb=1000,
    params:
        names=shard_members("truth"),
        masks=shard_file_paths("truth", SAMPLE_MASKS),
        scale=config["stain"]["scale"],
        labels=LABELS,
        fingerprint=shard_fingerprint("truth", "mask"),
    script:
        "../scripts/truth_masks.py"
