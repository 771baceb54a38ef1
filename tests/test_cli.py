"""The command line as a user runs it: a subprocess, its exit code, its messages, what it leaves on disk."""

import hashlib
import subprocess
import sys
from pathlib import Path

from mlflow.tracking import MlflowClient

from components.config import load_params
from flows.stages import FIXED, stages_for
from tests.conftest import REPO


def flows(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flows", *args], cwd=cwd, capture_output=True, text=True,
                          env={**__import__("os").environ, "PYTHONPATH": str(REPO)})


def test_help_lists_every_stage_with_what_it_reads_and_writes():
    out = flows("--help")
    assert out.returncode == 0
    for stage in FIXED:
        assert stage.name in out.stdout and stage.writes in out.stdout
    assert "train-<job>" in out.stdout
    listing = flows("stages", "--profile", "tiny")
    for stage in stages_for(load_params(REPO / "params.yaml", "tiny")):
        assert stage.name in listing.stdout
    assert "train-math" in listing.stdout and "sft on math from base" in listing.stdout


def test_unknown_profile_exits_non_zero_and_writes_nothing(params_file: Path):
    out = flows("stage", "base-model", "--params", str(params_file), "--profile", "huge")
    assert out.returncode == 2
    assert "unknown profile 'huge'" in out.stderr and "Traceback" not in out.stderr
    assert sorted(p.name for p in params_file.parent.iterdir()) == ["params.yaml"]


def test_typo_in_override_exits_non_zero_naming_the_key(params_file: Path):
    out = flows("run", "--params", str(params_file), "--profile", "tiny", "--set", "base_model.layers=3")
    assert out.returncode == 2
    assert "--set base_model.layers: unknown key" in out.stderr
    assert not (params_file.parent / "outputs").exists()


def test_run_tiny_records_parent_and_nested_stage_runs(params_file: Path):
    out = flows("run", "--params", str(params_file), "--profile", "tiny")
    assert out.returncode == 0, out.stderr
    workspace = params_file.parent / "outputs"
    assert (workspace / "tiny" / "base_model" / "model.safetensors").is_file()

    client = MlflowClient(tracking_uri=f"sqlite:///{workspace / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("post-train-tiny")
    runs = client.search_runs([experiment.experiment_id])
    parent = next(r for r in runs if "mlflow.parentRunId" not in r.data.tags)
    stages = sorted((r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id),
                    key=lambda r: r.info.start_time)
    expected = [stage.name for stage in stages_for(load_params(params_file, "tiny"))]
    assert [r.data.tags["stage"] for r in stages] == expected
    for run in (parent, *stages):
        assert run.info.status == "FINISHED"
        assert run.data.tags["profile"] == "tiny"
        assert len(run.data.tags["params_hash"]) == 64
        assert run.data.tags["mlflow.source.git.commit"]
    assert stages[0].data.params["base_model.source"] == "random"
    assert stages[0].data.metrics["parameters"] > 1e6
    artifacts = [a.path for a in client.list_artifacts(stages[0].info.run_id, "model")]
    assert artifacts == ["model/stage.json"]
    curate_run = next(r for r in stages if r.data.tags["stage"] == "curate")
    reports = [a.path for a in client.list_artifacts(curate_run.info.run_id, "reports")]
    assert reports == ["reports/report.json", "reports/report.md"]
    assert curate_run.data.metrics["math.train.rows"] > 0
    inputs = {d.dataset.name: d.dataset.digest for d in client.get_run(curate_run.info.run_id).inputs.dataset_inputs}
    math_train = workspace / "tiny" / "data" / "curated" / "math" / "train.jsonl"
    assert inputs["math/train"] == hashlib.md5(math_train.read_bytes()).hexdigest()
    assert len(inputs) == 15  # five datasets, three splits each
    math_run = next(r for r in stages if r.data.tags["stage"] == "train-math")
    assert [m.step for m in client.get_metric_history(math_run.info.run_id, "loss")] == [1, 2]
    assert math_run.data.params["train.jobs.math.method"] == "sft"
    assert "train.jobs.cpt.method" not in math_run.data.params
    assert "adapter/adapter_config.json" in [a.path for a in client.list_artifacts(math_run.info.run_id, "adapter")]
