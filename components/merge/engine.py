"""Run a merge recipe: check the inputs, stream tensors through a method (or hand the recipe to mergekit),
and write a normal model directory with a merge card, atomically.

Why our own streaming engine for task arithmetic, TIES, PCB and layer swapping rather than mergekit
plug-ins: PCB and layer swapping are not mergekit methods, and writing them as mergekit plug-ins ties
them to mergekit's task-graph internals, which change between releases; the engine here is short and reads one
tensor per model at a time (its speed against mergekit's on the same recipes: `python -m benchmarks merge`,
docs/pipeline.md "Merging"). Everything else mergekit does well (SLERP, DARE, breadcrumbs, ...) goes to mergekit.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import torch

from components.atomic import atomic_dir, check_output
from components.errors import InputError
from components.hashing import weights_sha256
from components.merge.method import TensorSlot, TensorStream
from components.merge.recipe import DTYPES, MERGEKIT_ONLY_KEYS, Recipe, check_schema, mergekit_reason
from components.merge.registry import check_recipe, method_named
from components.model.compat import Drift, check_compatible, read_config
from components.model.directory import check_model_dir
from components.model.tensors import LazyModel, ShardWriter, layer_of
from components.stage import StageResult

CARD = "merge_card.json"
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
    "special_tokens_map.json",
    "generation_config.json",
)


def _stream(recipe: Recipe, out: Path, max_shard_bytes: int, max_relative_delta: float) -> None:
    """Our method, one tensor at a time: read it from every model, merge it, hand it to the shard writer. The
    models' distance from the reference is summed on the way and checked at the end (the output is a temporary
    folder until then), so every tensor is read once."""
    method = method_named(recipe.merge_method)
    checked = check_recipe(
        recipe.merge_method, recipe.base_model, [m.model_dump() for m in recipe.models], recipe.parameters, "the recipe"
    )
    base_path = Path(recipe.base_model) if recipe.base_model else None
    paths = [Path(m.model) for m in recipe.models]
    reference = base_path or paths[0]
    config = read_config(reference)
    num_layers = config["num_hidden_layers"]
    model_level = checked.at(TensorSlot("", None, num_layers))[1]  # the global knobs outside the blocks
    if method.check_model is not None:  # knobs that need the block count hold one value for the whole model
        method.check_model(model_level, num_layers)
    # computed in float32 and rounded once to the output's dtype: out_dtype, else dtype, else the reference's
    named = recipe.out_dtype or recipe.dtype or config.get("dtype") or config.get("torch_dtype") or "float32"
    dtype = DTYPES[named.removeprefix("torch.")]
    base, experts = (LazyModel(base_path) if base_path else None), [LazyModel(p) for p in paths]
    reference_model = LazyModel(reference)
    names = reference_model.names()

    def read() -> Iterator[tuple[TensorSlot, torch.Tensor | None, list[torch.Tensor]]]:
        for name in names:
            yield (
                TensorSlot(name, layer_of(name), num_layers),
                base.get(name) if base else None,
                [e.get(name) for e in experts],
            )

    stream = TensorStream(read, sum(math.prod(reference_model.shape(n)) for n in names), len(experts), checked.at)
    prepared = method.prepare(stream, model_level) if method.prepare else {}
    drift = Drift(reference, paths if base_path else paths[1:], max_relative_delta)
    writer = ShardWriter(out, [(n, reference_model.shape(n)) for n in names], dtype, max_shard_bytes)
    for slot, theta, tensors in stream.read():
        per_model, params = checked.at(slot)
        params = {**params, **prepared}
        if theta is None:  # no base: the first model is the reference
            drift.add(tensors[0], tensors[1:])
        else:
            drift.add(theta, tensors)
        writer.add(slot.name, method.merge(slot, theta, tensors, per_model, params).to(dtype))
    drift.check()
    writer.close()
    config["dtype"] = str(dtype).removeprefix("torch.")
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    for file in TOKENIZER_FILES:
        if (reference / file).is_file():
            shutil.copy(reference / file, out / file)


def _mergekit(recipe: Recipe, out: Path, random_seed: int | None = None) -> None:
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions

    try:
        config = MergeConfiguration.model_validate(recipe.model_dump(exclude_none=True))
    except Exception as err:  # mergekit's own validation message names the key at fault
        raise InputError(f"mergekit refused the recipe: {err}") from None
    run_merge(config, str(out), MergeOptions(copy_tokenizer=True, quiet=True, random_seed=random_seed))


def run_recipe(
    recipe: Recipe,
    out_dir: Path,
    max_relative_delta: float = 0.5,
    max_shard_bytes: int = 2 << 30,
    random_seed: int | None = None,
) -> StageResult:
    """Check the recipe's models, merge them, and write out_dir (a model directory with merge_card.json).
    `random_seed` seeds mergekit's randomised methods (dare_ties, della, ...); ours are deterministic."""
    check_schema(recipe, "the recipe")
    delegated = mergekit_reason(recipe)
    models = [Path(m.model) for m in recipe.models]
    if delegated is None and len(set(models)) != len(models):
        raise InputError(f"the recipe names the same model twice: {[str(p) for p in models]}")
    paths = recipe.model_paths()  # each distinct directory once (mergekit's SLERP names its base among the models)
    if not paths:
        raise InputError("the recipe names no model (models:, or slices: with sources:)")
    check_output(out_dir, paths, replace=True)  # the pipeline replaces its own merges; never into an input
    for path in paths:
        check_model_dir(path, chat=False)
    surgery = any((recipe.model_extra or {}).get(key) for key in MERGEKIT_ONLY_KEYS)
    if not surgery:  # slices and tokenizer surgery combine what need not share one base: mergekit checks them
        # our engine reads every tensor anyway and checks the models' distance on the way
        check_compatible(paths[0], paths[1:], max_relative_delta, read_weights=delegated is not None)
    start = time.perf_counter()
    with atomic_dir(Path(out_dir)) as tmp:
        if delegated is None:
            _stream(recipe, tmp, max_shard_bytes, max_relative_delta)
        else:
            _mergekit(recipe, tmp, random_seed)
        check_model_dir(tmp, chat=False)
        seconds = time.perf_counter() - start
        card = {
            "method": recipe.merge_method,
            "engine": "posttrain" if delegated is None else "mergekit",
            **({"why_mergekit": delegated} if delegated else {}),
            **({"random_seed": random_seed} if delegated and random_seed is not None else {}),
            "recipe": recipe.model_dump(exclude_none=True),
            "inputs": {str(p): weights_sha256(p) for p in paths},
            "seconds": seconds,
        }
        (tmp / CARD).write_text(json.dumps(card, indent=2) + "\n")
    return StageResult(
        outputs={"model": Path(out_dir)}, metrics={"merge_seconds": seconds}, artifacts=(Path(out_dir) / CARD,)
    )
