"""Orchestration overhead: the whole pipeline as a Prefect flow against the same stages in a plain loop.

Each figure runs every stage from an empty workspace in a fresh process:
- baseline: `stage.run(params)` for every stage in order, nothing else (the stages' own compute);
- CLI with MLflow: `python -m flows run`'s path (parent run, nested stage runs, artifacts) on a SQLite store;
- Prefect flow: `post_train` under a local Prefect API (the test harness server, started before the clock),
  with the same MLflow tracking, the workspace lock, task runs, persisted results and UI artifacts.
Overhead = (flow − baseline) / flow: what orchestration and tracking add, as a share of the total.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from benchmarks.runner import Report, benchmark, measured
from components.config import DEFAULT_PARAMS, Params, load_params


def _workspace(scratch: Path, name: str) -> Path:
    """A copy of params.yaml whose workspace is scratch/name (so every figure starts from nothing)."""
    folder = scratch / name
    folder.mkdir(parents=True)
    shutil.copy(DEFAULT_PARAMS, folder / "params.yaml")
    return folder / "params.yaml"


def _plain(params_file: Path, profile: str) -> None:
    from flows.stages import stages_for

    params = load_params(params_file, profile)
    for stage in stages_for(params, params_file.parent):
        stage.run(params)


def _cli(params_file: Path, profile: str) -> None:
    from flows.__main__ import main

    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{params_file.parent / 'mlflow.db'}"
    assert main(["run", "--params", str(params_file), "--profile", profile]) == 0


def _flow(params_file: Path, profile: str) -> float:
    import time

    from prefect.testing.utilities import prefect_test_harness

    from flows.post_train import post_train

    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{params_file.parent / 'mlflow.db'}"
    with prefect_test_harness(server_startup_timeout=120):
        start = time.perf_counter()
        state = post_train(params_file=str(params_file), profile=profile, return_state=True)
        seconds = time.perf_counter() - start
    assert state.is_completed(), state.message
    return seconds


@benchmark("orchestration")
def orchestration(params: Params, scratch: Path) -> Report:
    report = Report("orchestration", baseline="stages in a plain loop")
    seconds, _, _ = measured(_plain, _workspace(scratch, "plain"), params.profile)
    report.seconds[report.baseline] = seconds
    seconds, _, _ = measured(_cli, _workspace(scratch, "cli"), params.profile)
    report.seconds["python -m flows run (MLflow tracking)"] = seconds
    _, _, flow_seconds = measured(_flow, _workspace(scratch, "flow"), params.profile)
    report.seconds["Prefect flow post-train (MLflow tracking)"] = flow_seconds
    overhead = (flow_seconds - report.seconds[report.baseline]) / flow_seconds
    report.notes["orchestration + tracking overhead, share of the flow's total"] = (
        f"{overhead:.1%} (target: at most 10%)"
    )
    return report
