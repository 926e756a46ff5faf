"""Route a job's logging, warnings and progress into its Snakemake log file."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, redirect_stderr
from pathlib import Path
from typing import TypeVar

from tqdm import tqdm

from histo_wsss import checkout

T = TypeVar("T")

_log = logging.getLogger(__name__)


@contextmanager
def job_log(path: str | Path) -> Iterator[logging.Logger]:
    """Send logging and stderr (warnings, tracebacks) to ``path`` for the block.

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


def progress(
    items: Iterable[T], desc: str, unit: str, *, lines: int = 10
) -> tqdm | _LoggedProgress:
    """``items`` with their progress shown: a tqdm bar when stderr is a terminal.

    Elsewhere (a job's log file, where a bar's carriage returns pile up as kilobytes of text)
    one plain INFO line each time another ``1 / lines`` of ``len(items)`` is done; ``lines=0``
    for loops that log their own line (the training epochs). Either way the result iterates
    ``items`` and takes ``set_postfix`` and ``close`` (shown on the bar only).
    """
    if sys.stderr.isatty():
        return tqdm(items, desc=desc, unit=unit, file=sys.stderr)
    return _LoggedProgress(items, desc, unit, lines)


class _LoggedProgress:
    """The log file's stand-in for a tqdm bar: ``lines`` lines "desc: done/total unit (%)"."""

    def __init__(self, items: Iterable[T], desc: str, unit: str, lines: int) -> None:
        self.items, self.desc, self.unit, self.lines = items, desc, unit, lines

    def __iter__(self) -> Iterator[T]:
        total = len(self.items) if self.lines else 0
        start, shown = time.perf_counter(), 0
        for done, item in enumerate(self.items, 1):
            yield item
            step = done * self.lines // total if total else 0
            if step > shown:
                shown = step
                _log.info(
                    "%s: %d/%d %s (%d %%), %.1f s",
                    *(self.desc, done, total, self.unit, 100 * done // total),
                    time.perf_counter() - start,
                )

    def set_postfix(self, **_: object) -> None:
        """Nothing: a bar's running figures have no line of their own in a log file."""

    def close(self) -> None:
        """Nothing to close."""
