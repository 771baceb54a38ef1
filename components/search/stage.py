"""Search stage: Optuna's multi-objective search over merge recipes, with safety in the objective.

Each trial merges the experts by a drawn recipe, optionally realigns the merge with SOMF and prunes it with
Antidote, and scores the result with the evaluation suite; the objectives are the suite's metrics
(`search.objectives`: utility up, harmful score and over-refusal down). The result is the Pareto front and
the recipe `search.select` picks from it.

Why Optuna and not mergekit's evolutionary merge (mergekit-evolve): that one needs a GPU (vLLM), optimises a
single scalar, and has no notion of a safety objective; Optuna's TPE sampler handles a conditional space
(each method has its own knobs) and several objectives on a CPU.

Resumable: the study lives in a database (SQLite under the run directory, or `search.storage`), so a second
run continues it up to `search.trials` in all. One searcher per study: the flows hold the workspace lock, so a
trial still RUNNING when a search starts was cut off by a kill; it is marked FAIL and its knobs queued again.
Every step of a trial is cached by its own key (merge, realign, prune, evaluation), so the re-run trial
redoes only what had not finished. Only the models of Pareto-optimal trials are kept on disk.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from components.atomic import atomic_dir, atomic_file
from components.config import EvaluateConfig, MergeSpec, Params, PruneConfig, RealignConfig, SearchConfig, search_models
from components.data.stage import require_validated
from components.errors import ParamsError
from components.evaluate.evaluation import SUMMARY, WEIGHTS, evaluate_cached, judge_model, render_summary
from components.evaluate.plots import plot_safety_vs_utility
from components.hashing import json_sha256
from components.merge.stage import merge_models
from components.model.ref import ModelRef
from components.safety.prune import prune_model
from components.safety.realign import realign_model
from components.safety.stage import realign_data, retain_tables
from components.search.space import TrialPlan, choose, directions, objective_values, suggest
from components.stage import StageResult
from components.workspace import Workspace

TRIALS = "trials.json"
CHOSEN = "chosen.json"
EVAL = "eval"  # the front's evaluations, laid out as the evaluate stage's (what gate and register read)
CHOSEN_RECIPE = "chosen_recipe.yaml"
FRONT_PLOT = "pareto_front.png"
REPORT_MD = "report.md"
MODEL_STEPS = ("merged", "realigned", "pruned")

# A finished trial, as the tracking layer logs it: (name, knobs, metrics, tags).
TrialLogger = Callable[[str, dict[str, Any], dict[str, float], dict[str, str]], None]


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


def trial_name(number: int) -> str:
    return f"trial-{number}"


def run_trial(plan: TrialPlan, inputs: SearchInputs, trial_dir: Path) -> tuple[dict[str, float], Path]:
    """Merge -> (SOMF) -> (Antidote) -> evaluation for one plan in `trial_dir`; returns (metrics, final model)."""
    spec = MergeSpec.model_validate(plan.recipe)
    result = merge_models(trial_dir.name, spec, inputs.models, trial_dir / "merged", inputs.max_relative_delta)
    model = result.outputs["model"]
    if plan.realign_lr is not None:
        cfg = inputs.realign.model_copy(update={"lr": plan.realign_lr})
        model = realign_model(
            inputs.models[inputs.realign.aligned],
            model,
            realign_data(inputs.ws, cfg),
            cfg,
            trial_dir / "realigned",
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
            trial_dir / "pruned",
            inputs.ws.split("domain_qa", "train"),
        ).outputs["model"]
    judged_by = judge_model(inputs.evaluate, inputs.ws)
    metrics, _ = evaluate_cached(
        model, inputs.ws.curated, inputs.evaluate, inputs.seed, trial_dir / "eval", judge_model=judged_by
    )
    for step in MODEL_STEPS:  # the intermediate models served their purpose; the final one stays while on the front
        if trial_dir / step != model:
            shutil.rmtree(trial_dir / step, ignore_errors=True)
    return metrics, model


def plan_key(plan: TrialPlan) -> str:
    """The folder of a plan's models: the same knobs (a retried trial) find their finished steps there."""
    return json_sha256({"recipe": plan.recipe, "realign_lr": plan.realign_lr, "prune_ratio": plan.prune_ratio})[:16]


def open_study(cfg: SearchConfig, storage: str, study_name: str, seed: int):
    """The study, created or continued; trials cut off by a killed search are failed and queued again."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    existing = [s.study_name for s in optuna.get_all_study_summaries(storage)]
    finished = 0
    if study_name in existing:
        study = optuna.load_study(study_name=study_name, storage=storage)
        if study.directions != [
            optuna.study.StudyDirection.MAXIMIZE if d == "maximize" else optuna.study.StudyDirection.MINIMIZE
            for d in directions(cfg.objectives)
        ]:
            raise ParamsError(
                f"search.objectives: study {study_name!r} in {storage} was made for other objectives "
                f"({len(study.directions)}); set search.study_name to start a new study"
            )
        for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
            study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
        finished = len(study.trials)
    # A new seed per resumption: a continued study must not draw its first trials' knobs again.
    sampler = optuna.samplers.TPESampler(seed=seed + finished, n_startup_trials=min(10, cfg.trials))
    return optuna.create_study(
        study_name=study_name,
        storage=storage,
        directions=directions(cfg.objectives),
        sampler=sampler,
        load_if_exists=True,
    )


def search_recipes(
    cfg: SearchConfig,
    inputs: SearchInputs,
    references: dict[str, dict[str, float]],
    out_dir: Path,
    study_name: str,
    log_trial: TrialLogger | None = None,
) -> StageResult:
    """Run the search up to `cfg.trials` finished trials (or `cfg.timeout_minutes`); write the front and the choice.

    `references` are already evaluated models (base, experts) drawn beside the trials for comparison.
    """
    import optuna

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    storage = cfg.storage or f"sqlite:///{(out_dir / 'study.db').resolve()}"
    study = open_study(cfg, storage, study_name, inputs.seed)
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]

    def objective(trial: optuna.Trial) -> list[float]:
        plan = suggest(trial, cfg.space, cfg.models)
        trial_dir = out_dir / "trials" / plan_key(plan)
        trial.set_user_attr(
            "plan", {"recipe": plan.recipe, "realign_lr": plan.realign_lr, "prune_ratio": plan.prune_ratio}
        )
        trial.set_user_attr("dir", str(trial_dir))
        started = time.monotonic()
        metrics, model = run_trial(plan, inputs, trial_dir)
        trial.set_user_attr("metrics", metrics)
        trial.set_user_attr("model", str(model))
        trial.set_user_attr("seconds", time.monotonic() - started)
        if log_trial is not None:
            log_trial(
                trial_name(trial.number),
                trial.params,
                metrics,
                {"trial_dir": str(trial_dir), "recipe": json.dumps(plan.recipe)},
            )
        return objective_values(metrics, cfg.objectives)

    def keep_front_models(study: optuna.Study, _trial) -> None:
        front_dirs = {t.user_attrs["dir"] for t in study.best_trials}
        for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
            if trial.user_attrs["dir"] not in front_dirs:
                for step in MODEL_STEPS:
                    shutil.rmtree(Path(trial.user_attrs["dir"]) / step, ignore_errors=True)

    remaining = cfg.trials - len(done)
    if remaining > 0:
        timeout = cfg.timeout_minutes * 60 if cfg.timeout_minutes else None
        study.optimize(objective, n_trials=remaining, timeout=timeout, callbacks=[keep_front_models])
    return write_results(study, cfg, references, out_dir)


def write_results(study, cfg: SearchConfig, references: dict[str, dict[str, float]], out_dir: Path) -> StageResult:
    """trials.json, eval/summary.json (references and trials), the front plot, chosen.json, chosen_recipe.yaml."""
    import optuna

    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    front = {trial_name(t.number): t.user_attrs["metrics"] for t in sorted(study.best_trials, key=lambda t: t.number)}
    chosen = choose(front, cfg.select)
    trials = [
        {
            "name": trial_name(t.number),
            "state": t.state.name,
            "knobs": t.params,
            **t.user_attrs,
            "on_front": trial_name(t.number) in front,
        }
        for t in study.trials
    ]
    table = {**references, **{trial_name(t.number): t.user_attrs["metrics"] for t in complete}}
    with atomic_file(out_dir / TRIALS) as tmp:
        tmp.write_text(json.dumps(trials, indent=1, default=str) + "\n")
    with atomic_dir(out_dir / EVAL) as tmp:
        (tmp / SUMMARY).write_text(json.dumps(table, indent=2) + "\n")
        trial_dirs = {trial_name(t.number): Path(t.user_attrs["dir"]) for t in complete}
        for name in front:
            (tmp / name).mkdir()
            (tmp / name / "metrics.json").write_text(json.dumps(front[name], indent=2) + "\n")
            evaluated = trial_dirs[name] / "eval" / WEIGHTS  # which weights the metrics describe
            if evaluated.is_file():
                shutil.copy(evaluated, tmp / name / WEIGHTS)
    if table:
        plot_safety_vs_utility(
            table,
            out_dir / FRONT_PLOT,
            utility=_utility(cfg),
            champion=chosen,
            highlight=list(front),
            star_label="chosen",
            title=f"{len(complete)} trials; red: Pareto-optimal on {', '.join(cfg.objectives)}",
        )
    record = next((t for t in trials if t["name"] == chosen), None)
    with atomic_file(out_dir / CHOSEN) as tmp:
        tmp.write_text(
            json.dumps(
                {
                    "trial": chosen,
                    "rule": cfg.select.model_dump(mode="json"),
                    **({k: record[k] for k in ("plan", "metrics", "model")} if record else {}),
                },
                indent=2,
            )
            + "\n"
        )
    if record is not None:
        with atomic_file(out_dir / CHOSEN_RECIPE) as tmp:
            tmp.write_text(chosen_recipe_yaml(chosen, record["plan"]))
    with atomic_file(out_dir / REPORT_MD) as tmp:
        tmp.write_text(search_markdown(len(complete), front, chosen, cfg, references))
    metrics = {
        "trials_complete": float(len(complete)),
        "front_size": float(len(front)),
        "trials_failed": float(sum(t.state == optuna.trial.TrialState.FAIL for t in study.trials)),
    }
    if chosen is not None:
        metrics |= {f"chosen.{k}": v for k, v in front[chosen].items()}
    return StageResult(
        outputs={"search": out_dir},
        metrics=metrics,
        artifacts=tuple(
            p
            for p in (
                out_dir / TRIALS,
                out_dir / CHOSEN,
                out_dir / FRONT_PLOT,
                out_dir / REPORT_MD,
                out_dir / CHOSEN_RECIPE,
            )
            if p.is_file()
        ),
    )


def _utility(cfg: SearchConfig) -> str:
    return cfg.select.metric if cfg.select.metric not in ("harmful_score", "over_refusal") else cfg.objectives[0]


def chosen_recipe_yaml(trial: str, plan: dict[str, Any]) -> str:
    """The chosen plan as params.yaml keys: paste under `common` (or a profile) to make it the pipeline's."""
    safety: dict[str, Any] = {}
    if plan["realign_lr"] is not None:
        safety["realign"] = {"model": "merge-searched", "lr": plan["realign_lr"]}
    if plan["prune_ratio"] is not None:
        safety["prune"] = {"model": "merge-searched", "ratio": plan["prune_ratio"]}
    keys = {"merge": {"recipes": {"searched": plan["recipe"]}}, **({"safety": safety} if safety else {})}
    return f"# {trial} of the recipe search, as params.yaml keys\n" + yaml.safe_dump(keys, sort_keys=False)


def search_markdown(
    complete: int,
    front: dict[str, dict[str, float]],
    chosen: str | None,
    cfg: SearchConfig,
    references: dict[str, dict[str, float]],
) -> str:
    lines = [
        f"# Recipe search: {complete} trials, {len(front)} on the Pareto front",
        "",
        f"Objectives: {', '.join(cfg.objectives)}. Rule: best {cfg.select.metric} on the front"
        + (
            " within " + ", ".join(f"{m} in [{b.min}, {b.max}]" for m, b in cfg.select.bounds.items())
            if cfg.select.bounds
            else ""
        )
        + ".",
        "",
        f"Chosen: **{chosen}**." if chosen else "Chosen: none (no front trial is within the bounds).",
        "",
        f"![Pareto front]({FRONT_PLOT})",
        "",
    ]
    return (
        "\n".join(lines)
        + "\n"
        + render_summary({**references, **front}).replace("# Evaluation", "## Front and references")
    )


def search_stage(params: Params, log_trial: TrialLogger | None = None) -> StageResult:
    """The search of params.yaml's `search`, with its experts (and the aligned model) from the workspace."""
    ws = params.ws
    require_validated(ws)
    models = {name: ModelRef.parse(name).folder(ws) for name in ["base", *dict.fromkeys(search_models(params))]}
    # the references drawn beside the trials; the same cache as the evaluate stage's, so evaluated once
    references = {
        name: evaluate_cached(
            path, ws.curated, params.evaluate, params.seed, ws.eval / name, judge_model=judge_model(params.evaluate, ws)
        )[0]
        for name, path in models.items()
    }
    inputs = SearchInputs(
        models,
        ws,
        params.merge.max_relative_delta,
        params.safety.realign,
        params.safety.prune,
        params.evaluate,
        params.seed,
    )
    return search_recipes(
        params.search,
        inputs,
        references,
        ws.search,
        params.search.study_name or f"recipe-search-{params.profile}",
        log_trial,
    )
