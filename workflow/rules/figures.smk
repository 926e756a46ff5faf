"""Figures of the paper's section 3 and of stain normalization, each its own job, from saved
results only."""


rule figure_examples:
    input:
        table=f"{RESULTS}/segmentation/per_image.csv",
        predictions=f"{RESULTS}/segmentation/predictions",
        stain=shard_dirs("stain"),
        pseudo=shard_dirs("pseudo_masks"),
        truth=truth_inputs(),
        confusion=example_confusion(),
    output:
        report(
            f"{RESULTS}/figures/{{kind}}.png",
            caption="../report/example_figures.rst",
            category="Segmentation",
            subcategory="Figures",
        ),
    log:
        f"{RESULTS}/logs/figures/{{kind}}.log",
    wildcard_constraints:
        kind="segmentation_examples|error_maps|uncertainty_maps",
    conda:
        "../../envs/torch.yaml"
    threads: 1
    resources:
        mem_mb=2000,
    params:
        n_examples=config["predict"]["figure_examples"],
        threshold=config["segmentation"]["threshold"],
        labels=LABELS,
        colors=label_colors(),
    script:
        "../scripts/figure_examples.py"


rule figure_learning_curves:
    input:
        classifier=f"{RESULTS}/classifier/metrics.csv",
        segmentation=f"{RESULTS}/segmentation/metrics.csv",
    output:
        report(
            f"{RESULTS}/figures/learning_curves.png",
            caption="../report/learning_curves.rst",
            category="Segmentation",
            subcategory="Figures",
        ),
    log:
        f"{RESULTS}/logs/figures/learning_curves.log",
    conda:
        "../../envs/torch.yaml"
    threads: 1
    resources:
        mem_mb=1000,
    script:
        "../scripts/figure_learning_curves.py"


rule metrics_table:
    input:
        f"{RESULTS}/segmentation/evaluation.json",
    output:
        table=f"{RESULTS}/segmentation/metrics_table.csv",
        figure=report(
            f"{RESULTS}/figures/metrics_table.png",
            caption="../report/metrics_table.rst",
            category="Segmentation",
            subcategory="Figures",
        ),
    log:
        f"{RESULTS}/logs/figures/metrics_table.log",
    conda:
        "../../envs/torch.yaml"
    threads: 1
    resources:
        mem_mb=1000,
    script:
        "../scripts/metrics_table.py"


rule figure_stain_normalization:
    input:
        qc=f"{RESULTS}/stain/qc.csv",
        stain=shard_dirs("stain"),
        originals=dataset_inputs()["images"],
        manifest=MANIFEST,
    output:
        report(
            f"{RESULTS}/figures/stain_normalization.png",
            caption="../report/stain_normalization.rst",
            category="Data",
            subcategory="Figures",
        ),
    log:
        f"{RESULTS}/logs/figures/stain_normalization.log",
    conda:
        "../../envs/preprocess.yaml"
    threads: 1
    resources:
        mem_mb=1000,
    params:
        names=stain_sheet_names(),
        scale=config["stain"]["scale"],
    script:
        "../scripts/figure_stain.py"
