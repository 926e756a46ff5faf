"""Atomic outputs."""

import os

import pytest

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
