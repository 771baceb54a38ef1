from pathlib import Path

import pytest

from components.atomic import atomic_dir, atomic_file


def test_atomic_dir_replaces_the_old_output_only_when_complete(tmp_path: Path):
    final = tmp_path / "out"
    final.mkdir()
    (final / "old.txt").write_text("old")
    with atomic_dir(final) as tmp:
        (tmp / "new.txt").write_text("new")
        assert (final / "old.txt").exists(), "the old output must stay readable while the new one is written"
    assert sorted(p.name for p in final.iterdir()) == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_atomic_dir_failure_leaves_the_old_output_and_no_debris(tmp_path: Path):
    final = tmp_path / "out"
    final.mkdir()
    (final / "old.txt").write_text("old")
    with pytest.raises(RuntimeError), atomic_dir(final) as tmp:
        (tmp / "half.txt").write_text("half")
        raise RuntimeError("killed mid-write")
    assert sorted(p.name for p in final.iterdir()) == ["old.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_atomic_file_failure_writes_nothing(tmp_path: Path):
    final = tmp_path / "table.json"
    with pytest.raises(ValueError), atomic_file(final) as tmp:
        tmp.write_text("{half")
        raise ValueError("bad row")
    assert list(tmp_path.iterdir()) == []
    with atomic_file(final) as tmp:
        tmp.write_text("{}")
    assert final.read_text() == "{}"
