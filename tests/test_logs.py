"""Job logs: everything a job says, bracketed by timed start and end lines."""

import logging
import sys
import warnings

import pytest

from histo_wsss.checkout import LIBRARY
from histo_wsss.logs import job_log


def test_a_job_log_holds_logging_stderr_and_warnings_between_start_and_end(tmp_path):
    path = tmp_path / "logs" / "job.log"
    with job_log(path) as log:
        log.info("working")
        print("a progress bar", file=sys.stderr)
        warnings.warn("careful", UserWarning, stacklevel=1)
    lines = path.read_text().splitlines()
    assert lines[0].endswith(f"INFO histo_wsss: job started (histo_wsss from {LIBRARY})")
    assert lines[-1].endswith("INFO histo_wsss: job finished")
    text = "\n".join(lines)
    assert "working" in text and "a progress bar" in text and "careful" in text
    assert not any(
        isinstance(h, logging.StreamHandler) and h.stream.closed
        for h in logging.getLogger().handlers
    )


def test_a_failed_job_logs_its_traceback_last(tmp_path):
    path = tmp_path / "job.log"
    with pytest.raises(ValueError), job_log(path):
        raise ValueError("bad input.png: not RGB")
    text = path.read_text()
    assert "job failed" in text and "ValueError: bad input.png: not RGB" in text
    assert "job finished" not in text


def test_a_job_refuses_another_copy_of_the_library_than_the_workflows(tmp_path, monkeypatch):
    monkeypatch.setenv("HISTO_WSSS_SRC", str(tmp_path / "other-clone" / "src"))
    with (
        pytest.raises(ImportError, match="this job imported histo_wsss from"),
        job_log(tmp_path / "job.log"),
    ):
        raise AssertionError("the job ran")
    assert (
        f"not from the workflow's checkout ({tmp_path}/other-clone/src/histo_wsss)"
        in (tmp_path / "job.log").read_text()
    )
    monkeypatch.setenv("HISTO_WSSS_SRC", str(LIBRARY.parent))
    with job_log(tmp_path / "job.log"):
        pass
