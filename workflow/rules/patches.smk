"""Patches cut from the train and val images, tagged from the image label or the real mask,
for the classifier to train on (`classifier.train_on: patches`); one job per stain shard.
"""


rule patches:
    input:
        split=f"{RESULTS}/split/split.csv",
        stain=f"{RESULTS}/stain/shards/{{shard}}",
        truth=patch_truth,
    output:
        directory(f"{RESULTS}/patches/shards/{{shard}}"),
    log:
        f"{RESULTS}/logs/patches/{{shard}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/patches/{{shard}}.tsv"
    conda:
        "../../envs/preprocess.yaml"
    threads: 1
    resources:
        mem_mb=1000,
    params:
        names=shard_members("patches"),
        images=shard_sample_files("patches", "stain", "images"),
        masks=truth_masks("patches"),
        labels=LABELS,
        patches=config["patches"],
    script:
        "../scripts/patches.py"
