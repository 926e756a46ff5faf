"""Give each GPU job of a machine its own GPU: one ``flock``-ed slot per device.

Snakemake's ``--resources gpu=K`` only bounds how many GPU jobs run at once; it hands out no
device ids. :func:`gpu_slot` makes a job take the first free device of the machine, with an
exclusive ``fcntl.flock`` on ``<lock dir>/gpu<id>.lock``, and sets ``CUDA_VISIBLE_DEVICES`` to
that device for the block, where torch sees it as ``cuda:0``. The kernel drops a ``flock``
when its holder dies, so a crashed job (even one killed with SIGKILL) frees its slot: there are
no stale locks to clean up.

``CUDA_VISIBLE_DEVICES`` is read when CUDA is initialised, which torch does lazily, on first use
(``torch.cuda.is_available()``, ``device_count()``, a tensor on ``cuda``), not at
``import torch`` ("lazily initialized, so you can always import it", torch.cuda's docs). Enter
the slot before any such call.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

__all__ = ["default_lock_dir", "discover_devices", "gpu_slot"]

_log = logging.getLogger(__name__)


def discover_devices() -> list[str]:
    """The machine's GPU ids (indices or UUIDs), in order; ``[]`` when there is none.

    From ``CUDA_VISIBLE_DEVICES`` when it is set (``""`` or ``-1`` mean no GPU; as in CUDA, the
    list ends at the first negative entry), else from ``nvidia-smi`` when it is on ``PATH``.
    """
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        devices = []
        for entry in visible.split(","):
            entry = entry.strip()
            if not entry or entry.startswith("-"):
                break
            devices.append(entry)
        return devices
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    try:
        out = subprocess.run(
            [smi, "--query-gpu=index", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout
    except (OSError, subprocess.SubprocessError) as err:
        _log.warning("nvidia-smi failed, assuming no GPU: %s", err)
        return []
    return [line.strip() for line in out.splitlines() if line.strip()]


def default_lock_dir() -> Path:
    """``$HISTO_WSSS_GPU_LOCK_DIR``, else ``<tmp>/histo_wsss-gpu-slots-<uid>``.

    Shared by all workflow runs of the user on the machine. Inside a SLURM job the folder is
    that job's own (``-slurm<job id>`` appended): SLURM already gives each job its devices,
    which different jobs may all see under the same id ``0``.
    """
    if os.environ.get("HISTO_WSSS_GPU_LOCK_DIR"):
        return Path(os.environ["HISTO_WSSS_GPU_LOCK_DIR"])
    name = f"histo_wsss-gpu-slots-{os.getuid()}"
    if os.environ.get("SLURM_JOB_ID"):
        name += f"-slurm{os.environ['SLURM_JOB_ID']}"
    return Path(tempfile.gettempdir()) / name


def _take_free(paths: dict[str, Path]) -> tuple[str, int] | None:
    """The first device whose lock file could be ``flock``-ed, with the descriptor holding it."""
    for device, path in paths.items():
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())  # who holds it, for `cat gpu0.lock`
        return device, fd
    return None


@contextmanager
def gpu_slot(
    lock_dir: str | Path | None = None,
    devices: Sequence[str] | None = None,
    timeout: float | None = None,
    poll: float = 0.5,
) -> Iterator[str | None]:
    """Hold the first free GPU of ``devices`` for the block, with it alone visible to CUDA.

    ``lock_dir``: defaults to :func:`default_lock_dir`. ``devices``: defaults to
    :func:`discover_devices`. When all are taken, retries every ``poll`` seconds, up to
    ``timeout`` seconds (None: no limit), then raises ``TimeoutError``. Yields the device id and
    restores ``CUDA_VISIBLE_DEVICES`` on exit. With no device, yields None and changes nothing.
    """
    devices = discover_devices() if devices is None else list(devices)
    if not devices:
        _log.info("no GPU: running on the CPU")
        yield None
        return
    lock_dir = Path(lock_dir) if lock_dir is not None else default_lock_dir()
    lock_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    paths = {d: lock_dir / f"gpu{re.sub(r'[^A-Za-z0-9._-]', '_', d)}.lock" for d in devices}
    start, announced = time.monotonic(), False
    while (taken := _take_free(paths)) is None:
        waited = time.monotonic() - start
        if timeout is not None and waited >= timeout:
            raise TimeoutError(
                f"no free GPU after {waited:.1f} s: all of {devices} are held by other jobs "
                f"(locks in {lock_dir})"
            )
        if not announced:
            _log.info("all GPUs %s are busy: waiting for a free one", devices)
            announced = True
        time.sleep(poll)
    device, fd = taken
    previous = os.environ.get("CUDA_VISIBLE_DEVICES")
    os.environ["CUDA_VISIBLE_DEVICES"] = device
    _log.info(
        "GPU slot: took device %s (CUDA_VISIBLE_DEVICES=%s, locks in %s)", device, device, lock_dir
    )
    try:
        yield device
    finally:
        if previous is None:
            os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = previous
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
