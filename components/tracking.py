"""MLflow conventions, decided once.

- Tracking URI: MLFLOW_TRACKING_URI if set (a server, Databricks, ...), else a SQLite store at
  `<workspace>/mlflow.db` with artifacts under `<workspace>/mlartifacts/`.
- One experiment per pipeline: `tracking.experiment` in params.yaml.
- One parent run per pipeline run, one nested run per stage (tag `mlflow.parentRunId`).
- Tags on every run: git commit, profile, params hash, and the DVC hashes of the data in dvc.lock.
- Run ids are passed explicitly, never taken from MLflow's thread-local active run, because Prefect runs
  tasks in worker threads. Inside a stage the stage's run is made active so that libraries that log to
  the active run (the Trainer's MLflow callback) log to it.

Tracking wraps a stage; it never changes what the stage computes.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import mlflow
import yaml
from mlflow.data.dataset_source_registry import get_registered_sources
from mlflow.data.meta_dataset import MetaDataset
from mlflow.entities import DatasetInput, InputTag, Metric, Param, RunStatus, RunTag
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_GIT_COMMIT, MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME

from components.config import Params
from components.hashing import file_md5
from components.redact import redact_text, redact_value
from components.stage import STAGE_CARD, StageResult


def tracking_uri(params: Params) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{params.workspace / 'mlflow.db'}"


_INITIALISED: set[str] = set()


def client_for(params: Params) -> MlflowClient:
    """A client on the configured store; also points the fluent API (used inside stages) at it.

    A new SQLite store is created under a file lock: two processes creating its tables at once would race
    (`duplicate column name`)."""
    uri = tracking_uri(params)
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(tracking_uri=uri)
    if uri.startswith("sqlite:///") and uri not in _INITIALISED:
        params.workspace.mkdir(parents=True, exist_ok=True)
        with open(params.workspace / ".mlflow.lock", "a") as guard:
            fcntl.flock(guard, fcntl.LOCK_EX)
            client.search_experiments(max_results=1)  # creates or migrates the tables, one process at a time
            fcntl.flock(guard, fcntl.LOCK_UN)
        _INITIALISED.add(uri)
    return client


_SWEPT: set[tuple[str, str]] = set()
EXPERIMENT_KIND = "mlflow.experimentKind"  # the tag MLflow's UI reads to pick the experiment's first page
MODEL_DEVELOPMENT = "custom_model_development"  # runs, metrics and models first (not the GenAI trace overview)


def experiment_id(client: MlflowClient, params: Params) -> str:
    """The pipeline's experiment, created on first use; the first time a process asks, runs that a killed process
    left RUNNING are marked KILLED."""
    experiment = client.get_experiment_by_name(params.tracking.experiment)
    if experiment is not None:
        if EXPERIMENT_KIND not in experiment.tags:  # made by an older release; a kind a person chose stays
            client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND, MODEL_DEVELOPMENT)
        if (client.tracking_uri, experiment.experiment_id) not in _SWEPT:
            mark_killed_runs(client, experiment.experiment_id)
            _SWEPT.add((client.tracking_uri, experiment.experiment_id))
        return experiment.experiment_id
    artifact_location = None
    if client.tracking_uri.startswith("sqlite:"):
        artifact_location = (params.workspace / "mlartifacts" / params.tracking.experiment).as_uri()
    # MLflow 3 opens an experiment of unknown kind on its GenAI overview (traces, prompts)
    return client.create_experiment(
        params.tracking.experiment, artifact_location=artifact_location, tags={EXPERIMENT_KIND: MODEL_DEVELOPMENT}
    )


def git_commit(repo: Path) -> str:
    """HEAD's commit, with `-dirty` when tracked files have changes; `unknown` outside a git checkout."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=repo,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("-dirty" if dirty else "")


def dvc_hashes(repo: Path) -> dict[str, str]:
    """`dvc.<out path>` -> hash of every output recorded in dvc.lock (empty when DVC has not run)."""
    lock = repo / "dvc.lock"
    if not lock.is_file():
        return {}
    stages = (yaml.safe_load(lock.read_text()) or {}).get("stages", {})
    return {
        f"dvc.{out['path']}": out.get("md5") or out.get("hash", "")
        for stage in stages.values()
        for out in stage.get("outs", [])
    }


PID_TAG, HOST_TAG = "posttrain.pid", "posttrain.host"  # which process owns a run, to mark it KILLED if it dies


def process_tags() -> dict[str, str]:
    return {PID_TAG: str(os.getpid()), HOST_TAG: socket.gethostname()}


def lineage_tags(params: Params, repo: Path) -> dict[str, str]:
    return {
        MLFLOW_GIT_COMMIT: git_commit(repo),
        "profile": params.profile,
        "params_hash": params.digest(),
        **dvc_hashes(repo),
    }


def dataset_input(name: str, path: Path) -> DatasetInput:
    """An MLflow dataset input for a data file: its path as source, its DVC md5 as digest.

    mlflow.data refuses dvc:// sources, so the source is the file path and the DVC hash goes in `digest`.
    """
    source = next(s for s in get_registered_sources() if s.__name__ == "LocalArtifactDatasetSource")
    dataset = MetaDataset(source(str(path)), name=name, digest=file_md5(path))
    return DatasetInput(dataset._to_mlflow_entity(), tags=[InputTag("mlflow.data.context", name.rsplit("/", 1)[-1])])


def flatten(tree: Any, prefix: str = "") -> dict[str, str]:
    """Nested params -> `{"a.b": "value"}`, the form MLflow params take."""
    if not isinstance(tree, dict):
        return {prefix: str(tree)}
    flat: dict[str, str] = {}
    for key, value in tree.items():
        flat.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def log_all(
    client: MlflowClient,
    run_id: str,
    params: dict[str, str] | None = None,
    metrics: dict[str, float] | None = None,
    tags: dict[str, str] | None = None,
) -> None:
    """Params, metrics and tags in batches (one request or transaction per 100, not one per value); secrets masked."""
    now = int(time.time() * 1000)
    params = {k: redact_value(k, v) for k, v in (params or {}).items()}
    tags = {k: redact_text(v) for k, v in (tags or {}).items()}
    entries = (
        [Param(k, v[:6000]) for k, v in params.items()]
        + [Metric(k, float(v), now, 0) for k, v in (metrics or {}).items()]
        + [RunTag(k, v) for k, v in (tags or {}).items()]
    )
    for start in range(0, len(entries), 100):
        chunk = entries[start : start + 100]
        client.log_batch(
            run_id,
            params=[e for e in chunk if isinstance(e, Param)],
            metrics=[e for e in chunk if isinstance(e, Metric)],
            tags=[e for e in chunk if isinstance(e, RunTag)],
        )


def log_child_run(name: str, params: dict[str, Any], metrics: dict[str, float], tags: dict[str, str]) -> None:
    """A finished run nested under the active run: one recipe-search trial under the search stage's run."""
    parent = mlflow.active_run()
    client = MlflowClient()
    run_id = client.create_run(
        parent.info.experiment_id, tags={MLFLOW_PARENT_RUN_ID: parent.info.run_id, MLFLOW_RUN_NAME: name, **tags}
    ).info.run_id
    log_all(client, run_id, params={key: str(value) for key, value in params.items()}, metrics=metrics)
    client.set_terminated(run_id, RunStatus.to_string(RunStatus.FINISHED))


def tracked_search_stage(params: Params) -> StageResult:
    """The search stage, its trials logged as child runs of the active MLflow run (not logged without one)."""
    from components.search.stage import search_stage

    return search_stage(params, log_child_run if mlflow.active_run() else None)


@contextlib.contextmanager
def pipeline_run(params: Params, repo: Path, run_name: str | None = None) -> Iterator[str]:
    """The parent run of one pipeline run; yields its id and closes it FINISHED or FAILED."""
    client = client_for(params)
    tags = {**lineage_tags(params, repo), **process_tags(), MLFLOW_RUN_NAME: run_name or f"post-train-{params.profile}"}
    run = client.create_run(experiment_id(client, params), tags=tags)
    run_id = run.info.run_id
    log_all(client, run_id, params=flatten(params.model_dump(mode="json")))
    try:
        yield run_id
    except BaseException:
        client.set_terminated(run_id, RunStatus.to_string(RunStatus.FAILED))
        raise
    client.set_terminated(run_id, RunStatus.to_string(RunStatus.FINISHED))


def mark_killed_runs(client: MlflowClient, experiment: str) -> list[str]:
    """Runs this machine started whose process is gone but which still say RUNNING: marked KILLED."""
    from components.lock import process_alive

    host, killed = socket.gethostname(), []
    for run in client.search_runs([experiment], "attributes.status = 'RUNNING'", max_results=1000):
        pid = run.data.tags.get(PID_TAG)
        if run.data.tags.get(HOST_TAG) == host and pid and pid.isdigit() and not process_alive(int(pid)):
            client.set_terminated(run.info.run_id, RunStatus.to_string(RunStatus.KILLED))
            killed.append(run.info.run_id)
    return killed


SUMMARY_STAGES = ("evaluate", "gate", "register")  # their metrics are also the parent run's (search-gate too)


def tracked_stage(
    params: Params,
    repo: Path,
    stage: str,
    param_keys: tuple[str, ...],
    compute: Callable[[], StageResult],
    parent_run_id: str | None = None,
) -> tuple[StageResult, str]:
    """Run `compute` inside a run for `stage` (nested under `parent_run_id` when given); returns its result and run id.

    Logged: the stage's own params, its metrics, its output paths as tags, its stage card as an artifact; the
    metrics of the evaluate, gate and register stages also on the parent run, as `<stage>.<metric>`.
    """
    client = client_for(params)
    tags = {**lineage_tags(params, repo), **process_tags(), MLFLOW_RUN_NAME: stage, "stage": stage}
    if parent_run_id:
        tags[MLFLOW_PARENT_RUN_ID] = parent_run_id
    run_id = client.create_run(experiment_id(client, params), tags=tags).info.run_id
    dumped = params.model_dump(mode="json")
    stage_params: dict[str, str] = {}
    for key in param_keys:  # dotted paths, e.g. "data" or "train.jobs.math"
        section = dumped
        for part in key.split("."):
            section = section[part]
        stage_params |= flatten(section, key)
    log_all(client, run_id, params=stage_params)
    try:
        with mlflow.start_run(run_id=run_id):
            result = compute()
    except BaseException as err:
        # A failing stage may still have a report worth reading (which expectation failed, on which rows).
        for artifact in getattr(err, "artifacts", ()):
            client.log_artifact(run_id, str(artifact), artifact_path="reports")
        client.set_terminated(run_id, RunStatus.to_string(RunStatus.FAILED))
        raise
    log_all(
        client,
        run_id,
        metrics=result.metrics,
        tags={"cached": str(result.cached).lower()} | {f"output.{n}": str(p) for n, p in result.outputs.items()},
    )
    for name, path in result.outputs.items():
        if (Path(path) / STAGE_CARD).is_file():
            client.log_artifact(run_id, str(Path(path) / STAGE_CARD), artifact_path=name)
    for artifact in result.artifacts:
        if Path(artifact).is_dir():
            client.log_artifacts(run_id, str(artifact), artifact_path=Path(artifact).name)
        else:
            client.log_artifact(run_id, str(artifact), artifact_path="reports")
    if result.datasets:
        client.log_inputs(run_id, datasets=[dataset_input(name, path) for name, path in result.datasets.items()])
    if parent_run_id and stage.rpartition("-")[2] in SUMMARY_STAGES:
        # what the run concluded belongs on the parent too: every candidate's numbers, the verdict, the version
        log_all(client, parent_run_id, metrics={f"{stage}.{key}": value for key, value in result.metrics.items()})
    client.set_terminated(run_id, RunStatus.to_string(RunStatus.FINISHED))
    return result, run_id
