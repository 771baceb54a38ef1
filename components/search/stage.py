"""Search stage: Optuna's multi-objective search over merge recipes, with safety in the objective.

Each trial merges the experts by a drawn recipe, optionally realigns the merge with SOMF and prunes it with
Antidote, and scores the result with the evaluation suite; the objectives are the suite's metrics
(`search.objectives`: utility up, harmful score and over-refusal down), on the validation splits. The result is
the Pareto front and the recipe `search.select` picks from it; only then are the test splits read, once, by the
chosen trial's evaluation and the references' (what the gate and register stages judge).

Why Optuna and not mergekit's evolutionary merge (mergekit-evolve): that one needs a GPU (vLLM), optimises a
single scalar, and has no notion of a safety objective; Optuna's TPE sampler handles a conditional space
(each method has its own knobs) and several objectives on a CPU.

The search is four modules: this entry, the study (components/search/study.py: resumable, the front's models
kept), one trial's steps (trial.py: merge, SOMF, Antidote, evaluation, each cached by its own key), and what it
leaves (results.py: trials, the front, the choice and its recipe, the report).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from components.config import Params, search_models
from components.data.stage import require_validated
from components.evaluate.evaluation import evaluate_cached, judge_model
from components.model.ref import ModelRef
from components.search.results import write_test_evaluation
from components.search.study import TrialLogger, search_recipes
from components.search.trial import SearchInputs
from components.stage import StageResult


def search_stage(params: Params, log_trial: TrialLogger | None = None) -> StageResult:
    """The search of params.yaml's `search`, with its experts (and the aligned model) from the workspace."""
    ws = params.ws
    require_validated(ws)
    models = {name: ModelRef.parse(name).folder(ws) for name in ["base", *dict.fromkeys(search_models(params))]}
    validation = params.evaluate.model_copy(update={"split": "val"})
    # the references drawn beside the trials, on the split the trials are chosen on; the same cache as a
    # validation run's evaluate stage
    references = {
        name: evaluate_cached(
            path,
            ws.curated,
            validation,
            params.seed,
            ws.evaluation("val") / name,
            judge_model=judge_model(validation, ws),
        )[0]
        for name, path in models.items()
    }
    inputs = SearchInputs(
        models,
        ws,
        params.merge.max_relative_delta,
        params.safety.realign,
        params.safety.prune,
        validation,
        params.seed,
    )
    chosen = search_recipes(
        params.search,
        inputs,
        references,
        ws.search,
        params.search.study_name or f"recipe-search-{params.profile}",
        log_trial,
    )
    return evaluate_chosen_on_test(chosen, models, params)


def evaluate_chosen_on_test(chosen: StageResult, references: dict[str, Path], params: Params) -> StageResult:
    """The search's one read of the test splits, after the choice: the chosen trial and the references, evaluated
    as the evaluate stage evaluates (the references in its own folders and cache, so evaluated once)."""
    ws, test = params.ws, params.evaluate.model_copy(update={"split": "test"})
    record = json.loads(ws.search.chosen.read_text())
    if not record.get("trial"):
        return chosen
    judged_by = judge_model(test, ws)
    tested = {
        name: evaluate_cached(path, ws.curated, test, params.seed, ws.eval / name, judge_model=judged_by)[0]
        for name, path in references.items()
    }
    trial, _ = evaluate_cached(
        Path(record["model"]), ws.curated, test, params.seed, ws.search.eval / record["trial"], judge_model=judged_by
    )
    metrics = write_test_evaluation(ws.search, record["trial"], tested, trial)
    return replace(chosen, metrics={**chosen.metrics, **metrics})
