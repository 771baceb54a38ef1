"""The Prefect flow `recipe-search`: Optuna over merge recipes with safety in the objective (components/search/).

It runs the stages the search needs (data, the experts and the aligned model; each up to date by its own
key), then the search stage, whose trials are nested MLflow runs under the search stage's run; with
`register_chosen` the chosen trial goes through the same gate and register stages as the post-train flow's
candidate. The Markdown artifact shows the Pareto front plot and the front's table.

The study persists (search.storage, default search/study.db): a run after a killed one continues it, up to
`trials` finished trials in all.
"""

from __future__ import annotations

import json

from prefect import flow
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from pydantic import BaseModel, Field

from components.config import DEFAULT_PARAMS, Params, deep_merge, parse_overrides
from components.evaluate.report import inline_images
from components.merge.registry import our_methods
from components.redact import redact_text
from components.stage import StageResult
from flows.form import fields_as_parameters, one_of
from flows.runner import CHOICES, REPO, ProfileName, load_request, mlflow_run_url, registration_line, run_stages
from flows.stages import search_stages

SearchableMethod = one_of(our_methods())


class RecipeSearchRequest(BaseModel):
    """What a run of `recipe-search` may change, as the Prefect UI's form shows it; empty fields keep params.yaml."""

    params_file: str = Field(
        default=str(DEFAULT_PARAMS.name),
        description="parameters file, relative to the repository (the choices below are params.yaml's)",
    )
    profile: ProfileName = Field(default=CHOICES.default_profile, description="profile of the parameters file")
    trials: int | None = Field(default=None, ge=1, description="finished trials in all, counting earlier runs' trials")
    timeout_minutes: float | None = Field(default=None, gt=0, description="time budget of this run")
    methods: list[SearchableMethod] = Field(default=[], description="merge methods to search; empty: params.yaml's")
    study_name: str | None = Field(
        default=None, description="a new name starts a new study; empty: continue the profile's study"
    )
    register_chosen: bool | None = Field(default=None, description="gate and register the chosen trial's model")
    overrides: list[str] = Field(default=[], description="any other parameter, KEY=VALUE as with --set")


def resolve_search(request: RecipeSearchRequest) -> Params:
    """params.yaml with the request's changes, validated; raises ParamsError naming the field at fault."""
    search = {
        key: value
        for key, value in {
            "trials": request.trials,
            "timeout_minutes": request.timeout_minutes,
            "study_name": request.study_name,
            "register_chosen": request.register_chosen,
        }.items()
        if value is not None
    }
    if request.methods:
        search["space"] = {"methods": request.methods}
    overrides = deep_merge(parse_overrides(request.overrides), {"search": search})
    return load_request(request.params_file, request.profile, overrides)


def publish_search(params: Params, results: dict[str, StageResult], parent_run_id: str) -> None:
    """The front as a table artifact; the report (front plot, table, registration) as a Markdown artifact."""
    folder = params.ws.search
    trials = json.loads(folder.trials.read_text())
    create_table_artifact(
        [
            {"trial": t["name"], **t["knobs"], **{m: round(t["metrics"][m], 4) for m in params.search.objectives}}
            for t in trials
            if t["on_front"]
        ],
        key="pareto-front",
        description="The Pareto-optimal trials: their knobs and objectives",
    )
    lines = [
        inline_images(folder.report.read_text(), folder.root),
        "",
        f"MLflow: {mlflow_run_url(params, parent_run_id)}",
    ]
    if "search-register" in results:
        lines += ["", registration_line(results["search-register"])]
    create_markdown_artifact(
        redact_text("\n".join(lines)), key="recipe-search-report", description="Pareto front and the choice"
    )


@flow(name="recipe-search")
@fields_as_parameters(RecipeSearchRequest)
def recipe_search(request: RecipeSearchRequest) -> dict[str, dict[str, float]]:
    """Data -> experts -> Optuna trials (merge, SOMF, Antidote, evaluation) -> front -> chosen recipe (-> registry)."""
    params = resolve_search(request)  # before any stage: a bad parameter fails the run here, naming it
    return run_stages(params, search_stages(params, REPO), publish_search)
