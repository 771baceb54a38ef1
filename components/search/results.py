"""What a recipe search leaves: every trial with its validation metrics, the front plot, the chosen trial and its
recipe as params.yaml keys, a report, and the one test evaluation of the chosen trial and the references (laid out
as the evaluate stage's, for the gate and register stages)."""

from __future__ import annotations

import json
from typing import Any

import yaml

from components.atomic import atomic_file
from components.evaluate.evaluation import SUMMARY, render_summary
from components.evaluate.metric_names import SAFETY_METRICS
from components.evaluate.plots import plot_safety_vs_utility
from components.model.ref import ModelRef
from components.search.config import SearchConfig
from components.search.space import choose
from components.stage import StageResult
from components.workspace import SearchFolder

SEARCHED = ModelRef.merge("searched")  # the chosen recipe's model once pasted into params.yaml


def trial_name(number: int) -> str:
    """A trial's model name (trial-<n>), as ModelRef writes it."""
    return str(ModelRef.trial(number))


def write_results(
    study, cfg: SearchConfig, references: dict[str, dict[str, float]], folder: SearchFolder
) -> StageResult:
    """trials.json, the front plot, chosen.json, chosen_recipe.yaml and report.md, all from the validation metrics."""
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
    with atomic_file(folder.trials) as tmp:
        tmp.write_text(json.dumps(trials, indent=1, default=str) + "\n")
    if table:
        plot_safety_vs_utility(
            table,
            folder.front_plot,
            utility=_utility(cfg),
            champion=chosen,
            highlight=list(front),
            star_label="chosen",
            title=f"{len(complete)} trials; red: Pareto-optimal on {', '.join(cfg.objectives)}",
        )
    record = next((t for t in trials if t["name"] == chosen), None)
    with atomic_file(folder.chosen) as tmp:
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
        with atomic_file(folder.chosen_recipe) as tmp:
            tmp.write_text(chosen_recipe_yaml(chosen, record["plan"]))
    with atomic_file(folder.report) as tmp:
        tmp.write_text(search_markdown(len(complete), front, chosen, cfg, references, folder.front_plot.name))
    metrics = {
        "trials_complete": float(len(complete)),
        "front_size": float(len(front)),
        "trials_failed": float(sum(t.state == optuna.trial.TrialState.FAIL for t in study.trials)),
    }
    if chosen is not None:
        metrics |= {f"chosen.{k}": v for k, v in front[chosen].items()}
    return StageResult(
        outputs={"search": folder.root},
        metrics=metrics,
        artifacts=tuple(
            p
            for p in (folder.trials, folder.chosen, folder.front_plot, folder.report, folder.chosen_recipe)
            if p.is_file()
        ),
    )


def _utility(cfg: SearchConfig) -> str:
    return cfg.select.metric if cfg.select.metric not in SAFETY_METRICS else cfg.objectives[0]


def chosen_recipe_yaml(trial: str, plan: dict[str, Any]) -> str:
    """The chosen plan as params.yaml keys: paste under `common` (or a profile) to make it the pipeline's."""
    safety: dict[str, Any] = {}
    if plan["realign_lr"] is not None:
        safety["realign"] = {"model": str(SEARCHED), "lr": plan["realign_lr"]}
    if plan["prune_ratio"] is not None:
        safety["prune"] = {"model": str(SEARCHED), "ratio": plan["prune_ratio"]}
    keys = {"merge": {"recipes": {SEARCHED.ident: plan["recipe"]}}, **({"safety": safety} if safety else {})}
    return f"# {trial} of the recipe search, as params.yaml keys\n" + yaml.safe_dump(keys, sort_keys=False)


def search_markdown(
    complete: int,
    front: dict[str, dict[str, float]],
    chosen: str | None,
    cfg: SearchConfig,
    references: dict[str, dict[str, float]],
    front_plot: str,
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
        f"![Pareto front]({front_plot})",
        "",
    ]
    return (
        "\n".join(lines)
        + "\n"
        + render_summary({**references, **front}).replace("# Evaluation", "## Front and references, on validation")
    )


def write_test_evaluation(
    folder: SearchFolder, chosen: str, references: dict[str, dict[str, float]], tested: dict[str, float]
) -> dict[str, float]:
    """eval/summary.json (the references and the `chosen` trial on test, `tested` its metrics) and its table in the
    report; returns the chosen trial's test metrics, named as the stage's metrics."""
    table = {**references, chosen: tested}
    with atomic_file(folder.eval / SUMMARY) as tmp:
        tmp.write_text(json.dumps(table, indent=2) + "\n")
    section = render_summary(table).replace(
        "# Evaluation", f"## {chosen} on the test splits (read once, after the choice)"
    )
    report = folder.report.read_text()
    with atomic_file(folder.report) as tmp:
        tmp.write_text(report + "\n" + section)
    return {f"chosen_test.{k}": v for k, v in tested.items()}
