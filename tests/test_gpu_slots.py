"""GPU slots: device discovery, and real flock-ed slots held by real processes."""

import logging
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from histo_wsss.gpu_slots import default_lock_dir, discover_devices, gpu_slot

# Takes a slot, prints its device and CUDA_VISIBLE_DEVICES, holds it until stdin closes.
_HOLDER = """
import sys
from histo_wsss.gpu_slots import gpu_slot
with gpu_slot(sys.argv[1], sys.argv[2].split(","), timeout=5) as device:
    import os
    print(device, os.environ["CUDA_VISIBLE_DEVICES"], flush=True)
    sys.stdin.read()
"""


@pytest.fixture
def hold(tmp_path):
    """Start a process holding a slot of ``devices``; returns it and the device it took."""
    procs = []

    def start(devices):
        proc = subprocess.Popen(
            [sys.executable, "-c", _HOLDER, str(tmp_path), ",".join(devices)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        procs.append(proc)
        device, visible = proc.stdout.readline().split()
        assert visible == device
        return proc, device

    yield start
    for proc in procs:
        proc.kill()
        proc.wait()


def release(proc):
    proc.stdin.close()
    proc.wait(timeout=5)


@pytest.mark.parametrize(
    ("value", "devices"),
    [
        ("0,1", ["0", "1"]),
        (" 2, 3 ", ["2", "3"]),
        (
            "GPU-8f6e1b2a-1c2d-4e5f-9a0b-123456789abc,MIG-1f2e",
            ["GPU-8f6e1b2a-1c2d-4e5f-9a0b-123456789abc", "MIG-1f2e"],
        ),
        ("", []),
        ("-1", []),
        ("1,-1,0", ["1"]),
    ],
)
def test_devices_from_cuda_visible_devices(monkeypatch, value, devices):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", value)
    monkeypatch.setenv("PATH", "/nonexistent")
    assert discover_devices() == devices


@pytest.mark.parametrize(
    ("script", "devices"),
    [
        ('[ "$*" = "--query-gpu=index --format=csv,noheader" ] && printf "0\\n1\\n"', ["0", "1"]),
        ("echo 'NVIDIA-SMI has failed' >&2; exit 9", []),
    ],
)
def test_devices_from_nvidia_smi(monkeypatch, tmp_path, script, devices):
    smi = tmp_path / "nvidia-smi"
    smi.write_text(f"#!/bin/sh\n{script}\n")
    smi.chmod(0o755)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert discover_devices() == devices
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert discover_devices() == []


def test_lock_dir_is_per_user_unless_set(monkeypatch, tmp_path):
    monkeypatch.delenv("HISTO_WSSS_GPU_LOCK_DIR", raising=False)
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr("tempfile.tempdir", None)
    assert default_lock_dir() == tmp_path / f"histo_wsss-gpu-slots-{os.getuid()}"
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    assert default_lock_dir().name == f"histo_wsss-gpu-slots-{os.getuid()}-slurm42"
    monkeypatch.setenv("HISTO_WSSS_GPU_LOCK_DIR", str(tmp_path / "locks"))
    assert default_lock_dir() == tmp_path / "locks"


def test_holders_get_different_devices_and_the_environment_is_restored(monkeypatch, tmp_path):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    with gpu_slot(tmp_path) as first:
        assert first == os.environ["CUDA_VISIBLE_DEVICES"] == "0"
        with gpu_slot(tmp_path, ["0", "1"]) as second:  # the block sees only its own device
            assert second == os.environ["CUDA_VISIBLE_DEVICES"] == "1"
        assert os.environ["CUDA_VISIBLE_DEVICES"] == "0"
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "0,1"
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    with pytest.raises(RuntimeError), gpu_slot(tmp_path, ["0"]):
        raise RuntimeError("job failed")
    assert "CUDA_VISIBLE_DEVICES" not in os.environ
    with gpu_slot(tmp_path, ["0"]) as device:  # the failed block released its slot
        assert device == "0"


def test_processes_get_different_devices(hold, tmp_path):
    (_, a), (_, b) = hold(["0", "1"]), hold(["0", "1"])
    assert {a, b} == {"0", "1"}
    with pytest.raises(TimeoutError, match=r"no free GPU after .* held by other jobs"):
        with gpu_slot(tmp_path, ["0", "1"], timeout=0.2, poll=0.05):
            pass


def test_the_next_job_waits_until_a_slot_is_released(hold, tmp_path, caplog):
    hold(["0", "1"])
    proc, b = hold(["0", "1"])
    threading.Timer(0.5, release, [proc]).start()
    start = time.monotonic()
    with caplog.at_level(logging.INFO), gpu_slot(tmp_path, ["0", "1"], timeout=5, poll=0.05) as c:
        assert c == b
    assert time.monotonic() - start >= 0.5
    assert "busy: waiting" in caplog.text
    assert f"took device {b}" in caplog.text


def test_a_killed_job_frees_its_slot(hold, tmp_path):
    proc, device = hold(["7"])
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=5)
    with gpu_slot(tmp_path, ["7"], timeout=1, poll=0.05) as again:
        assert again == device == "7"


def test_no_device_is_a_no_op(monkeypatch, tmp_path, caplog):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    with caplog.at_level(logging.INFO), gpu_slot(tmp_path / "locks") as device:
        assert device is None
        assert os.environ["CUDA_VISIBLE_DEVICES"] == ""
    assert "no GPU: running on the CPU" in caplog.text
    assert not (tmp_path / "locks").exists()


def test_uuid_devices_get_file_safe_lock_names(tmp_path):
    with gpu_slot(tmp_path, ["MIG-GPU-8f6e/1/0"]) as device:
        assert device == os.environ["CUDA_VISIBLE_DEVICES"] == "MIG-GPU-8f6e/1/0"
        assert [p.name for p in tmp_path.iterdir()] == ["gpuMIG-GPU-8f6e_1_0.lock"]
        assert (tmp_path / "gpuMIG-GPU-8f6e_1_0.lock").read_text() == f"{os.getpid()}\n"
