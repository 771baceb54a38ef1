"""dvc.yaml runs the same stages as the CLI, in a real DVC repo with a real (local) remote."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO

PROJECT_FILES = ["components", "flows", "params.yaml", "dvc.yaml", ".dvc/config", ".dvcignore", ".gitignore"]


def sh(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(cwd), "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    done = subprocess.run(args, cwd=cwd, capture_output=True, text=True, env=env)
    assert done.returncode == 0, f"{' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done


def test_repro_builds_once_skips_when_unchanged_reruns_only_what_a_param_touches(tmp_path: Path):
    repo = tmp_path / "project"
    repo.mkdir()
    for name in PROJECT_FILES:
        source = REPO / name
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if source.is_dir() else shutil.copy)(source, repo / name)
    (repo / "params.yaml").write_text((REPO / "params.yaml").read_text().replace("profile: smol", "profile: tiny", 1))
    sh("git", "init", "-q", cwd=repo)
    sh("git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "init", "--allow-empty", cwd=repo)

    first = sh("dvc", "repro", cwd=repo)
    for stage in ("base-model", "sources", "curate", "validate"):
        assert f"Running stage '{stage}'" in first.stdout
    assert (repo / "outputs/tiny/base_model/model.safetensors").is_file()
    assert (repo / "outputs/tiny/data/curated/math/train.jsonl").is_file()
    lock = (repo / "dvc.lock").read_text()
    assert "outputs/tiny/data/validation" in lock and "profile: tiny" in lock

    second = sh("dvc", "repro", cwd=repo)
    assert "Running stage" not in second.stdout and "up to date" in second.stdout

    params = repo / "params.yaml"
    params.write_text(params.read_text().replace("min_alpha_ratio: 0.3", "min_alpha_ratio: 0.35"))
    third = sh("dvc", "repro", cwd=repo)
    ran = sorted(line.split("'")[1] for line in third.stdout.splitlines() if line.startswith("Running stage"))
    assert ran == ["curate", "validate"]

    sh("dvc", "push", cwd=repo)
    assert any((repo / "outputs/dvc-remote").rglob("*")), "dvc push must fill the local remote"
