"""Self-supervised pretraining of the ResNet encoder on the train and val images."""


rule pretrain:
    input:
        unpack(pretrain_inputs),
        split=f"{RESULTS}/split/split.csv",
        stain=shard_dirs("stain"),
    output:
        encoder=PRETRAINED_ENCODER,
        metrics=f"{RESULTS}/pretrain/metrics.csv",
    log:
        f"{RESULTS}/logs/pretrain.log",
    benchmark:
        f"{RESULTS}/benchmarks/pretrain.tsv"
    conda:
        "../../envs/torch.yaml"
    threads: GPU_JOB_THREADS
    resources:
        gpu=1,
        mem_mb=8000,
    params:
        pretrain=pretrain_config(),
        images=sample_files("stain", "images"),
        stain=config["stain"],
    script:
        "../scripts/pretrain.py"
