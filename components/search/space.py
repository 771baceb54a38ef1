"""What one trial is: the knobs it drew, the merge recipe they make, and the rule that picks the winner.

Pure functions over plain values, no Optuna: the search stage (components/search/stage.py) asks Optuna for the
knobs through `suggest`, which takes any object with Optuna's `suggest_*` methods.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from components.evaluate.metric_names import higher_is_better
from components.merge.method import Knob
from components.merge.registry import our_methods
from components.search.config import FloatRange, IntRange, SearchSpace, SelectRule


class Suggester(Protocol):
    def suggest_categorical(self, name: str, choices: list[Any]) -> Any: ...
    def suggest_float(self, name: str, low: float, high: float, *, log: bool = False) -> float: ...
    def suggest_int(self, name: str, low: int, high: int) -> int: ...


@dataclass(frozen=True)
class TrialPlan:
    """A trial's merge recipe (params.yaml's format, pipeline model names) and its safety strengths."""

    recipe: dict[str, Any]
    realign_lr: float | None
    prune_ratio: float | None


def _float(trial: Suggester, name: str, space: FloatRange) -> float:
    return space.low if space.low == space.high else trial.suggest_float(name, space.low, space.high, log=space.log)


def _int(trial: Suggester, name: str, space: IntRange) -> int:
    return space.low if space.low == space.high else trial.suggest_int(name, space.low, space.high)


def _draw(trial: Suggester, knob: Knob, space: FloatRange | IntRange) -> float | int:
    return _int(trial, knob.name, space) if knob.type is int else _float(trial, knob.name, space)


def suggest(trial: Suggester, space: SearchSpace, models: list[str]) -> TrialPlan:
    """Draw one trial: the method first, then only the knobs that method declares searchable (a conditional space)."""
    method = our_methods()[trial.suggest_categorical("method", space.methods)]
    per_model: dict[str, Any] = {}
    parameters: dict[str, Any] = {}
    for knob in method.knobs:
        if knob.search is not None:
            (per_model if knob.per_model else parameters)[knob.name] = _draw(trial, knob, space.range_of(knob))
    # layer_swap: the first model receives the second's outer blocks
    chosen = models[: method.model_count] if method.model_count else models
    recipe = {
        "merge_method": method.name,
        "base_model": "base" if method.needs_base else None,
        "models": [{"model": m, "parameters": dict(per_model)} for m in chosen],
        "parameters": parameters,
    }
    realign = _float(trial, "realign_lr", space.realign_lr) if space.realign_lr is not None else None
    prune = _float(trial, "prune_ratio", space.prune_ratio) if space.prune_ratio is not None else None
    return TrialPlan(recipe, realign, prune or None)  # a zero prune ratio prunes nothing: no prune step


def objective_values(metrics: dict[str, float], objectives: list[str]) -> list[float]:
    return [float(metrics[name]) for name in objectives]


def directions(objectives: list[str]) -> list[str]:
    """Optuna's direction per objective, from the metric's own (higher is better: maximize)."""
    return ["maximize" if higher_is_better(name) else "minimize" for name in objectives]


def choose(front: dict[str, dict[str, float]], rule: SelectRule) -> str | None:
    """The front member within `rule.bounds` that is best by `rule.metric`; ties go to the first listed; None if none fit."""

    def within(metrics: dict[str, float]) -> bool:
        return all(
            (b.min is None or metrics[m] >= b.min) and (b.max is None or metrics[m] <= b.max)
            for m, b in rule.bounds.items()
        )

    eligible = [name for name, metrics in front.items() if within(metrics)]
    if not eligible:
        return None
    sign = 1 if higher_is_better(rule.metric) else -1
    return max(eligible, key=lambda name: (sign * front[name][rule.metric], -eligible.index(name)))
