"""CAM -> pseudo-mask refinement in parallel shards (with the untagged patches of their images
where those are background), and the masks' quality."""


rule pseudo_masks:
    input:
        split=f"{RESULTS}/split/split.csv",
        cams=upstream_shards("pseudo_masks", "cam"),
        stain=upstream_shards("pseudo_masks", "stain"),
        truth=upstream_shards("pseudo_masks", "truth") if HAS_MASKS else [],
        patches=upstream_shards("pseudo_masks", "patches") if NEGATIVE_PATCHES else [],
    output:
        directory(f"{RESULTS}/pseudo_masks/shards/{{shard}}"),
    log:
        f"{RESULTS}/logs/pseudo_masks/{{shard}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/pseudo_masks/{{shard}}.tsv"
    conda:
        "../../envs/refine.yaml"
    threads: 1
    resources:
        mem_mb=2000,
    params:
        names=shard_members("pseudo_masks"),
        images=shard_sample_files("pseudo_masks", "stain", "images"),
        tissue=shard_sample_files("pseudo_masks", "stain", "tissue"),
        cams=shard_sample_files("pseudo_masks", "cam", "cams", ".npy"),
        masks=truth_masks("pseudo_masks"),
        labels=LABELS,
        refine=config["pseudo_masks"],
        patch_size=config["patches"]["size"] if NEGATIVE_PATCHES else None,
    script:
        "../scripts/pseudo_masks.py"


rule pseudo_mask_quality:
    input:
        shards=shard_dirs("pseudo_masks"),
        split=f"{RESULTS}/split/split.csv",
    output:
        table=f"{RESULTS}/pseudo_masks/quality.csv",
        summary=f"{RESULTS}/pseudo_masks/quality_summary.csv",
        classes=f"{RESULTS}/pseudo_masks/class_scores.csv",
    log:
        f"{RESULTS}/logs/pseudo_mask_quality.log",
    conda:
        "../../envs/refine.yaml"
    threads: 1
    resources:
        mem_mb=1000,
    params:
        labels=LABELS,
    script:
        "../scripts/pseudo_mask_quality.py"


rule pseudo_mask_figure:
    input:
        quality=f"{RESULTS}/pseudo_masks/quality.csv",
        pseudo=shard_dirs("pseudo_masks"),
        cams=shard_dirs("cam"),
        stain=shard_dirs("stain"),
        truth=truth_inputs(),
    output:
        report(
            f"{RESULTS}/figures/pseudo_mask_steps.png",
            caption="../report/pseudo_mask_steps.rst",
            category="Pseudo-masks",
            subcategory="Figures",
        ),
    log:
        f"{RESULTS}/logs/pseudo_mask_figure.log",
    conda:
        "../../envs/refine.yaml"
    threads: 1
    resources:
        mem_mb=2000,
    params:
        final_step=config["pseudo_masks"]["final_step"],
        n_images=6,
        labels=LABELS,
        colors=label_colors(),
    script:
        "../scripts/pseudo_mask_figure.py"
