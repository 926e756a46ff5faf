"""Route a job's logging, warnings and progress bars into its Snakemake log file."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stderr
from pathlib import Path

from histo_wsss import checkout


@contextmanager
def job_log(path: str | Path) -> Iterator[logging.Logger]:
    """Send logging and stderr (tqdm bars, warnings, tracebacks) to ``path`` for the block.

    The first and last lines ("job started", "job finished" or "job failed") bracket the block
    with millisecond timestamps; the first names the copy of the library the job runs, which
    must be the workflow's own (:func:`histo_wsss.checkout.check`).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", buffering=1) as stream, redirect_stderr(stream):
        handler = logging.StreamHandler(stream)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root = logging.getLogger()
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        logging.captureWarnings(True)
        log = logging.getLogger("histo_wsss")
        log.info("job started (histo_wsss from %s)", checkout.LIBRARY)
        try:
            checkout.check()
            yield log
        except BaseException:
            log.exception("job failed")
            raise
        else:
            log.info("job finished")
        finally:
            root.removeHandler(handler)
            logging.captureWarnings(False)
