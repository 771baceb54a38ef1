"""The recipe search's parameters (params.yaml `search`): the experts, the space, the objectives and the rule that
picks the recipe."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import Field, PositiveInt, field_validator, model_validator

from components.evaluate.metric_names import METRIC_DIRECTIONS
from components.schema import StrictModel

if TYPE_CHECKING:
    from components.merge.method import Knob


class FloatRange(StrictModel):
    """A search range [low, high]; `log` samples on a log scale (low must then be positive)."""

    low: float = Field(ge=0)
    high: float = Field(ge=0)
    log: bool = False

    @model_validator(mode="after")
    def _ordered(self) -> FloatRange:
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) is above high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError("a log range needs low > 0")
        return self


class IntRange(StrictModel):
    low: PositiveInt
    high: PositiveInt

    @model_validator(mode="after")
    def _ordered(self) -> IntRange:
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) is above high ({self.high})")
        return self


class SearchSpace(StrictModel):
    """What a trial may choose; a range whose low equals its high fixes that knob."""

    methods: list[str] = Field(default=["task_arithmetic", "ties", "pcb", "layer_swap"], min_length=1)
    # ranges of the merge methods' searchable knobs, by knob name, in place of the range each knob declares
    # (components/merge/methods/; `python -m flows search --help` lists them)
    ranges: dict[str, FloatRange] = {}
    realign_lr: FloatRange | None = FloatRange(low=0.05, high=0.5, log=True)  # SOMF mask lr; null: no realignment
    prune_ratio: FloatRange | None = None  # Antidote share pruned; null: no pruning

    @field_validator("methods")
    @classmethod
    def _our_methods(cls, methods: list[str]) -> list[str]:
        from components.merge.registry import our_methods  # here: the registry imports torch (see merge/config.py)

        unknown = sorted(set(methods) - set(our_methods()))
        if unknown:
            raise ValueError(
                f"{unknown} cannot be searched: the search knows the knobs of {', '.join(sorted(our_methods()))}"
            )
        return methods

    @field_validator("ranges")
    @classmethod
    def _searchable_knobs(cls, ranges: dict[str, FloatRange]) -> dict[str, FloatRange]:
        """Each key a searchable knob; an integer knob's range in whole numbers from 1."""
        from components.merge.registry import searchable_knobs

        knobs = searchable_knobs()
        unknown = sorted(set(ranges) - set(knobs))
        if unknown:
            raise ValueError(f"{unknown} are not searchable knobs (searchable: {', '.join(knobs)})")
        for name, bounds in ranges.items():
            if knobs[name].type is int and not all(v == int(v) and v >= 1 for v in (bounds.low, bounds.high)):
                raise ValueError(f"{name} takes whole numbers from 1, got [{bounds.low:g}, {bounds.high:g}]")
        return ranges

    def range_of(self, knob: Knob) -> FloatRange | IntRange:
        """The range a trial draws the knob from: params.yaml's, else the one the knob declares."""
        low, high = (
            (self.ranges[knob.name].low, self.ranges[knob.name].high) if knob.name in self.ranges else knob.search
        )
        if knob.type is int:
            return IntRange(low=int(low), high=int(high))
        return self.ranges.get(knob.name) or FloatRange(low=low, high=high)


class Bounds(StrictModel):
    min: float | None = None
    max: float | None = None


class SelectRule(StrictModel):
    """The recipe to promote: among the Pareto-optimal trials within `bounds`, the best by `metric`."""

    metric: str = "domain_mc_acc_norm"
    bounds: dict[str, Bounds] = {}


class SearchConfig(StrictModel):
    """Optuna search over merge recipes and safety strengths (flows/recipe_search.py, components/search/)."""

    models: list[str] = Field(default=["domain", "math"], min_length=2)  # layer_swap: receiver first, then donor
    trials: PositiveInt = 20  # in all, counting the trials of earlier (interrupted) runs of the same study
    timeout_minutes: float | None = Field(default=None, gt=0)  # per invocation; the trial under way finishes
    storage: str | None = None  # Optuna storage URL (sqlite:///..., postgresql://...); null: search/study.db
    study_name: str | None = None  # null: recipe-search-<profile>
    objectives: list[str] = ["domain_mc_acc_norm", "harmful_score", "over_refusal"]
    space: SearchSpace = SearchSpace()
    select: SelectRule = SelectRule()
    register_chosen: bool = False  # gate and register the chosen recipe's model (registry.model_name, registry.gates)

    @model_validator(mode="after")
    def _known_metrics(self) -> SearchConfig:
        for where, metrics in (
            ("objectives", self.objectives),
            ("select.metric", [self.select.metric]),
            ("select.bounds", list(self.select.bounds)),
        ):
            unknown = [m for m in metrics if m not in METRIC_DIRECTIONS]
            if unknown:
                raise ValueError(
                    f"{where}: {unknown} are not metrics of the evaluation suite "
                    f"(known: {', '.join(METRIC_DIRECTIONS)})"
                )
        if len(set(self.objectives)) != len(self.objectives) or not self.objectives:
            raise ValueError("objectives: list each metric once, at least one")
        return self
