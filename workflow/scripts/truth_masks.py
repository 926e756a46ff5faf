"""Write one shard of real masks at the working scale (`stain.scale`)."""

from histo_wsss.classes import LabelSpace
from histo_wsss.io import atomic_dir
from histo_wsss.logs import job_log
from histo_wsss.stain import scale_masks

with job_log(snakemake.log[0]) as log:
    p = snakemake.params
    with atomic_dir(snakemake.output[0]) as out:
        scale_masks(p.names, p.masks, out, p.scale, LabelSpace(**p.labels))
    log.info("%d real masks at scale %s", len(p.names), p.scale)
