"""Each CSV or JSON result of the report as a self-contained HTML table."""

from histo_wsss.logs import job_log
from histo_wsss.report_tables import write_table_page

TITLES = {
    "stain_qc": "Stain-normalization QC per image",
    "classifier_evaluation": "Image-level classifier per split",
    "cam_summary": "CAM peak inside the real mask per split",
    "pseudo_mask_quality": "Pseudo-mask after each refinement step, per image",
    "pseudo_mask_quality_summary": "Pseudo-mask quality after each refinement step",
    "pseudo_mask_class_scores": "Pseudo-mask quality per class after each refinement step",
    "segmentation_evaluation": "Segmentation network per split (every score)",
    "metrics_table": "Segmentation network per split (main scores)",
    "segmentation_per_image": "Segmentation network per image",
}

with job_log(snakemake.log[0]) as log:
    for name, path in snakemake.output.items():
        write_table_page(snakemake.input[name], path, TITLES[name])
        log.info("%s -> %s", snakemake.input[name], path)
