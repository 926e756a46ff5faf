"""histo-wsss: weakly supervised semantic segmentation of H&E patches (see README.md)."""

from snakemake.utils import min_version, validate

min_version("9.0")


configfile: "config/config.yaml"


validate(config, "workflow/schemas/config.schema.yaml")


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/stain.smk"
include: "workflow/rules/patches.smk"
include: "workflow/rules/pretrain.smk"
include: "workflow/rules/classifier.smk"
include: "workflow/rules/cam.smk"
include: "workflow/rules/pseudo_masks.smk"
include: "workflow/rules/segmentation.smk"
include: "workflow/rules/figures.smk"
include: "workflow/rules/review.smk"
include: "workflow/rules/report.smk"


rule all:
    default_target: True
    input:
        final_outputs(),
