"""Image-level classifier: training, evaluation and its learning curve."""


rule train_classifier:
    input:
        split=f"{RESULTS}/split/split.csv",
        stain=shard_dirs("stain"),
        patches=patch_shards(),
        weights=classifier_weights(),
    output:
        model=CLASSIFIER_MODEL,
        metrics=f"{RESULTS}/classifier/metrics.csv",
    log:
        f"{RESULTS}/logs/train_classifier.log",
    benchmark:
        f"{RESULTS}/benchmarks/train_classifier.tsv"
    conda:
        "../../envs/torch.yaml"
    threads: GPU_JOB_THREADS
    resources:
        gpu=1,
        mem_mb=8000,
    params:
        classifier=classifier_config(),
        images=sample_files("stain", "images"),
        labels=LABELS,
    script:
        "../scripts/train_classifier.py"


rule evaluate_classifier:
    input:
        model=CLASSIFIER_MODEL,
        split=f"{RESULTS}/split/split.csv",
        stain=shard_dirs("stain"),
    output:
        f"{RESULTS}/classifier/evaluation.json",
    log:
        f"{RESULTS}/logs/evaluate_classifier.log",
    benchmark:
        f"{RESULTS}/benchmarks/evaluate_classifier.tsv"
    conda:
        "../../envs/torch.yaml"
    threads: GPU_JOB_THREADS
    resources:
        gpu=1,
        mem_mb=4000,
    params:
        images=sample_files("stain", "images"),
        labels=LABELS,
        batch_size=config["classifier"]["batch_size"],
        device=config["classifier"]["device"],
    script:
        "../scripts/evaluate_classifier.py"


rule classifier_learning_curve:
    input:
        f"{RESULTS}/classifier/metrics.csv",
    output:
        report(
            f"{RESULTS}/figures/classifier_learning_curve.png",
            caption="../report/classifier_learning_curve.rst",
            category="Classifier",
            subcategory="Figures",
        ),
    log:
        f"{RESULTS}/logs/classifier_learning_curve.log",
    conda:
        "../../envs/torch.yaml"
    threads: 1
    resources:
        mem_mb=1000,
    script:
        "../scripts/classifier_learning_curve.py"
