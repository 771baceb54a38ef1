"""Merge stage: a recipe from params.yaml whose models are pipeline names, run by the merge engine, cached."""

from __future__ import annotations

from pathlib import Path

from components.config import Params
from components.errors import InputError
from components.merge.config import MergeSpec
from components.merge.engine import run_recipe
from components.merge.recipe import Recipe
from components.model.ref import ModelRef
from components.stage import StageCache, StageInputs, StageResult
from components.workspace import Workspace


def merge_models(
    name: str, spec: MergeSpec, model_dirs: dict[str, Path], out_dir: Path, max_relative_delta: float
) -> StageResult:
    """Run merge `name`: pipeline names in `spec` become the directories in `model_dirs`."""

    def path_of(model: str) -> str:
        if not model_dirs[model].is_dir():
            raise InputError(f"merge.recipes.{name}: model {model!r} has not been built ({model_dirs[model]})")
        return str(model_dirs[model])

    recipe = Recipe(
        merge_method=spec.merge_method,
        base_model=path_of(spec.base_model) if spec.base_model else None,
        models=[{**entry, "model": path_of(entry["model"])} for entry in spec.models],
        parameters=spec.parameters,
        dtype=spec.dtype,
    )
    cache = StageCache(
        f"merge-{name}",
        out_dir,
        __name__,
        spec,
        {
            "base": Path(recipe.base_model) if recipe.base_model else None,
            "models": [Path(m.model) for m in recipe.models],
        },
    )
    if (done := cache.result({"model": Path(out_dir)})) is not None:
        return done
    result = run_recipe(recipe, out_dir, max_relative_delta)
    cache.write_card(out_dir, result.metrics)
    return result


def merge_inputs(ws: Workspace, params: Params, name: str) -> StageInputs:
    """The recipe's base model (none for a method without one) and its models, in the recipe's order."""
    spec = params.merge.recipes[name]

    def folder(model: str) -> Path:
        return ModelRef.parse(model).folder(ws)

    return {
        "base": folder(spec.base_model) if spec.base_model else None,
        "models": [folder(entry["model"]) for entry in spec.models],
    }


def merge_stage(params: Params, name: str) -> StageResult:
    """Merge recipe `name` of params.yaml into merged/<name>/."""
    ws = params.ws
    dirs = {str(ref): ref.folder(ws) for ref in map(ModelRef.parse, ["base", *params.train.jobs])}
    return merge_models(name, params.merge.recipes[name], dirs, ws.merged(name), params.merge.max_relative_delta)
