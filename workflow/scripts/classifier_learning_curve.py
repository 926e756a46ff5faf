"""The classifier's learning curve from its saved per-epoch metrics."""

from histo_wsss.classifier import learning_curve
from histo_wsss.logs import job_log

with job_log(snakemake.log[0]):
    learning_curve(snakemake.input[0], snakemake.output[0])
