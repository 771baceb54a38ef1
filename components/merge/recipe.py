"""Merge recipes in mergekit's YAML format, extended with this project's methods.

A recipe is whatever mergekit's own `MergeConfiguration` accepts (it parses every recipe first, so a key it
refuses is named as mergekit names it), with this project's methods besides. The methods implemented here
(task_arithmetic, ties, pcb, layer_swap, streamed tensor by tensor) declare their parameters in
components/merge/methods/ and take every parameter form mergekit allows (components/merge/settings.py). Every
other `merge_method` (linear, slerp, dare_ties, breadcrumbs, della, model_stock, passthrough, ...), and a recipe
of ties or task_arithmetic that uses what only mergekit does (`slices`, `modules`, tokenizer surgery, a parameter
our engine lacks, weights in pytorch_model.bin), is handed to mergekit as it is: mergekit already does those well.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from components.errors import InputError
from components.merge.registry import check_recipe, known_method, mergekit_has, method_named, our_methods
from components.merge.settings import is_filtered
from components.yamlfile import read_yaml

# the dtypes a recipe's dtype (computation) and out_dtype (output) may name, as mergekit names them
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "float64": torch.float64}


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
    out_dtype: str | None = None

    def model_paths(self) -> list[Path]:
        """Every model the recipe reads, once each, the base first: models, and the sources of slices and modules."""
        found = [self.base_model] if self.base_model else []
        found += [m.model for m in self.models]
        for output in self.outputs():
            found += [output["base_model"]] if output.get("base_model") else []
            found += [source["model"] for source in output.get("sources") or []]
        return [Path(p) for p in dict.fromkeys(found)]

    def outputs(self) -> list[dict[str, Any]]:
        """The recipe's output slices, those of its modules included (mergekit's `slices:` / `modules:` forms)."""
        extra = self.model_extra or {}
        slices = list(extra.get("slices") or [])
        for module in (extra.get("modules") or {}).values():
            slices += list(module.get("slices") or [])
        return slices

    def resolve(self, root: Path) -> Recipe:
        """Relative model paths are relative to the recipe's folder."""

        def absolute(path: str) -> str:
            return str((root / path).resolve()) if not Path(path).is_absolute() and (root / path).exists() else path

        def in_slices(slices: list[dict[str, Any]]) -> list[dict[str, Any]]:
            return [
                {
                    **piece,
                    **({"base_model": absolute(piece["base_model"])} if piece.get("base_model") else {}),
                    "sources": [{**src, "model": absolute(src["model"])} for src in piece.get("sources") or []],
                }
                for piece in slices
            ]

        extra = dict(self.model_extra or {})
        if extra.get("slices"):
            extra["slices"] = in_slices(extra["slices"])
        if extra.get("modules"):
            extra["modules"] = {
                name: {**module, "slices": in_slices(module.get("slices") or [])}
                for name, module in extra["modules"].items()
            }
        return Recipe.model_validate(
            {
                **self.model_dump(exclude_none=True),
                **extra,
                "base_model": absolute(self.base_model) if self.base_model else None,
                "models": [m.model_copy(update={"model": absolute(m.model)}).model_dump() for m in self.models],
            }
        )


def check_parameters(recipe: Recipe, where: str) -> None:
    """Unknown, missing or out-of-range parameters of our methods are errors that name the key (a recipe handed to
    mergekit is mergekit's to check)."""
    if mergekit_reason(recipe, where) is None:
        check_recipe(
            recipe.merge_method, recipe.base_model, [m.model_dump() for m in recipe.models], recipe.parameters, where
        )


MERGEKIT_ONLY_KEYS = ("slices", "modules", "tokenizer_source", "tokenizer", "chat_template")


def mergekit_reason(recipe: Recipe, where: str = "the recipe") -> str | None:
    """Why mergekit merges this recipe; None when our engine does. A recipe of our method that needs what only
    mergekit does, where mergekit lacks the method (pcb, layer_swap), is an error naming the key."""
    method = method_named(recipe.merge_method)
    if method is None:
        return f"{recipe.merge_method} is mergekit's method"
    extra = recipe.model_extra or {}
    used = [key for key in MERGEKIT_ONLY_KEYS if extra.get(key)]
    given = [*recipe.parameters, *(name for m in recipe.models for name in m.parameters)]
    used += [f"parameters.{name}" for name in dict.fromkeys(given) if name in method.mergekit_knobs]
    used += [
        f"{path} (no *.safetensors)"
        for path in recipe.model_paths()
        if path.is_dir() and not any(path.glob("*.safetensors"))
    ]
    if not used:
        return None
    if not mergekit_has(method.name):
        raise InputError(f"{where}: {used[0]}: only mergekit does that, and {method.name} is not a mergekit method")
    return f"uses {', '.join(used)}"


def load_recipe(path: Path) -> Recipe:
    path = Path(path)
    raw = read_yaml(path, "recipe", InputError)
    try:
        recipe = Recipe.model_validate(raw).resolve(path.resolve().parent)
    except ValidationError as err:
        first = err.errors()[0]
        raise InputError(f"{path}: {'.'.join(map(str, first['loc']))}: {first['msg']}") from None
    check_schema(recipe, path)
    if not known_method(recipe.merge_method):
        raise InputError(
            f"{path}: merge_method: unknown method {recipe.merge_method!r}: neither one of this project's "
            f"({', '.join(our_methods())}) nor one of mergekit's"
        )
    check_parameters(recipe, str(path))
    return recipe


def check_schema(recipe: Recipe, where: Path | str) -> None:
    """The recipe parses as mergekit's MergeConfiguration (its schema, its messages), and names known dtypes."""
    from mergekit.config import MergeConfiguration

    raw = recipe.model_dump(exclude_none=True)
    # a dict-valued knob of ours (LiNeS's {alpha, beta}) is no mergekit setting: its check is the method's
    raw["parameters"] = {k: v for k, v in recipe.parameters.items() if not (isinstance(v, dict) and not is_filtered(v))}
    try:
        MergeConfiguration.model_validate(raw)
    except ValidationError as err:
        first = err.errors()[0]
        raise InputError(
            f"{where}: {'.'.join(map(str, first['loc']))}: {first['msg']} (mergekit's recipe schema)"
        ) from None
    except RuntimeError as err:  # mergekit's own validators raise these ("Must specify either output slices or models")
        raise InputError(f"{where}: {err} (mergekit's recipe schema)") from None
    for key in ("dtype", "out_dtype"):
        value = getattr(recipe, key)
        if value is not None and value.removeprefix("torch.") not in DTYPES:
            raise InputError(f"{where}: {key}: {value!r} is not one of {', '.join(DTYPES)}")
