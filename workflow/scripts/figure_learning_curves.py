"""Both models' learning curves in one figure."""

from histo_wsss.figures import learning_curves
from histo_wsss.logs import job_log

with job_log(snakemake.log[0]):
    learning_curves(snakemake.input.classifier, snakemake.input.segmentation, snakemake.output[0])
