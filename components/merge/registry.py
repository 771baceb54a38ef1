"""The merge methods this project implements, registered by name, and the recipe check they share.

A method is a module under components/merge/methods/ that defines `METHOD = MergeMethod(...)`; adding one is that
file and its entry in `BUILT_IN` at the end of this module. Registration is explicit and refuses a second method of a name (mergekit
treats that as an error too), and a knob name means one thing across methods: two methods that declare a knob of the
same name must declare the same search range. Every other `merge_method` of a recipe is mergekit's (linear, slerp,
dare_ties, ...), handed to it unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from components.errors import InputError
from components.merge.method import REQUIRED, Knob, MergeMethod, TensorSlot
from components.merge.methods.layer_swap import METHOD as LAYER_SWAP
from components.merge.methods.pcb import METHOD as PCB
from components.merge.methods.task_arithmetic import METHOD as TASK_ARITHMETIC
from components.merge.methods.ties import METHOD as TIES
from components.merge.settings import endpoints, is_filtered, is_gradient, position, resolve

_METHODS: dict[str, MergeMethod] = {}


def register(method: MergeMethod) -> MergeMethod:
    """Add a method; ValueError if its name is taken, or if one of its searchable knobs is declared by another
    method with another search range."""
    if method.name in _METHODS:
        raise ValueError(f"merge method {method.name!r} is registered twice")
    searchable = searchable_knobs()
    for knob in method.knobs:
        other = searchable.get(knob.name)
        if knob.search is not None and other is not None and other.search != knob.search:
            raise ValueError(
                f"merge method {method.name!r}: knob {knob.name!r} has search range {knob.search}, but "
                f"{', '.join(methods_with(knob.name))} declare {other.search}"
            )
    _METHODS[method.name] = method
    return method


def our_methods() -> dict[str, MergeMethod]:
    """Name -> method, in registration order."""
    return dict(_METHODS)


def method_named(name: str) -> MergeMethod | None:
    return _METHODS.get(name)


def known_method(name: str) -> bool:
    """One of ours, or one mergekit implements."""
    return name in _METHODS or mergekit_has(name)


def mergekit_has(name: str) -> bool:
    """Whether mergekit implements a method of that name (mergekit is imported only to ask)."""
    from mergekit.merge_methods import get

    try:
        get(name)
    except RuntimeError:
        return False
    return True


def all_method_names() -> list[str]:
    """Ours, then every other method mergekit registers: the choices the Prefect form offers."""
    from mergekit.merge_methods.registry import registered_methods

    return [*_METHODS, *sorted({m.spec.name for m in registered_methods()} - set(_METHODS))]


def methods_with(knob: str) -> list[str]:
    """Our methods that take the knob: what the Prefect form and error messages tell the user."""
    return [name for name, method in _METHODS.items() if method.knob(knob) is not None]


def knob_named(name: str) -> Knob:
    """The knob of that name, as our methods declare it (the Prefect form's help text)."""
    for method in _METHODS.values():
        if (knob := method.knob(name)) is not None:
            return knob
    raise KeyError(f"no merge method of this project takes a knob {name!r}")


def searchable_knobs() -> dict[str, Knob]:
    """Every knob a recipe search may draw, by name, with its declared range (`Knob.search`)."""
    return {k.name: k for method in _METHODS.values() for k in method.knobs if k.search is not None}


@dataclass(frozen=True)
class RecipeParameters:
    """One of our methods' parameters in a recipe, checked, as written: each a scalar, a gradient or filtered values
    (components/merge/settings.py); `at` gives their values at one tensor, defaults filled in."""

    method: MergeMethod
    per_model: list[dict[str, Any]]  # models[i].parameters
    shared: dict[str, Any]  # the top-level parameters: global knobs, and per-model ones for every model
    where: str

    def at(self, slot: TensorSlot) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """(each model's values, the global values) at this tensor."""
        t = position(slot)

        def value(knob: Knob, scopes: list[dict[str, Any]], where: str) -> Any:
            found = resolve(knob.name, scopes, slot.name, t)
            if found is not None:
                return found
            if knob.default is REQUIRED:
                raise InputError(f"{where}.{knob.name}: no value for tensor {slot.name} ({knob.doc})")
            return knob.default

        shared = {
            name: value(knob, [self.shared], f"{self.where}: parameters")
            for name, knob in self.method.scope(False).items()
        }
        per_model = [
            {
                name: value(knob, [entry, self.shared], f"{self.where}: models[{i}].parameters")
                for name, knob in self.method.scope(True).items()
            }
            for i, entry in enumerate(self.per_model)
        ]
        return per_model, shared


def check_setting(knob: Knob, setting: Any, where: str) -> None:
    """Every value the setting can take passes the knob's check; only numbers may vary across tensors."""
    if is_filtered(setting):
        for i, condition in enumerate([setting] if isinstance(setting, dict) else setting):
            extra = sorted(set(condition) - {"filter", "value"})
            if extra or "value" not in condition or not isinstance(condition.get("filter", ""), str):
                raise InputError(f"{where}[{i}] must be {{filter: <text>, value: <setting>}}, got {condition!r}")
    if (is_filtered(setting) or is_gradient(setting)) and knob.type is not float:
        raise InputError(f"{where} takes one value for the whole model, got {setting!r}")
    for value in endpoints(setting):
        knob.check(value, where)


def check_recipe(
    method_name: str, base_model: str | None, models: list[dict[str, Any]], parameters: dict[str, Any], where: str
) -> RecipeParameters | None:
    """The recipe's parameters for one of our methods, checked; None for mergekit's methods.

    Per-model knobs may be set per model or, for every model, at the top level (as in mergekit). Every problem is
    an InputError that names `where` and the key.
    """
    method = method_named(method_name)
    if method is None:
        return None
    if method.model_count is not None and len(models) != method.model_count:
        raise InputError(f"{where}: {method.name} takes exactly {method.model_count} models, got {len(models)}")
    if method.needs_base and not base_model:
        raise InputError(f"{where}: {method.name} needs base_model (task vectors are differences from it)")
    if not models:
        raise InputError(f"{where}: no models to merge")
    shared = dict(parameters or {})
    scopes = [(f"{where}: parameters", shared, {k.name: k for k in method.knobs})]
    per_model = [dict(entry.get("parameters") or {}) for entry in models]
    scopes += [
        (f"{where}: models[{i}].parameters", given, method.scope(per_model=True)) for i, given in enumerate(per_model)
    ]
    for scope, given, knobs in scopes:
        unknown = sorted(set(given) - set(knobs))
        if unknown:
            raise InputError(f"{scope} {unknown} mean nothing to {method.name}; it takes {sorted(knobs) or 'none'}")
        for name, setting in given.items():
            check_setting(knobs[name], setting, f"{scope}.{name}")
    for knob in method.knobs:
        if knob.default is not REQUIRED or knob.name in shared:
            continue
        if not knob.per_model:
            raise InputError(f"{where}: parameters.{knob.name} is required by {method.name} ({knob.doc})")
        for i, given in enumerate(per_model):
            if knob.name not in given:
                raise InputError(
                    f"{where}: models[{i}].parameters.{knob.name} is required by {method.name} ({knob.doc})"
                )
    return RecipeParameters(method, per_model, shared, where)


# The methods that ship, in the order the form and the help list them.
BUILT_IN = (LAYER_SWAP, PCB, TASK_ARITHMETIC, TIES)
for _method in BUILT_IN:
    register(_method)
