"""A recipe parameter's value at one tensor, resolved as mergekit resolves it (mergekit/config.py
`evaluate_setting`, mergekit/parameter_resolver.py), so that a recipe means the same here and there.

A setting is a scalar; a gradient (a list of numbers, interpolated linearly across the blocks at
t = layer / (L − 1), and t = 0 outside the blocks); or filtered values (a list of {filter, value}: the first whose
filter is `*`, absent, or a substring of the tensor's name). A per-model parameter is looked up in the model's
`parameters` first, then in the recipe's top-level `parameters`; a setting that resolves to nothing (no filter
matches) falls through to the next.
"""

from __future__ import annotations

from typing import Any

from components.merge.method import TensorSlot


def position(slot: TensorSlot) -> float:
    """mergekit's t: 0 for tensors outside the blocks, layer / (L − 1) for a block's (1 in a one-block model)."""
    if slot.layer is None:
        return 0.0
    return slot.layer / (slot.num_layers - 1) if slot.num_layers > 1 else 1.0


def is_filtered(setting: Any) -> bool:
    """{filter, value} or a list of dicts (a dict without those keys is a value: LiNeS's {alpha, beta})."""
    if isinstance(setting, dict):
        return "filter" in setting or "value" in setting
    return isinstance(setting, list) and bool(setting) and all(isinstance(e, dict) for e in setting)


def is_gradient(setting: Any) -> bool:
    return isinstance(setting, list) and bool(setting) and not is_filtered(setting)


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def setting_at(setting: Any, tensor_name: str, t: float) -> Any:
    """The setting's value at a tensor of that name and position t; None when no filter matches."""
    if is_filtered(setting):
        for condition in [setting] if isinstance(setting, dict) else setting:
            pattern = condition.get("filter")
            if pattern is None or pattern == "*" or pattern in tensor_name:
                return setting_at(condition.get("value"), tensor_name, t)
        return None
    if is_gradient(setting):
        if not all(_number(e) for e in setting):  # booleans and strings select, numbers interpolate
            return setting[int(t * (len(setting) - 1))]
        scaled = t * (len(setting) - 1)
        low = int(scaled)
        high = min(len(setting) - 1, low + 1)
        return (1 - (scaled - low)) * setting[low] + (scaled - low) * setting[high]
    return None if isinstance(setting, list) else setting


def endpoints(setting: Any) -> list[Any]:
    """Every value the setting can take before interpolation: what a recipe check validates."""
    if is_filtered(setting):
        conditions = [setting] if isinstance(setting, dict) else setting
        return [value for condition in conditions for value in endpoints(condition.get("value"))]
    if isinstance(setting, list):
        return list(setting)
    return [setting]


def resolve(name: str, scopes: list[dict[str, Any]], tensor_name: str, t: float) -> Any:
    """The first non-None value of `name` among the scopes (highest precedence first); None if none sets it."""
    for scope in scopes:
        if name in scope:
            value = setting_at(scope[name], tensor_name, t)
            if value is not None:
                return value
    return None
