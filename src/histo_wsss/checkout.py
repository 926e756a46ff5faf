"""Jobs run the library of the checkout whose Snakefile started them.

With one Python environment shared by two clones (or a non-editable install), ``import
histo_wsss`` in a job would find the installed copy, not the one beside the Snakefile, and
the job would silently run other code. The Snakefile calls :func:`pin` (its ``src/`` first on
``PYTHONPATH``, which every job inherits); :func:`check` refuses any other copy in a job.
"""

from __future__ import annotations

import os
from pathlib import Path

LIBRARY = Path(__file__).resolve().parent
_VARIABLE = "HISTO_WSSS_SRC"


def pin(src: str | os.PathLike) -> None:
    """Make the jobs started from this process import the library under ``src``."""
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    os.environ["PYTHONPATH"] = os.pathsep.join([str(src), *paths])
    os.environ[_VARIABLE] = str(src)


def check() -> None:
    """Raise ``ImportError`` when this library is not the one under the ``src`` that
    :func:`pin` named (nothing to check when nothing was pinned)."""
    src = os.environ.get(_VARIABLE)
    if src and LIBRARY.parent != Path(src).resolve():
        raise ImportError(
            f"this job imported histo_wsss from {LIBRARY}, not from the workflow's checkout "
            f"({src}/histo_wsss); run snakemake with that checkout's Snakefile, or remove "
            "the other copy from the Python environment"
        )
