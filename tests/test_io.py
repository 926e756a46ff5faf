"""Atomic outputs."""

import os
import subprocess
import sys

import pytest
from workflow_runner import unprivileged

from histo_wsss.io import atomic_dir, atomic_path


def test_atomic_outputs_get_ordinary_permissions_and_vanish_on_error(tmp_path):
    with atomic_path(tmp_path / "a.txt") as tmp:
        tmp.write_text("x")
    with atomic_dir(tmp_path / "d") as tmp:
        (tmp / "f").write_text("y")
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o666 & ~umask
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o777 & ~umask
    with pytest.raises(RuntimeError), atomic_path(tmp_path / "b.txt") as tmp:
        tmp.write_text("partial")
        raise RuntimeError("job failed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "d"]


def test_json_is_strict_nan_becomes_null(tmp_path):
    import json

    from histo_wsss.io import write_json

    write_json(tmp_path / "a.json", {"auc": float("nan"), "x": [1.0, float("inf")], "n": 3})
    assert json.loads((tmp_path / "a.json").read_text()) == {"auc": None, "n": 3, "x": [1.0, None]}


KILLED_WRITER = """
import os, signal, sys
from histo_wsss.io import atomic_dir, atomic_path
with atomic_dir(sys.argv[1]) as tmp, atomic_path(sys.argv[2]) as tmp_file:
    (tmp / "half").write_text("half written")
    tmp_file.write_text("half written")
    os.kill(os.getpid(), signal.SIGKILL)
"""


def test_the_temporaries_of_a_killed_writer_go_when_its_output_is_next_written(tmp_path):
    subprocess.run([sys.executable, "-c", KILLED_WRITER, tmp_path / "1", tmp_path / "m.pt"])
    stale = sorted(p.name for p in tmp_path.iterdir())
    assert len(stale) == 2 and stale[0].startswith(".1.") and stale[1].startswith(".m.pt.")
    # another output's temporaries, whose names start alike, are not touched
    others = [tmp_path / ".1.pt.abcd1234.pt", tmp_path / ".m.pt.png.abcd1234.png"]
    for path in others:
        path.write_text("another job's")
    with atomic_dir(tmp_path / "1") as tmp:
        (tmp / "whole").write_text("y")
    with atomic_path(tmp_path / "m.pt") as tmp:
        tmp.write_text("whole")
    assert sorted(tmp_path.iterdir()) == sorted([*others, tmp_path / "1", tmp_path / "m.pt"])


def test_an_output_in_a_folder_without_write_permission_names_the_folder(tmp_path):
    (tmp_path / "figures").mkdir()
    (tmp_path / "figures").chmod(0o555)
    code = "from histo_wsss.io import write_json; write_json('figures/a.json', {})"
    cmd = [*unprivileged(), sys.executable, "-c", code]
    result = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode != 0
    assert (
        "PermissionError: cannot write figures/a.json: no permission to write into the folder "
        "figures" in result.stderr
    )
