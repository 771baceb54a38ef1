"""Merge recipes in mergekit's YAML format, extended with this project's methods.

A recipe has `merge_method`, `base_model`, `models[].model` with `models[].parameters` (weight, density),
top-level `parameters`, and `dtype`, as in mergekit. Methods implemented here, streamed tensor by tensor:

- task_arithmetic: weight per model; lambda (1.0).
- ties: weight (1.0) and density (1.0) per model; normalize (true), lambda (1.0). Same result as mergekit.
- pcb: pcb_ratio (0.1) and lambda (1.0); no per-model parameters.
- layer_swap: two models, the receiver first; num_layers (N, required): the bottom and top N blocks come from
  the donor; blend (false): the block after the bottom N and the one before the top N become the mean of both.

Any task-vector method (task_arithmetic, ties, pcb) takes `lines: {alpha, beta}` among its parameters:
LiNeS scaling, which replaces lambda by α + β·ℓ/(L−1) for block ℓ.

Every other `merge_method` (linear, slerp, dare_ties, breadcrumbs, della, model_stock, ...) is handed to
mergekit as it is: mergekit already does those well.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from components.errors import InputError
from components.yamlfile import read_yaml

OUR_METHODS = {"task_arithmetic", "ties", "pcb", "layer_swap"}
MODEL_PARAMETERS = {"task_arithmetic": {"weight"}, "ties": {"weight", "density"}, "pcb": set(), "layer_swap": set()}
GLOBAL_PARAMETERS = {"task_arithmetic": {"lambda", "lines"}, "ties": {"lambda", "normalize", "lines"},
                     "pcb": {"lambda", "pcb_ratio", "lines"}, "layer_swap": {"num_layers", "blend"}}


class ModelEntry(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str
    parameters: dict[str, Any] = {}


class Recipe(BaseModel):
    model_config = ConfigDict(extra="allow")  # mergekit keys this project does not interpret (slices, ...)
    merge_method: str
    base_model: str | None = None
    models: list[ModelEntry] = Field(default_factory=list)
    parameters: dict[str, Any] = {}
    dtype: str | None = None

    def resolve(self, root: Path) -> Recipe:
        """Relative model paths are relative to the recipe's folder."""
        def absolute(path: str) -> str:
            return str((root / path).resolve()) if not Path(path).is_absolute() and (root / path).exists() else path

        return self.model_copy(update={
            "base_model": absolute(self.base_model) if self.base_model else None,
            "models": [m.model_copy(update={"model": absolute(m.model)}) for m in self.models],
        })


def known_method(method: str) -> bool:
    """One of ours, or one mergekit implements (mergekit is imported only to ask)."""
    if method in OUR_METHODS:
        return True
    from mergekit.merge_methods import get

    try:
        get(method)
    except RuntimeError:
        return False
    return True


def check_parameters(recipe: Recipe, where: str) -> None:
    """Unknown or out-of-range parameters of our methods are errors that name the key."""
    method = recipe.merge_method
    if method not in OUR_METHODS:
        return
    if method == "layer_swap":
        if len(recipe.models) != 2:
            raise InputError(f"{where}: layer_swap takes exactly two models (receiver, donor), got {len(recipe.models)}")
        if not isinstance(recipe.parameters.get("num_layers"), int) or recipe.parameters["num_layers"] < 1:
            raise InputError(f"{where}: parameters.num_layers must be a positive integer for layer_swap")
    elif not recipe.base_model:
        raise InputError(f"{where}: {method} needs base_model (task vectors are differences from it)")
    elif not recipe.models:
        raise InputError(f"{where}: no models to merge")
    unknown = set(recipe.parameters) - GLOBAL_PARAMETERS[method]
    if unknown:
        raise InputError(f"{where}: parameters {sorted(unknown)} mean nothing to {method}; "
                         f"it takes {sorted(GLOBAL_PARAMETERS[method]) or 'none'}")
    for i, entry in enumerate(recipe.models):
        unknown = set(entry.parameters) - MODEL_PARAMETERS[method]
        if unknown:
            raise InputError(f"{where}: models[{i}].parameters {sorted(unknown)} mean nothing to {method}")
        density = entry.parameters.get("density", 1.0)
        if not 0 <= density <= 1:
            raise InputError(f"{where}: models[{i}].parameters.density must be in [0, 1], got {density}")
    ratio = recipe.parameters.get("pcb_ratio", 0.1)
    if not 0 < ratio <= 1:
        raise InputError(f"{where}: parameters.pcb_ratio must be in (0, 1], got {ratio}")
    lines = recipe.parameters.get("lines")
    if lines is not None and (not isinstance(lines, dict) or set(lines) != {"alpha", "beta"}):
        raise InputError(f"{where}: parameters.lines must be {{alpha: ..., beta: ...}}")


def load_recipe(path: Path) -> Recipe:
    path = Path(path)
    raw = read_yaml(path, "recipe", InputError)
    try:
        recipe = Recipe.model_validate(raw).resolve(path.resolve().parent)
    except ValidationError as err:
        first = err.errors()[0]
        raise InputError(f"{path}: {'.'.join(map(str, first['loc']))}: {first['msg']}") from None
    check_parameters(recipe, str(path))
    return recipe
