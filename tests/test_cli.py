"""The command line as a user runs it: a subprocess, its exit code, its messages, what it leaves on disk."""

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

from mlflow.tracking import MlflowClient

from components.config import load_params
from components.data.config import BUILTIN_DATASETS
from components.workspace import Workspace
from flows.stages import DATA, stages_for
from tests.conftest import REPO


def flows(*args: str, cwd: Path = REPO, tracking_uri: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)} | ({"MLFLOW_TRACKING_URI": tracking_uri} if tracking_uri else {})
    return subprocess.run([sys.executable, "-m", "flows", *args], cwd=cwd, capture_output=True, text=True, env=env)


def test_help_lists_every_stage_with_what_it_reads_and_writes():
    out = flows("--help")
    assert out.returncode == 0
    for stage in DATA:
        assert stage.name in out.stdout and stage.writes in out.stdout
    default = load_params(REPO / "params.yaml")
    for stage in stages_for(default):  # the default profile's own stages, train-<job> and merge-<recipe> among them
        assert f"  {stage.name}\n" in out.stdout, stage.name
    assert "  search\n" in out.stdout
    listing = flows("stages", "--profile", "tiny")
    for stage in stages_for(load_params(REPO / "params.yaml", "tiny")):
        assert stage.name in listing.stdout
    assert "train-math" in listing.stdout and "sft on math from base" in listing.stdout


def test_the_command_line_and_its_stage_table_load_without_the_stages_libraries():
    """Each stage's code is imported when it runs, so `python -m flows stage NAME` (one process per stage under
    `dvc repro`) imports only what NAME needs."""
    heavy = ("torch", "transformers", "mlflow", "great_expectations", "mergekit", "optuna", "trl", "peft", "prefect")
    code = "import sys, flows.__main__, flows.stages; print(' '.join(m for m in sys.argv[1:] if m in sys.modules))"
    loaded = subprocess.run([sys.executable, "-c", code, *heavy], cwd=REPO, capture_output=True, text=True, check=True)
    assert loaded.stdout.split() == []


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


def test_benchmarks_take_overrides_and_name_a_bad_one(params_file: Path):
    command = [sys.executable, "-m", "benchmarks", "evaluate", "--params", str(params_file), "--profile", "tiny"]
    out = subprocess.run([*command, "--set", "evaluate.dtype=float64"], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "--set evaluate.dtype" in out.stderr and "'float32', 'bfloat16' or 'float16'" in out.stderr
    assert not (params_file.parent / "outputs").exists()


def test_the_console_shows_one_line_per_stage_and_library_chatter_goes_to_the_log(tiny_pipeline: Path):
    console = (tiny_pipeline.parent / "console.txt").read_text()
    stages = stages_for(load_params(tiny_pipeline, "tiny"))
    for k, stage in enumerate(stages, 1):
        assert f"[{k}/{len(stages)} {stage.name}] done (" in console
    k = next(k for k, stage in enumerate(stages, 1) if stage.name == "evaluate")
    assert re.search(rf"\[{k}/{len(stages)} evaluate\] evaluate \((\d+)/\1 candidates\) 100%", console)
    for chatter in ("{'loss'", "Loading weights", "Warning", "WARNING", "examples/s", "Downloading artifacts"):
        assert chatter not in console, chatter
    log = (tiny_pipeline.parent / "outputs" / "tiny" / "run.log").read_text()
    assert "posttrain.train INFO step 1: {" in log and "Warning" in log
    timings = json.loads((tiny_pipeline.parent / "outputs" / "tiny" / "timings.json").read_text())
    assert set(timings) == {stage.name for stage in stages}


def test_run_tiny_records_parent_and_nested_stage_runs(tiny_pipeline: Path, mlflow_server: str):
    params_file = tiny_pipeline  # `flows run --profile tiny` against the server (conftest)
    workspace = params_file.parent / "outputs"
    assert (workspace / "tiny" / "base_model" / "model.safetensors").is_file()

    client = MlflowClient(tracking_uri=mlflow_server)
    experiment = client.get_experiment_by_name("post-train-tiny")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"  # opens on runs, not GenAI
    runs = client.search_runs([experiment.experiment_id])
    parent = next(r for r in runs if "mlflow.parentRunId" not in r.data.tags)
    stages = sorted(
        (r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id),
        key=lambda r: r.info.start_time,
    )
    expected = [stage.name for stage in stages_for(load_params(params_file, "tiny"))]
    assert [r.data.tags["stage"] for r in stages] == expected
    assert parent.data.metrics["gate.gate_passed"] == 1.0 and parent.data.metrics["register.promoted"] == 1.0
    evaluated = client.get_run(next(r.info.run_id for r in stages if r.data.tags["stage"] == "evaluate"))
    assert (
        parent.data.metrics["evaluate.merge-ties.harmful_score"] == evaluated.data.metrics["merge-ties.harmful_score"]
    )
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
    assert len(inputs) == 3 * len(BUILTIN_DATASETS)  # every dataset, three splits each
    math_run = next(r for r in stages if r.data.tags["stage"] == "train-math")
    assert [m.step for m in client.get_metric_history(math_run.info.run_id, "loss")] == [1, 2]
    assert math_run.data.params["train.jobs.math.method"] == "sft"
    assert "train.jobs.cpt.method" not in math_run.data.params
    assert "adapter/adapter_config.json" in [a.path for a in client.list_artifacts(math_run.info.run_id, "adapter")]

    # The gated candidate is registered with its lineage and promoted (the tiny gates are loose).
    registration = json.loads(Workspace(workspace, "tiny").shipping.registration.read_text())
    assert registration["version"] == "1" and registration["promoted"] is True
    version = client.get_model_version("post-train-tiny", "1")
    assert version.tags["candidate"] == "realigned-merge-ties" and version.tags["gate"] == "passed"
    assert version.tags["pipeline_run"] == parent.info.run_id
    assert version.tags["run.merge-ties"] == next(r.info.run_id for r in stages if r.data.tags["stage"] == "merge-ties")
    assert version.tags["data.math/train"] == inputs["math/train"]
    assert json.loads(version.tags["merge_recipe"])["merge_method"] == "ties"
    assert [step["name"] for step in json.loads(version.tags["lineage"])] == [
        "base",
        "safety",
        "cpt",
        "domain",
        "math",
        "merge-ties",
        "realigned-merge-ties",
    ]
    card = (workspace / "tiny" / "registry" / "model_card.md").read_text()
    assert "# Model card: realigned-merge-ties" in card and "## Gate report: realigned-merge-ties" in card

    # The same weights again: no new version, the champion stays where it is, and the registration says why.
    again = flows("run", "--params", str(params_file), "--profile", "tiny", tracking_uri=mlflow_server)
    assert again.returncode == 0, again.stderr
    registration = json.loads(Workspace(workspace, "tiny").shipping.registration.read_text())
    assert (registration["version"], registration["new_version"], registration["promoted"]) == ("1", False, False)
    assert registration["why"] == "not registered again: these weights are v1 already"
    assert [v.version for v in client.search_model_versions("name='post-train-tiny'")] == ["1"]

    # Other weights (task arithmetic; on tiny SOMF leaves the TIES merge as it is) under a stricter gate:
    # a new version becomes challenger, the champion stays; then it chats.
    strict = flows(
        "run",
        "--params",
        str(params_file),
        "--profile",
        "tiny",
        "--set",
        "registry.gates.domain_perplexity.max=1",
        "--set",
        "registry.candidate=merge-task_arithmetic",
        tracking_uri=mlflow_server,
    )
    assert strict.returncode == 0, strict.stderr
    assert "domain_perplexity | max | ≤ 1 |" in (workspace / "tiny" / "gate" / "report.md").read_text()
    assert (
        "Not promoted: gates failed (domain_perplexity (max))"
        in (workspace / "tiny" / "gate" / "report.md").read_text()
    )
    assert {a: str(v) for a, v in client.get_registered_model("post-train-tiny").aliases.items()} == {
        "challenger": "2",
        "champion": "1",
    }
    shown = flows("registry", "show", "--params", str(params_file), "--profile", "tiny", tracking_uri=mlflow_server)
    assert "v2  challenger" in shown.stdout and "gate=failed" in shown.stdout and "v1  champion" in shown.stdout
    refused = flows(
        "registry", "promote", "2", "--params", str(params_file), "--profile", "tiny", tracking_uri=mlflow_server
    )
    assert refused.returncode == 2 and "did not pass its gates" in refused.stderr
    # the champion from the registry, a pipeline model by its name; a name not built is refused with its folder
    chats = {"models:/post-train-tiny@champion": 0, "merge-ties": 0, "merge-nope": 2}
    for model, code in chats.items():
        answer = flows(
            "chat",
            "hello",
            "--model",
            model,
            "--max-new-tokens",
            "4",
            "--params",
            str(params_file),
            "--profile",
            "tiny",
            tracking_uri=mlflow_server,
        )
        assert answer.returncode == code, answer.stderr
        assert "Loading weights" not in answer.stderr  # library progress bars go to run.log, as for a run
    assert "merged/nope does not exist" in answer.stderr
