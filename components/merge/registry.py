"""The merge methods this project implements, found in components/merge/methods/, and the recipe check they share.

Adding a method is one file: a module under components/merge/methods/ that defines `METHOD = MergeMethod(...)`.
Every other `merge_method` of a recipe is mergekit's (linear, slerp, dare_ties, ...), handed to it unchanged.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
from typing import Any

from components.errors import InputError
from components.merge import methods as methods_package
from components.merge.method import REQUIRED, MergeMethod


@functools.cache
def our_methods() -> dict[str, MergeMethod]:
    """Name -> method, for every module of components/merge/methods that declares a METHOD."""
    found = {}
    for info in sorted(pkgutil.iter_modules(methods_package.__path__), key=lambda i: i.name):
        method = getattr(importlib.import_module(f"{methods_package.__name__}.{info.name}"), "METHOD", None)
        if isinstance(method, MergeMethod):
            found[method.name] = method
    return found


def method_named(name: str) -> MergeMethod | None:
    return our_methods().get(name)


def known_method(name: str) -> bool:
    """One of ours, or one mergekit implements (mergekit is imported only to ask)."""
    if name in our_methods():
        return True
    from mergekit.merge_methods import get

    try:
        get(name)
    except RuntimeError:
        return False
    return True


def all_method_names() -> list[str]:
    """Ours, then every other method mergekit registers: the choices the Prefect form offers."""
    from mergekit.merge_methods.registry import registered_methods

    return [*our_methods(), *sorted({m.spec.name for m in registered_methods()} - set(our_methods()))]


def methods_with(knob: str) -> list[str]:
    """Our methods that take the knob: what the Prefect form and error messages tell the user."""
    return [name for name, method in our_methods().items() if method.knob(knob) is not None]


def filled(method: MergeMethod, given: dict[str, Any], per_model: bool, where: str) -> dict[str, Any]:
    """`given` checked against the method's knobs of that scope, with every default filled in."""
    knobs = method.scope(per_model)
    unknown = sorted(set(given) - set(knobs))
    if unknown:
        raise InputError(f"{where} {unknown} mean nothing to {method.name}; it takes {sorted(knobs) or 'none'}")
    values = {}
    for name, knob in knobs.items():
        if name in given:
            values[name] = knob.check(given[name], f"{where}.{name}")
        elif knob.default is REQUIRED:
            raise InputError(f"{where}.{name} is required by {method.name} ({knob.doc})")
        else:
            values[name] = knob.default
    return values


def check_recipe(
    method_name: str, base_model: str | None, models: list[dict[str, Any]], parameters: dict[str, Any], where: str
) -> tuple[list[dict[str, Any]], dict[str, Any]] | None:
    """(per-model parameters, global parameters) with defaults, for one of our methods; None for mergekit's.

    Every problem is an InputError that names `where` and the key.
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
    global_values = filled(method, parameters, per_model=False, where=f"{where}: parameters")
    per_model = [
        filled(method, entry.get("parameters") or {}, per_model=True, where=f"{where}: models[{i}].parameters")
        for i, entry in enumerate(models)
    ]
    return per_model, global_values
