"""Merge stage: a recipe from params.yaml whose models are pipeline names, run by the merge engine, cached."""

from __future__ import annotations

from pathlib import Path

from components.config import MergeSpec
from components.errors import InputError
from components.hashing import json_sha256, tree_sha256
from components.merge.engine import run_recipe
from components.merge.recipe import Recipe, check_parameters
from components.stage import StageResult, code_digest, up_to_date, write_card


def merge_models(name: str, spec: MergeSpec, model_dirs: dict[str, Path], out_dir: Path,
                 max_relative_delta: float) -> StageResult:
    """Run merge `name`: pipeline names in `spec` become the directories in `model_dirs`."""
    def path_of(model: str) -> str:
        if not model_dirs[model].is_dir():
            raise InputError(f"merge.recipes.{name}: model {model!r} has not been built ({model_dirs[model]})")
        return str(model_dirs[model])

    recipe = Recipe(merge_method=spec.merge_method, base_model=path_of(spec.base_model) if spec.base_model else None,
                    models=[{**entry, "model": path_of(entry["model"])} for entry in spec.models],
                    parameters=spec.parameters, dtype=spec.dtype)
    check_parameters(recipe, f"merge.recipes.{name}")
    inputs = [recipe.base_model] if recipe.base_model else []
    key = json_sha256({"code": code_digest(__name__, "components.merge.engine", "components.merge.methods",
                                           "components.merge.tensors"),
                       "recipe": spec.model_dump(mode="json"), "inputs": [tree_sha256(Path(p)) for p in inputs]
                       + [tree_sha256(Path(m.model)) for m in recipe.models]})
    card = up_to_date(out_dir, key)
    if card is not None:
        return StageResult(outputs={"model": Path(out_dir)}, metrics=card["metrics"], cached=True)
    result = run_recipe(recipe, out_dir, max_relative_delta)
    write_card(out_dir, {"stage": f"merge-{name}", "key": key, "metrics": result.metrics})
    return result
