"""Job logs: everything a job says, bracketed by timed start and end lines."""

import logging
import sys
import warnings

import pytest
from tqdm import tqdm

from histo_wsss.checkout import LIBRARY
from histo_wsss.logs import job_log, progress


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


def test_a_job_log_file_gets_a_progress_line_per_tenth_and_no_bar_text(tmp_path):
    path = tmp_path / "job.log"
    with job_log(path):
        assert list(progress(range(20), "pseudo-masks", "img")) == list(range(20))
        bar = progress(range(5), "epoch 1/3", "batch", lines=0)
        for _ in bar:
            bar.set_postfix(loss="0.5")
        bar.close()
    text = path.read_text()
    assert "\r" not in text and "it/s" not in text and "batch" not in text
    lines = [line for line in text.splitlines() if "pseudo-masks: " in line]
    assert len(lines) == 10
    assert "pseudo-masks: 2/20 img (10 %)" in lines[0]
    assert "pseudo-masks: 20/20 img (100 %)" in lines[-1]


def test_fewer_items_than_progress_lines_give_one_line_each(caplog):
    with caplog.at_level(logging.INFO, logger="histo_wsss"):
        list(progress(["a", "b", "c"], "cams", "img"))
    assert [r.getMessage().split(",")[0] for r in caplog.records] == [
        "cams: 1/3 img (33 %)",
        "cams: 2/3 img (66 %)",
        "cams: 3/3 img (100 %)",
    ]


def test_a_terminal_gets_a_tqdm_bar(monkeypatch):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert isinstance(progress([1, 2], "cams", "img"), tqdm)
