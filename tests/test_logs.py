"""Job logs: everything a job says, bracketed by timed start and end lines."""

import logging
import sys
import warnings

import pytest

from histo_wsss.logs import job_log


def test_a_job_log_holds_logging_stderr_and_warnings_between_start_and_end(tmp_path):
    path = tmp_path / "logs" / "job.log"
    with job_log(path) as log:
        log.info("working")
        print("a progress bar", file=sys.stderr)
        warnings.warn("careful", UserWarning, stacklevel=1)
    lines = path.read_text().splitlines()
    assert lines[0].endswith("INFO histo_wsss: job started")
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
