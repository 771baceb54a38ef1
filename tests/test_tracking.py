from pathlib import Path

from components.tracking import dvc_hashes, flatten, git_commit


def test_dvc_hashes_come_from_every_out_in_dvc_lock(tmp_path: Path):
    (tmp_path / "dvc.lock").write_text(
        "schema: '2.0'\nstages:\n"
        "  curate:\n    cmd: x\n    outs:\n    - path: outputs/tiny/data\n      md5: abc.dir\n"
        "  base-model:\n    cmd: y\n    outs:\n    - path: outputs/tiny/base_model\n      md5: def.dir\n"
    )
    assert dvc_hashes(tmp_path) == {"dvc.outputs/tiny/data": "abc.dir", "dvc.outputs/tiny/base_model": "def.dir"}
    assert dvc_hashes(tmp_path / "elsewhere") == {}


def test_flatten_nested_params():
    assert flatten({"a": {"b": 1, "c": {"d": None}}, "e": "x"}) == {"a.b": "1", "a.c.d": "None", "e": "x"}


def test_git_commit_outside_a_checkout_is_unknown(tmp_path: Path):
    assert git_commit(tmp_path) == "unknown"
