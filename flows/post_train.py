"""The Prefect flow `post-train`: every stage of the pipeline as a task, under one MLflow parent run and one workspace
lock (flows/runner.py, which the recipe-search flow shares).

The deployment form is `PostTrainRequest`, one input per field (flows/form.py): its fields become overrides of params.yaml, checked by the same
pydantic models before any stage runs; a bad value fails the flow run with the message naming the field.
"""

from __future__ import annotations

import json
from typing import Any

from prefect import flow
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact
from pydantic import BaseModel, Field, ValidationError

from components.config import DEFAULT_PARAMS, Params, deep_merge, parse_overrides, pipeline_models
from components.errors import ParamsError
from components.evaluate.metric_names import METRIC_DIRECTIONS
from components.evaluate.report import REPORT_MD, inline_images
from components.merge.registry import all_method_names, knob_named, method_named, methods_with, our_methods
from components.model.ref import ModelRef
from components.redact import redact_text
from components.registry.config import GateSpec
from components.stage import StageResult
from flows.form import fields_as_parameters, one_of
from flows.runner import CHOICES, REPO, ProfileName, load_request, mlflow_run_url, registration_line, run_stages
from flows.stages import stages_for, with_inits

JobName = one_of(CHOICES.jobs)
RecipeName = one_of(CHOICES.recipes)
MethodName = one_of(all_method_names())


def knob_field(name: str) -> Any:
    """A form field for a merge knob: its bounds and help as the methods declare it, and which methods take it."""
    knob = knob_named(name)
    bounds = {}
    if knob.low is not None:
        bounds["gt" if knob.low_open else "ge"] = knob.low
    if knob.high is not None:
        bounds["lt" if knob.high_open else "le"] = knob.high
    return Field(default=None, **bounds, description=f"{knob.doc} ({', '.join(methods_with(name))})")


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
    density: float | None = knob_field("density")
    merge_lambda: float | None = knob_field("lambda")
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
    safety: dict[str, Any] = {}
    if request.realign_lr is not None:
        safety["realign"] = {"lr": request.realign_lr}
    if request.prune_ratio is not None:
        safety["prune"] = {"ratio": request.prune_ratio}
    registry = {} if request.promote is None else {"promote": request.promote}
    overrides = deep_merge(parse_overrides(request.overrides), {"safety": safety, "registry": registry})
    params = load_request(request.params_file, request.profile, overrides)
    # Recipes and gates are replaced whole, not deep-merged: a form's gates are the gates.
    dumped = params.model_dump()
    if any(value is not None for value in (request.merge_method, request.density, request.merge_lambda)):
        recipe_name = request.merge_recipe or _shipped_recipe(params)
        if recipe_name not in params.merge.recipes:
            raise ParamsError(
                f"merge_recipe: {recipe_name!r} is not a recipe of {request.params_file} "
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


def publish(params: Params, results: dict[str, StageResult], parent_run_id: str) -> None:
    """What a person looks at in the Prefect UI: metrics table, gate report, links to MLflow and the registry."""
    url = mlflow_run_url(params, parent_run_id)
    if url.startswith("http"):
        create_link_artifact(redact_text(url), link_text="MLflow run of this pipeline run", key="mlflow-run")
    evaluation = results.get("evaluate")
    if evaluation is not None:
        table = json.loads((evaluation.outputs["evaluation"] / "summary.json").read_text())
        create_table_artifact(
            [
                {"candidate": name, **{c: round(m[c], 4) for c in METRIC_DIRECTIONS if c in m}}
                for name, m in table.items()
            ],
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


@flow(name="post-train")
@fields_as_parameters(PostTrainRequest)
def post_train(request: PostTrainRequest) -> dict[str, dict[str, float]]:
    """Data -> experts -> merges -> safety -> evaluation -> gate -> registry; returns each stage's metrics."""
    params = resolve(request)  # before any stage: a bad parameter fails the run here, naming it
    return run_stages(params, stages_for(params, REPO), publish)
