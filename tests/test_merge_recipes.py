"""mergekit's own example recipes (examples/*.yml and the forms of its tests/test_basic_merges.py), model names
replaced by local tiny models, run through `python -m components.merge` and through `mergekit-yaml`: every output
tensor compared."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
import yaml
from mergekit.scripts.run_yaml import main as mergekit_yaml_command

from components.merge.__main__ import main as merge_main
from components.merge.engine import CARD
from tests.model_helpers import tensors

# name -> (recipe with {base}, {e0}, {e1}, {e2} for the models, the engine that runs it here)
RECIPES = {
    # examples/bio-merge.yml: TIES without normalisation, int8_mask, float16
    "bio-merge": (
        """
        models:
          - model: {e0}
            parameters: {{density: 0.5, weight: 0.5}}
          - model: {e1}
            parameters: {{density: 0.5, weight: 0.5}}
        merge_method: ties
        base_model: {base}
        parameters: {{normalize: false, int8_mask: true}}
        dtype: float16
        """,
        "posttrain",
    ),
    # examples/ties.yml's gradients (with ties, which both engines have), in float32
    "ties-gradients": (
        """
        models:
          - model: {e0}
            parameters: {{density: [0.8, 0.3, 0.1], weight: [1.0, 0.8, 0.5]}}
          - model: {e1}
            parameters: {{density: [0.1, 0.4, 0.1], weight: [0.2, 0.8, 0.1]}}
          - model: {e2}
            parameters: {{density: [0.1, 0.2, 0.6], weight: [0.5, 0.8, 1.0]}}
        merge_method: ties
        base_model: {base}
        dtype: float32
        """,
        "posttrain",
    ),
    # test_basic_merges.py's forms: top-level per-model knobs, filtered values
    "ties-top-level-and-filters": (
        """
        models:
          - model: {e0}
            parameters:
              weight: [{{filter: mlp, value: 0.3}}, {{value: 1.0}}]
          - model: {e1}
            parameters: {{weight: 0.7}}
        merge_method: ties
        base_model: {base}
        parameters: {{density: 0.4}}
        dtype: float32
        """,
        "posttrain",
    ),
    "task-arithmetic-normalize": (
        """
        models:
          - model: {e0}
            parameters: {{weight: 0.3}}
          - model: {e1}
            parameters: {{weight: [0.2, 0.9]}}
        merge_method: task_arithmetic
        base_model: {base}
        parameters: {{normalize: true}}
        dtype: float32
        """,
        "posttrain",
    ),
    # out_dtype: computed in float32, written in bfloat16
    "out-dtype": (
        """
        models:
          - model: {e0}
            parameters: {{weight: 1.0}}
        merge_method: task_arithmetic
        base_model: {base}
        dtype: float32
        out_dtype: bfloat16
        """,
        "posttrain",
    ),
    # a parameter only mergekit's ties has: the whole recipe goes to mergekit
    "ties-rescale": (
        """
        models:
          - model: {e0}
            parameters: {{weight: 1.0, density: 0.5}}
          - model: {e1}
            parameters: {{weight: 1.0, density: 0.5}}
        merge_method: ties
        base_model: {base}
        parameters: {{rescale: true}}
        dtype: float32
        """,
        "mergekit",
    ),
    # examples/orcamini-platy-44layer.yml: a passthrough frankenmerge of slices
    "passthrough-slices": (
        """
        slices:
          - sources:
            - model: {e0}
              layer_range: [0, 3]
          - sources:
            - model: {e1}
              layer_range: [1, 4]
        merge_method: passthrough
        dtype: float32
        """,
        "mergekit",
    ),
    # task arithmetic over slices (test_basic_merges.py)
    "task-arithmetic-slices": (
        """
        slices:
          - sources:
            - model: {e0}
              layer_range: [0, 4]
              parameters: {{weight: 0.5}}
            - model: {e1}
              layer_range: [0, 4]
              parameters: {{weight: 0.5}}
            - model: {base}
              layer_range: [0, 4]
        merge_method: task_arithmetic
        base_model: {base}
        dtype: float32
        """,
        "mergekit",
    ),
    # examples/linear.yml
    "linear": (
        """
        models:
          - model: {e0}
            parameters: {{weight: 0.7}}
          - model: {e1}
            parameters: {{weight: 0.3}}
        merge_method: linear
        dtype: float32
        """,
        "mergekit",
    ),
}

# A float16 or bfloat16 recipe: we compute in float32 and round once, mergekit computes in the recipe's dtype (its
# trim then meets many equal magnitudes and keeps others: docs/pipeline.md has the measured size). What ours must
# equal is mergekit's float32 result rounded once.
LOW_PRECISION = {"bio-merge": torch.float16}


def write_recipe(tmp_path: Path, name: str, models: dict[str, Path]) -> Path:
    text, _ = RECIPES[name]
    recipe = tmp_path / f"{name}.yml"
    recipe.write_text(yaml.safe_dump(yaml.safe_load(text.format(**{k: str(v) for k, v in models.items()}))))
    return recipe


def mergekit_yaml(recipe: Path, out: Path) -> None:
    """mergekit-yaml RECIPE OUT --copy-tokenizer, its own command run in this process (no second interpreter start)."""
    mergekit_yaml_command.main([str(recipe), str(out), "--copy-tokenizer"], standalone_mode=False)


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_mergekit_recipes_run_here_and_mean_the_same(tmp_path: Path, four_layers, name):
    recipe = write_recipe(tmp_path, name, four_layers)
    assert merge_main([str(recipe), str(tmp_path / "ours")]) == 0
    if name in LOW_PRECISION:
        as_float32 = yaml.safe_load(recipe.read_text()) | {"dtype": "float32"}
        recipe.write_text(yaml.safe_dump(as_float32))
    mergekit_yaml(recipe, tmp_path / "theirs")
    card = json.loads((tmp_path / "ours" / CARD).read_text())
    assert card["engine"] == RECIPES[name][1]
    ours, theirs = tensors(tmp_path / "ours"), tensors(tmp_path / "theirs")
    assert ours.keys() == theirs.keys()
    for key in ours:
        expected = theirs[key].to(LOW_PRECISION.get(name, theirs[key].dtype))
        assert ours[key].dtype == expected.dtype, key
        difference = float((ours[key].float() - expected.float()).abs().max())
        assert difference <= 1e-6, f"{key}: {difference}"


def test_a_random_seed_makes_dare_reproducible(tmp_path: Path, four_layers):
    recipe = tmp_path / "dare.yml"
    recipe.write_text(
        yaml.safe_dump(
            {
                "merge_method": "dare_ties",
                "base_model": str(four_layers["base"]),
                "dtype": "float32",
                "models": [
                    {"model": str(four_layers[e]), "parameters": {"weight": 0.5, "density": 0.5}} for e in ("e0", "e1")
                ],
            }
        )
    )
    for out in ("a", "b"):
        assert merge_main([str(recipe), str(tmp_path / out), "--random-seed", "7"]) == 0
    a, b = tensors(tmp_path / "a"), tensors(tmp_path / "b")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((tmp_path / "a" / CARD).read_text())["random_seed"] == 7


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"dtype": "int8"}, r"dtype: 'int8' is not one of float32, bfloat16, float16, float64"),
        (
            {"merge_method": "pcb", "parameters": {"pcb_ratio": 0.1, "rescale": True}},
            r"\['rescale'\] mean nothing to pcb",
        ),
        (
            {"models": None},
            r"Exactly one of .models., .slices., or .modules. must be present \(mergekit.s recipe schema\)",
        ),
    ],
)
def test_what_is_refused_is_named(tmp_path: Path, four_layers, change, message, capsys):
    recipe = yaml.safe_load(RECIPES["bio-merge"][0].format(**{k: str(v) for k, v in four_layers.items()}))
    recipe.update(change)
    path = tmp_path / "bad.yml"
    path.write_text(yaml.safe_dump({k: v for k, v in recipe.items() if v is not None}))
    assert merge_main([str(path), str(tmp_path / "out")]) == 2
    assert re.search(message, capsys.readouterr().err)
    assert not (tmp_path / "out").exists()
