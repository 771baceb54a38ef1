"""What both Prefect flows share: the form's parameters file resolved safely, each stage as a task under one MLflow
parent run and the workspace's lock, and the lines their reports print.

What re-runs: each stage decides by its own key (stage.json: inputs' content, params, code; see
components/stage.py), whether Prefect, `python -m flows run` or a test calls it. Prefect's task cache is
off (`NO_CACHE`) so that Prefect never skips a stage the key says is stale, nor recomputes one it says is
current: one mechanism, no disagreement.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.concurrency.sync import concurrency
from prefect.exceptions import ObjectNotFound
from prefect.runtime import flow_run

from components import progress
from components.config import DEFAULT_PARAMS, Params, load_params
from components.errors import ParamsError, PipelineError
from components.lock import workspace_lock
from components.stage import StageResult
from components.tracking import client_for, pipeline_run, tracked_stage, tracking_uri
from flows.execute import execute, prepare_apart
from flows.form import form_choices, one_of
from flows.stages import Stage

REPO = Path(__file__).resolve().parents[1]
LOCK_LEASE_SECONDS = 60

CHOICES = form_choices(DEFAULT_PARAMS)
ProfileName = one_of(CHOICES.profiles)


def load_request(params_file: str, profile: str, overrides: dict[str, Any]) -> Params:
    """A form's parameters file with the form's overrides, validated; ParamsError naming the field at fault.

    A relative `params_file` must stay inside the repository; an absolute one is the operator's explicit choice."""
    given = Path(params_file)
    path = (REPO / given).resolve()
    if not given.is_absolute() and not path.is_relative_to(REPO.resolve()):
        raise ParamsError(
            f"params_file: {params_file!r} leads outside the repository; name a file inside it "
            "(or give an absolute path)"
        )
    return load_params(path, profile, overrides)


def _not_bad_input(task, task_run, state) -> bool:
    """Retry what may be transient (a server hiccup, an I/O error); a PipelineError is the user's input, never."""
    try:
        state.result()
    except PipelineError:
        return False
    except Exception:
        return True
    return False


@task(
    cache_policy=NO_CACHE,
    retries=2,
    retry_delay_seconds=5,
    retry_condition_fn=_not_bad_input,
    persist_result=True,
    task_run_name="{stage_name}",
)
def run_stage(stage_name: str, stage: Stage, params: Params, repo: Path, parent_run_id: str) -> StageResult:
    """One stage inside its nested MLflow run; training progress goes to a progress artifact."""
    bar: dict[str, Any] = {}

    def show(what: str, fraction: float) -> None:
        if "id" not in bar:
            bar["id"] = create_progress_artifact(0.0, description=f"{stage_name}: {what}")
        update_progress_artifact(bar["id"], round(100 * fraction, 1))

    with progress.listening(show):
        result, run_id = tracked_stage(
            params, repo, stage_name, stage.param_keys, lambda: execute(stage, params, apart=True), parent_run_id
        )
    get_run_logger().info(
        "%s %s (MLflow run %s): %s",
        stage_name,
        "up to date" if result.cached else "done",
        run_id,
        ", ".join(f"{k}={v}" for k, v in result.outputs.items()),
    )
    return result


def workspace_slot(params: Params) -> str:
    """The global concurrency limit (1 slot) guarding this run directory across machines, created on first use.

    Prefect queues a second flow run here until the first ends; on one machine the file lock
    (components.lock) also refuses a CLI run of the same workspace."""
    name = "workspace-" + re.sub(r"[^A-Za-z0-9]+", "-", str(params.ws.run_dir.resolve())).strip("-")[-100:]
    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1))
    return name


def mlflow_run_url(params: Params, run_id: str) -> str:
    uri = tracking_uri(params)
    client = client_for(params)
    experiment = client.get_run(run_id).info.experiment_id
    if uri.startswith(("http://", "https://")):
        return f"{uri.rstrip('/')}/#/experiments/{experiment}/runs/{run_id}"
    return f"{uri} (experiment {experiment}, run {run_id}; browse with `mlflow ui --backend-store-uri {uri}`)"


def registration_line(register: StageResult) -> str:
    """What the register stage did, in one Markdown line with the command that loads the version."""
    registration = json.loads(register.outputs["registration"].read_text())
    return (
        f"Registered **{registration['model_uri']}** ({registration['candidate']}); "
        + ("promoted to `champion`." if registration["promoted"] else "not promoted: `champion` unchanged.")
        + f' Load it: `python -m flows chat --model {registration["model_uri"]} "..."`'
    )


def run_stages(
    params: Params, stages: list[Stage], publish_results: Callable[[Params, dict[str, StageResult], str], None]
) -> dict[str, dict[str, float]]:
    """The stages as tasks, under the workspace lock and one MLflow parent run tagged with this flow run."""
    results: dict[str, StageResult] = {}
    # The lease is renewed while the run lives; a killed run's slot frees when it lapses (Prefect's minimum, 60 s).
    with (
        concurrency(workspace_slot(params), occupy=1, strict=True, lease_duration=LOCK_LEASE_SECONDS),
        workspace_lock(params.ws.run_dir, f"Prefect flow run {flow_run.name}"),
        pipeline_run(params, REPO, run_name=f"prefect-{flow_run.name}") as parent,
    ):
        client = client_for(params)
        client.set_tag(parent, "prefect.flow_run_id", str(flow_run.id))
        if flow_run.ui_url:
            client.set_tag(parent, "prefect.flow_run_url", flow_run.ui_url)
        prepare_apart(params)
        previous = None  # each stage waits for the one before: the run graph shows the pipeline's order
        for stage in stages:
            previous = run_stage(
                stage.name, stage, params, REPO, parent, wait_for=[previous] if previous else None, return_state=True
            )
            results[stage.name] = previous.result()
        publish_results(params, results, parent)
    return {name: result.metrics for name, result in results.items()}
