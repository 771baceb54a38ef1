"""The Prefect flow: every stage of the pipeline as a task, under one MLflow parent run and one workspace lock.

What re-runs: each stage decides by its own key (stage.json: inputs' content, params, code; see
components/stage.py), whether Prefect, `python -m flows run` or a test calls it. Prefect's task cache is
off (`NO_CACHE`) so that Prefect never skips a stage the key says is stale, nor recomputes one it says is
current: one mechanism, no disagreement. `dvc repro` runs the data stages by DVC's hashes of the same
files and params; its outputs are the same files, so the stage keys then find them up to date.

The deployment form is `PostTrainRequest`, one input per field (flows/form.py): its fields become overrides of params.yaml, checked by the same
pydantic models before any stage runs; a bad value fails the flow run with the message naming the field.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import (
    create_link_artifact,
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.concurrency.sync import concurrency
from prefect.exceptions import ObjectNotFound
from prefect.runtime import flow_run
from pydantic import BaseModel, Field, ValidationError

from components import progress
from components.config import DEFAULT_PARAMS, GateSpec, Params, deep_merge, load_params, parse_overrides
from components.errors import ParamsError, PipelineError
from components.evaluate.report import REPORT_MD, inline_images
from components.lock import workspace_lock
from components.merge.methods.scaling import LAMBDA
from components.merge.methods.ties import DENSITY
from components.merge.registry import all_method_names, method_named, methods_with, our_methods
from components.model.ref import ModelRef, pipeline_models
from components.redact import redact_text
from components.stage import StageResult
from components.tracking import client_for, pipeline_run, tracked_stage, tracking_uri
from flows.form import fields_as_parameters, form_choices, one_of
from flows.stages import Stage, prepare_apart, stages_for, with_inits

REPO = Path(__file__).resolve().parents[1]
LOCK_LEASE_SECONDS = 60


CHOICES = form_choices(DEFAULT_PARAMS)
ProfileName = one_of(CHOICES.profiles)
JobName = one_of(CHOICES.jobs)
RecipeName = one_of(CHOICES.recipes)
MethodName = one_of(all_method_names())


class PostTrainRequest(BaseModel):
    """What a run of `post-train` may change, as the Prefect UI's form shows it; empty fields keep params.yaml."""

    params_file: str = Field(
        default=str(DEFAULT_PARAMS.name),
        description="parameters file, relative to the repository (the choices below are params.yaml's)",
    )
    profile: ProfileName = Field(default=CHOICES.default_profile, description="profile of the parameters file")
    experts: list[JobName] = Field(
        default=[],
        description="train jobs to run (their init jobs come along); "
        "merges that need a left-out expert are dropped; empty: all",
    )
    merge_recipe: RecipeName | None = Field(
        default=None,
        description="recipe the merge fields below change (default: the one the shipped candidate comes from)",
    )
    merge_method: MethodName | None = Field(
        default=None,
        description=f"{', '.join(our_methods())} or a mergekit method; "
        "the recipe's parameters the new method does not take are dropped",
    )
    density: float | None = Field(
        default=None, ge=0, le=1, description=f"{DENSITY.doc} ({', '.join(methods_with('density'))})"
    )
    merge_lambda: float | None = Field(
        default=None, gt=0, description=f"{LAMBDA.doc} ({', '.join(methods_with('lambda'))})"
    )
    realign_lr: float | None = Field(default=None, gt=0, description="SOMF mask learning rate")
    prune_ratio: float | None = Field(default=None, ge=0, lt=1, description="Antidote: share of weights pruned")
    gates: dict[str, GateSpec] | None = Field(default=None, description="gates by metric: {min, max, tolerance}")
    promote: bool | None = Field(default=None, description="move the champion alias when every gate passes")
    overrides: list[str] = Field(default=[], description="any other parameter, KEY=VALUE as with --set")


def _shipped_recipe(params: Params) -> str | None:
    """The merge recipe the shipped candidate is made from (realigned-merge-ties -> ties)."""
    return ModelRef.parse(params.registry.candidate).recipe if params.registry.candidate else None


def switch_method(recipe: dict[str, Any], method: str) -> dict[str, Any]:
    """The recipe with another method; parameters the new method (one of ours) does not take are left behind."""
    ours = method_named(method)
    if ours is None:
        return {**recipe, "merge_method": method}
    return {
        **recipe,
        "merge_method": method,
        "parameters": {k: v for k, v in recipe["parameters"].items() if k in ours.scope(per_model=False)},
        "models": [
            {**m, "parameters": {k: v for k, v in m.get("parameters", {}).items() if k in ours.scope(per_model=True)}}
            for m in recipe["models"]
        ],
    }


def revalidate(dumped: dict[str, Any], field: str) -> Params:
    """Params again from a changed dump, every check included; a failure names the form field behind it."""
    try:
        return Params.model_validate(dumped)
    except ValidationError as err:
        problems = "; ".join(
            ".".join(map(str, e["loc"])) + ": " * bool(e["loc"]) + e["msg"].removeprefix("Value error, ")
            for e in err.errors()
        )
        raise ParamsError(f"{field}: {problems}") from None


def resolve(request: PostTrainRequest) -> Params:
    """params.yaml with the request's changes, validated; raises ParamsError naming the field at fault."""
    given = Path(request.params_file)
    path = (REPO / given).resolve()
    if not given.is_absolute() and not path.is_relative_to(REPO.resolve()):
        # an absolute path is the operator's explicit choice; a relative one stays inside the repository
        raise ParamsError(
            f"params_file: {request.params_file!r} leads outside the repository; name a file inside it "
            "(or give an absolute path)"
        )
    safety: dict[str, Any] = {}
    if request.realign_lr is not None:
        safety["realign"] = {"lr": request.realign_lr}
    if request.prune_ratio is not None:
        safety["prune"] = {"ratio": request.prune_ratio}
    registry = {} if request.promote is None else {"promote": request.promote}
    overrides = deep_merge(parse_overrides(request.overrides), {"safety": safety, "registry": registry})
    params = load_params(path, request.profile, overrides)
    # Recipes and gates are replaced whole, not deep-merged: a form's gates are the gates.
    dumped = params.model_dump()
    if any(value is not None for value in (request.merge_method, request.density, request.merge_lambda)):
        recipe_name = request.merge_recipe or _shipped_recipe(params)
        if recipe_name not in params.merge.recipes:
            raise ParamsError(
                f"merge_recipe: {recipe_name!r} is not a recipe of {path.name} "
                f"(recipes: {', '.join(params.merge.recipes)})"
            )
        recipe = dumped["merge"]["recipes"][recipe_name]
        if request.merge_method is not None and request.merge_method != recipe["merge_method"]:
            recipe = switch_method(recipe, request.merge_method)
        if request.density is not None:
            recipe["models"] = [
                {**m, "parameters": {**m.get("parameters", {}), "density": request.density}} for m in recipe["models"]
            ]
        if request.merge_lambda is not None:
            recipe["parameters"] = {**recipe["parameters"], "lambda": request.merge_lambda}
        dumped["merge"]["recipes"][recipe_name] = recipe
    if request.gates is not None:
        dumped["registry"]["gates"] = {metric: spec.model_dump() for metric, spec in request.gates.items()}
    params = revalidate(dumped, "merge and gates")
    return select_experts(params, request.experts) if request.experts else params


def select_experts(params: Params, experts: list[str]) -> Params:
    """Only the named train jobs (and the jobs they start from); merges that need another one are dropped."""
    unknown = sorted(set(experts) - set(params.train.jobs))
    if unknown:
        raise ParamsError(f"experts: {unknown} are not train jobs (jobs: {', '.join(params.train.jobs)})")
    keep = with_inits(params, experts)
    dumped = params.model_dump()
    dumped["train"]["jobs"] = {name: job for name, job in dumped["train"]["jobs"].items() if name in keep}
    available = keep | {"base"}
    dumped["merge"]["recipes"] = {
        name: spec
        for name, spec in dumped["merge"]["recipes"].items()
        if {entry["model"] for entry in spec["models"]} | {spec["base_model"] or "base"} <= available
    }
    chosen = dumped["evaluate"]["candidates"]
    if chosen is not None:  # the evaluated candidates that are still made
        dumped["evaluate"]["candidates"] = None
        made = {str(ref) for ref in pipeline_models(revalidate(dumped, f"experts {experts}"))}
        dumped["evaluate"]["candidates"] = [name for name in chosen if name in made]
    return revalidate(dumped, f"experts {experts}")


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
            params, repo, stage_name, stage.param_keys, lambda: stage.execute(params, apart=True), parent_run_id
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
    registration = json.loads((register.outputs["registry"] / "registration.json").read_text())
    return (
        f"Registered **{registration['model_uri']}** ({registration['candidate']}); "
        + ("promoted to `champion`." if registration["promoted"] else "not promoted: `champion` unchanged.")
        + f' Load it: `python -m flows chat --model {registration["model_uri"]} "..."`'
    )


def publish(params: Params, results: dict[str, StageResult], parent_run_id: str) -> None:
    """What a person looks at in the Prefect UI: metrics table, gate report, links to MLflow and the registry."""
    url = mlflow_run_url(params, parent_run_id)
    if url.startswith("http"):
        create_link_artifact(redact_text(url), link_text="MLflow run of this pipeline run", key="mlflow-run")
    evaluation = results.get("evaluate")
    if evaluation is not None:
        table = json.loads((evaluation.outputs["evaluation"] / "summary.json").read_text())
        columns = ("domain_mc_acc_norm", "math_exact_match", "domain_perplexity", "harmful_score", "over_refusal")
        create_table_artifact(
            [{"candidate": name, **{c: round(m[c], 4) for c in columns}} for name, m in table.items()],
            key="evaluation",
            description="Held-out evaluation of every candidate",
        )
    lines = [f"# Post-train run ({params.profile})", "", f"MLflow parent run: {url}", ""]
    if "register" in results:
        lines += [registration_line(results["register"]), ""]
        lines.append((results["gate"].outputs["gate"] / "report.md").read_text())
    if "report" in results:
        folder = results["report"].outputs["report"]
        lines.append(
            inline_images((folder / REPORT_MD).read_text().replace("# Post-train report", "## Figures"), folder)
        )
    create_markdown_artifact(
        redact_text("\n".join(lines)),
        key="post-train-report",
        description="Gate report, registry, figures and evaluation",
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


@flow(name="post-train")
@fields_as_parameters(PostTrainRequest)
def post_train(request: PostTrainRequest) -> dict[str, dict[str, float]]:
    """Data -> experts -> merges -> safety -> evaluation -> gate -> registry; returns each stage's metrics."""
    params = resolve(request)  # before any stage: a bad parameter fails the run here, naming it
    return run_stages(params, stages_for(params, REPO), publish)
