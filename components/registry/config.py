"""The gates and the registry's parameters (params.yaml `registry`)."""

from __future__ import annotations

from pydantic import Field, field_validator

from components.evaluate.metric_names import METRIC_DIRECTIONS
from components.schema import StrictModel


class RelativeBound(StrictModel):
    """A bound set by another evaluated candidate of the same run: `times` × its value + `plus` (a ceiling for
    metrics where lower is better, a floor for the others)."""

    of: str  # a candidate of the evaluate stage: base, a train job, merge-<recipe>, realigned-/pruned-<model>
    times: float = Field(default=1.0, ge=0)
    plus: float = 0.0


class GateSpec(StrictModel):
    """Bounds on one metric: `min` / `max` absolute, `relative` to another candidate of the run, `tolerance` how far
    it may fall behind the champion."""

    min: float | None = Field(default=None, ge=0)
    max: float | None = Field(default=None, ge=0)
    relative: RelativeBound | None = None
    tolerance: float | None = Field(default=None, ge=0)


class RegistryConfig(StrictModel):
    """The gated candidate and where it is registered (aliases `challenger` and `champion`)."""

    model_name: str = Field(default="post-train", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    candidate: str | None = None  # the pipeline model that ships (e.g. realigned-merge-ties); None: no gate stage
    promote: bool = True  # move `champion` when every gate passes
    # each gate holds the candidate's one-sided bound at this confidence; a gain over the champion must be
    # significant at 1 - confidence (components/registry/gates.py)
    confidence: float = Field(default=0.95, ge=0.5, lt=1)
    gates: dict[str, GateSpec] = {}

    @field_validator("gates")
    @classmethod
    def _known_metrics(cls, gates: dict[str, GateSpec]) -> dict[str, GateSpec]:
        for metric in gates:
            if metric not in METRIC_DIRECTIONS:
                raise ValueError(
                    f"gate on {metric!r}: not a metric of the evaluation suite "
                    f"(gateable: {', '.join(METRIC_DIRECTIONS)})"
                )
        return gates
