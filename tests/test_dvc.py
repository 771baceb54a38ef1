"""dvc.yaml runs the same stages as the CLI, in a real DVC repo with a real (local) remote.

On the tiny profile with a user table and a train job on it, `dvc repro train-support`: built once, skipped when
nothing changed, a curation param reruns only what reads the curated tables, a row appended to the user table
reruns exactly the stages between it and the job and lands in the raw table, and the CLI then finds DVC's outputs
up to date. The target keeps the test near two minutes: the whole tiny pipeline under `dvc repro` takes about 4 min
on 2 cores (20 stages, each a fresh process importing torch and MLflow; docs/pipeline.md, "DVC").
"""

import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from tests.conftest import REPO

PROJECT_FILES = ["components", "flows", "params.yaml", ".dvc/config", ".dvcignore", ".gitignore"]
TARGET = "train-support"  # the job on the user table: the stages between the table and a model trained on it
TINY_JOB = {"max_steps": 2, "batch_size": 2, "max_length": 64, "save_steps": 1, "eval_rows": 0}


def sh(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(cwd), "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    done = subprocess.run(args, cwd=cwd, capture_output=True, text=True, env=env)
    assert done.returncode == 0, f"{' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done


def ran(repro: subprocess.CompletedProcess) -> list[str]:
    return sorted(line.split("'")[1] for line in repro.stdout.splitlines() if line.startswith("Running stage"))


def support_row(rng: random.Random) -> str:
    """A prompt/completion row of random words: no two rows are near duplicates, none looks harmful."""
    words = [
        "blue",
        "river",
        "stone",
        "lamp",
        "quiet",
        "orange",
        "garden",
        "paper",
        "window",
        "cloud",
        "table",
        "music",
        "spring",
        "north",
        "green",
    ]
    words += [
        "copper",
        "violin",
        "harbor",
        "maple",
        "pepper",
        "candle",
        "meadow",
        "silver",
        "ladder",
        "pocket",
        "tunnel",
        "velvet",
        "walnut",
    ]
    prompt = " ".join(rng.choices(words, k=10))
    return json.dumps({"prompt": f"Explain {prompt}?", "completion": " ".join(rng.choices(words, k=14)) + "."}) + "\n"


def test_repro_builds_once_skips_when_unchanged_reruns_only_what_a_change_touches(tmp_path: Path):
    repo = tmp_path / "project"
    repo.mkdir()
    for name in PROJECT_FILES:
        source = REPO / name
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if source.is_dir() else shutil.copy)(source, repo / name)
    # the tiny profile, with a user table and a train job on it; dvc.yaml generated for that stage table
    rng = random.Random(0)
    table = repo / "data/support.jsonl"
    table.parent.mkdir()
    table.write_text("".join(support_row(rng) for _ in range(40)))
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["profile"] = "tiny"
    raw["common"]["data"]["user"] = [{"name": "support", "path": "data/support.jsonl", "kind": "prompt_completion"}]
    raw["profiles"]["tiny"]["train"]["jobs"]["support"] = {"method": "sft", "datasets": ["support"], **TINY_JOB}
    (repo / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    sh(sys.executable, "-m", "flows", "dvc-yaml", cwd=repo)
    sh("git", "init", "-q", cwd=repo)
    sh("git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "init", "--allow-empty", cwd=repo)

    first = sh("dvc", "repro", TARGET, cwd=repo)
    assert ran(first) == ["base-model", "curate", "sources", TARGET, "validate"]
    lock = (repo / "dvc.lock").read_text()
    assert "outputs/tiny/data/validation" in lock and "profile: tiny" in lock and "data/support.jsonl" in lock

    second = sh("dvc", "repro", TARGET, cwd=repo)
    assert ran(second) == [] and "up to date" in second.stdout

    # a curation param: curate and what reads the curated tables, not the base model or the raw tables
    params = repo / "params.yaml"
    params.write_text(params.read_text().replace("min_alpha_ratio: 0.3", "min_alpha_ratio: 0.35"))
    assert ran(sh("dvc", "repro", TARGET, cwd=repo)) == ["curate", TARGET, "validate"]

    # a row appended to the user table: DVC sees the table changed, and reruns what depends on it
    new_row = support_row(rng)
    with table.open("a") as file:
        file.write(new_row)
    status = sh("dvc", "status", "--with-deps", TARGET, cwd=repo).stdout
    assert "sources:" in status and "data/support.jsonl" in status and "base-model" not in status, status
    assert ran(sh("dvc", "repro", TARGET, cwd=repo)) == ["curate", "sources", TARGET, "validate"]
    assert json.loads(new_row)["prompt"] in (repo / "outputs/tiny/data/raw/support.jsonl").read_text()

    # the CLI finds what DVC built up to date: the stage keys hash the same content DVC does
    for stage in ("sources", TARGET):
        assert "up to date" in sh(sys.executable, "-m", "flows", "stage", stage, "--no-tracking", cwd=repo).stdout

    sh("dvc", "push", cwd=repo)
    assert any((repo / "outputs/dvc-remote").rglob("*")), "dvc push must fill the local remote"
