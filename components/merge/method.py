"""The interface every merge method implements, and the knobs it declares once beside its function.

A method is a `MergeMethod` in its own module under components/merge/methods/: its name, whether it needs a
base model, how many models it takes, its knobs (name, type, bounds, default, per model or global, and the
search range it is drawn from) and a function that merges one tensor. Recipe checking
(components.merge.registry.check_recipe), the engine's dispatch, the recipe search's space and the Prefect
form all read these declarations; nothing else lists a method's parameters. mergekit does the same with its
`merge_methods/registry.py` and each method's `ParameterSpec`s (`merge_methods/base.py`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from components.errors import InputError

REQUIRED = object()  # the default of a knob the recipe must set


@dataclass(frozen=True)
class Knob:
    """One parameter of a method: `per_model` knobs go under models[i].parameters, the others under parameters."""

    name: str
    type: type  # float, int, bool or dict
    default: Any = REQUIRED
    low: float | None = None
    high: float | None = None
    low_open: bool = False  # the bound itself is excluded
    high_open: bool = False
    per_model: bool = False
    fields: tuple[str, ...] = ()  # a dict knob's keys, each a number
    auto_fields: tuple[str, ...] = ()  # of those, the ones that may also be "auto" (derived from the models)
    # the range a recipe search draws it from, (low, high); search.space.ranges.<name> in params.yaml narrows or
    # widens it. None: not searched
    search: tuple[float, float] | None = None
    doc: str = ""

    def check(self, value: Any, where: str) -> Any:
        """The value if its type and bounds hold; InputError naming `where` otherwise."""
        if self.type is dict:
            if (
                not isinstance(value, dict)
                or set(value) != set(self.fields)
                or not all(_is_number(v) or (k in self.auto_fields and v == "auto") for k, v in value.items())
            ):
                shape = ", ".join(f"{f}: <number{' or auto' if f in self.auto_fields else ''}>" for f in self.fields)
                raise InputError(f"{where} must be {{{shape}}}, got {value!r}")
            return value
        if self.type is bool:
            if not isinstance(value, bool):
                raise InputError(f"{where} must be true or false, got {value!r}")
            return value
        if self.type is int and not (isinstance(value, int) and not isinstance(value, bool)):
            raise InputError(f"{where} must be an integer, got {value!r}")
        if not _is_number(value):
            raise InputError(f"{where} must be a number, got {value!r}")
        too_low = self.low is not None and (value <= self.low if self.low_open else value < self.low)
        too_high = self.high is not None and (value >= self.high if self.high_open else value > self.high)
        if too_low or too_high:
            raise InputError(f"{where} must be in {self.interval}, got {value}")
        return value

    @property
    def interval(self) -> str:
        low = "-inf" if self.low is None else f"{self.low:g}"
        high = "inf" if self.high is None else f"{self.high:g}"
        return f"{'(' if self.low_open or self.low is None else '['}{low}, {high}{')' if self.high_open or self.high is None else ']'}"


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value == value  # NaN is no bound


@dataclass(frozen=True)
class TensorSlot:
    """Where a tensor sits in the model: its name, its block (None outside the blocks), the block count."""

    name: str
    layer: int | None
    num_layers: int


# merge(slot, θ_base or None, [θ_i], per-model parameters, global parameters) -> merged θ (defaults filled in)
MergeTensor = Callable[
    [TensorSlot, torch.Tensor | None, list[torch.Tensor], list[dict[str, Any]], dict[str, Any]], torch.Tensor
]


@dataclass(frozen=True)
class TensorStream:
    """Every tensor of a merge's models, read anew on each call of `read`: (slot, θ_base or None, [θ_i]) in the
    output's order; `size` is one model's entry count, `models` the number of models besides the base, `at` the
    recipe's parameters at a tensor (each model's, the global ones; defaults filled in)."""

    read: Callable[[], Iterator[tuple[TensorSlot, torch.Tensor | None, list[torch.Tensor]]]]
    size: int
    models: int
    at: Callable[[TensorSlot], tuple[list[dict[str, Any]], dict[str, Any]]]


# prepare(stream, global parameters at the model level) -> values added to the global parameters of every tensor:
# the whole-model statistics a method needs before it merges any tensor (streamed, not held)
Prepare = Callable[[TensorStream, dict[str, Any]], dict[str, Any]]


@dataclass(frozen=True)
class MergeMethod:
    name: str
    summary: str
    knobs: tuple[Knob, ...]
    merge: MergeTensor
    needs_base: bool = True  # task-vector methods: θ_i − θ_base
    model_count: int | None = None  # exactly this many models; None: one or more
    check_model: Callable[[dict[str, Any], int], None] | None = None  # checks that need the block count
    # parameters of mergekit's method of the same name that this one does not compute: a recipe that sets one is
    # handed to mergekit whole, so that it means what it means there
    mergekit_knobs: tuple[str, ...] = ()
    prepare: Prepare | None = None  # statistics over the whole model, computed before the merge pass

    def knob(self, name: str) -> Knob | None:
        return next((k for k in self.knobs if k.name == name), None)

    def scope(self, per_model: bool) -> dict[str, Knob]:
        return {k.name: k for k in self.knobs if k.per_model == per_model}
