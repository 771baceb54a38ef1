"""One trial of the recipe search: merge the experts by a drawn recipe, optionally realign (SOMF) and prune
(Antidote), and evaluate; every step cached by its own key, so a retried trial redoes only what had not finished."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from components.evaluate.config import EvaluateConfig
from components.evaluate.evaluation import evaluate_cached, judge_model
from components.hashing import json_sha256
from components.merge.config import MergeSpec
from components.merge.stage import merge_models
from components.safety.config import PruneConfig, RealignConfig
from components.safety.prune import contrast_table, prune_model
from components.safety.realign import realign_data, realign_model, retain_tables
from components.search.space import TrialPlan
from components.workspace import TrialFolder, Workspace


@dataclass(frozen=True)
class SearchInputs:
    """Where a search reads from: model directories by pipeline name, and the workspace's data."""

    models: dict[str, Path]
    ws: Workspace
    max_relative_delta: float
    realign: RealignConfig
    prune: PruneConfig
    evaluate: EvaluateConfig
    seed: int


def run_trial(plan: TrialPlan, inputs: SearchInputs, trial: TrialFolder) -> tuple[dict[str, float], Path]:
    """Merge -> (SOMF) -> (Antidote) -> evaluation for one plan in `trial`; returns (metrics, final model)."""
    spec = MergeSpec.model_validate(plan.recipe)
    result = merge_models(trial.root.name, spec, inputs.models, trial.merged, inputs.max_relative_delta)
    model = result.outputs["model"]
    if plan.realign_lr is not None:
        cfg = inputs.realign.model_copy(update={"lr": plan.realign_lr})
        model = realign_model(
            inputs.models[inputs.realign.aligned],
            model,
            realign_data(inputs.ws, cfg),
            cfg,
            trial.realigned,
            inputs.models["base"],
            retain_tables(inputs.ws, cfg),
        ).outputs["model"]
    if plan.prune_ratio is not None:
        cfg = inputs.prune.model_copy(update={"ratio": plan.prune_ratio})
        model = prune_model(
            model,
            inputs.models[inputs.prune.aligned],
            inputs.ws.harmful_compliance,
            cfg,
            trial.pruned,
            contrast_table(inputs.ws),
        ).outputs["model"]
    judged_by = judge_model(inputs.evaluate, inputs.ws)
    metrics, _ = evaluate_cached(
        model, inputs.ws.curated, inputs.evaluate, inputs.seed, trial.eval, judge_model=judged_by
    )
    for step in trial.models:  # the intermediate models served their purpose; the final one stays while on the front
        if step != model:
            shutil.rmtree(step, ignore_errors=True)
    return metrics, model


def plan_key(plan: TrialPlan) -> str:
    """The folder of a plan's models: the same knobs (a retried trial) find their finished steps there."""
    return json_sha256({"recipe": plan.recipe, "realign_lr": plan.realign_lr, "prune_ratio": plan.prune_ratio})[:16]
