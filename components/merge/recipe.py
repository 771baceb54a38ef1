"""Merge recipes in mergekit's YAML format, extended with this project's methods.

A recipe has `merge_method`, `base_model`, `models[].model` with `models[].parameters` (weight, density),
top-level `parameters`, and `dtype`, as in mergekit. The methods implemented here (task_arithmetic, ties,
pcb, layer_swap, streamed tensor by tensor) declare their parameters in components/merge/methods/; every
other `merge_method` (linear, slerp, dare_ties, breadcrumbs, della, model_stock, ...) is handed to mergekit
as it is: mergekit already does those well.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from components.errors import InputError
from components.merge.registry import check_recipe, known_method, our_methods
from components.yamlfile import read_yaml


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

        return self.model_copy(
            update={
                "base_model": absolute(self.base_model) if self.base_model else None,
                "models": [m.model_copy(update={"model": absolute(m.model)}) for m in self.models],
            }
        )


def check_parameters(recipe: Recipe, where: str) -> None:
    """Unknown, missing or out-of-range parameters of our methods are errors that name the key."""
    check_recipe(
        recipe.merge_method, recipe.base_model, [m.model_dump() for m in recipe.models], recipe.parameters, where
    )


def load_recipe(path: Path) -> Recipe:
    path = Path(path)
    raw = read_yaml(path, "recipe", InputError)
    try:
        recipe = Recipe.model_validate(raw).resolve(path.resolve().parent)
    except ValidationError as err:
        first = err.errors()[0]
        raise InputError(f"{path}: {'.'.join(map(str, first['loc']))}: {first['msg']}") from None
    if not known_method(recipe.merge_method):
        raise InputError(
            f"{path}: merge_method: unknown method {recipe.merge_method!r}: neither one of this project's "
            f"({', '.join(our_methods())}) nor one of mergekit's"
        )
    check_parameters(recipe, str(path))
    return recipe
