"""The merge-method registry: each method declares its knobs once; recipe checks, the engine, the search space and
the Prefect form read that declaration, and a new method is one declaration and its registration."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from optuna.trial import FixedTrial

from components.errors import InputError
from components.merge import registry
from components.merge.method import Knob, MergeMethod, TensorSlot
from components.merge.registry import check_recipe, methods_with, our_methods
from components.merge.settings import position, setting_at
from components.search.config import SearchSpace
from components.search.space import suggest
from flows.post_train import PostTrainRequest
from tests.model_helpers import recipe, tensors


def _gain_copy(slot, base, experts, per_model, params):
    return experts[0].float() * params["gain"]


GAIN = Knob("gain", float, 1.0, low=0, high=4, search=(0.5, 2.0))
GAIN_COPY = MergeMethod("gain_copy", "the first model times gain", (GAIN,), _gain_copy, needs_base=False)


def test_the_four_methods_are_found_with_their_knobs():
    found = our_methods()
    assert list(found) == ["layer_swap", "pcb", "task_arithmetic", "ties"]
    assert {k.name for k in found["ties"].knobs} == {"weight", "density", "lambda", "normalize", "int8_mask", "lines"}
    assert [k.name for k in found["ties"].knobs if k.per_model] == ["weight", "density"]
    assert methods_with("density") == ["ties"] and methods_with("lambda") == ["pcb", "task_arithmetic", "ties"]
    assert registry.searchable_knobs().keys() == {"num_layers", "pcb_ratio", "lambda", "density"}
    space = SearchSpace()  # every searchable knob draws from the range its method declares, as its own type
    assert space.range_of(found["ties"].knob("density")).model_dump() == {"low": 0.1, "high": 1.0, "log": False}
    assert space.range_of(found["layer_swap"].knob("num_layers")).model_dump() == {"low": 1, "high": 4}
    narrowed = SearchSpace(ranges={"density": {"low": 0.3, "high": 0.4}, "num_layers": {"low": 2, "high": 2}})
    assert narrowed.range_of(found["ties"].knob("density")).low == 0.3
    assert isinstance(narrowed.range_of(found["layer_swap"].knob("num_layers")).low, int)


def test_the_form_says_which_methods_take_a_knob():
    fields = PostTrainRequest.model_fields
    assert fields["density"].description.endswith("(ties)")  # it once said "ties, pcb...": pcb refuses density
    assert fields["merge_lambda"].description.endswith("(pcb, task_arithmetic, ties)")


@pytest.mark.parametrize(
    ("method", "models", "parameters", "message"),
    [
        (
            "ties",
            [{"model": "a", "parameters": {"density": "high"}}],
            {},
            r"models\[0\].parameters.density must be a number, got 'high'",
        ),
        (
            "ties",
            [{"model": "a", "parameters": {"density": [0.2, 1.5]}}],
            {},
            r"models\[0\].parameters.density must be in \[0, 1\], got 1.5",
        ),
        (
            "ties",
            [{"model": "a", "parameters": {"density": [{"filter": "mlp", "valu": 0.5}]}}],
            {},
            r"models\[0\].parameters.density\[0\] must be \{filter: <text>, value: <setting>\}",
        ),
        (
            "layer_swap",
            [{"model": "a"}, {"model": "b"}],
            {"num_layers": [1, 2]},
            r"parameters.num_layers takes one value for the whole model, got \[1, 2\]",
        ),
        ("ties", [{"model": "a"}], {"pcb_ratio": 0.1}, r"parameters \['pcb_ratio'\] mean nothing to ties"),
        ("ties", [{"model": "a"}], {"lambda": "abc"}, r"parameters.lambda must be a number, got 'abc'"),
        ("ties", [{"model": "a"}], {"lambda": -5}, r"parameters.lambda must be in \(0, inf\), got -5"),
        ("ties", [{"model": "a"}], {"normalize": "yes"}, r"parameters.normalize must be true or false"),
        ("pcb", [{"model": "a"}], {"pcb_ratio": 0}, r"parameters.pcb_ratio must be in \(0, 1\], got 0"),
        (
            "pcb",
            [{"model": "a"}],
            {"lines": {"alpha": 1}},
            r"parameters.lines must be \{alpha: <number or auto>, beta: <number>\}",
        ),
        (
            "pcb",
            [{"model": "a"}],
            {"lines": {"alpha": 0.5, "beta": "auto"}},
            r"parameters.lines must be \{alpha: <number or auto>, beta: <number>\}",
        ),
        ("layer_swap", [{"model": "a"}, {"model": "b"}], {}, r"parameters.num_layers is required by layer_swap"),
        (
            "layer_swap",
            [{"model": "a"}, {"model": "b"}],
            {"num_layers": 1.5},
            r"parameters.num_layers must be an integer",
        ),
        ("layer_swap", [{"model": "a"}], {"num_layers": 1}, r"layer_swap takes exactly 2 models, got 1"),
        (
            "task_arithmetic",
            [{"model": "a", "parameters": {"density": 0.5}}],
            {},
            r"models\[0\].parameters \['density'\] mean nothing to task_arithmetic",
        ),
    ],
)
def test_bad_knobs_are_named(method, models, parameters, message):
    base = None if method == "layer_swap" else "base"
    with pytest.raises(InputError, match=r"^R: " + message):
        check_recipe(method, base, models, parameters, "R")


def test_defaults_are_filled_from_the_declaration():
    checked = check_recipe("ties", "base", [{"model": "a"}, {"model": "b", "parameters": {"density": 0.3}}], {}, "R")
    per_model, params = checked.at(TensorSlot("model.layers.0.mlp.up_proj.weight", 0, 4))
    assert per_model == [{"weight": 1.0, "density": 1.0}, {"weight": 1.0, "density": 0.3}]
    assert params == {"lambda": 1.0, "normalize": True, "int8_mask": False, "lines": None}
    assert check_recipe("slerp", "base", [{"model": "a"}], {"t": 0.5}, "R") is None  # mergekit's: not ours to check


def test_a_new_method_is_one_declaration_and_its_registration(tmp_path: Path, monkeypatch, four_layers):
    monkeypatch.setattr(registry, "_METHODS", dict(registry._METHODS))  # the built-in registry is left as it was
    registry.register(GAIN_COPY)
    assert "gain_copy" in our_methods()
    # the recipe check, the engine and the search space all know it from its declaration alone
    with pytest.raises(InputError, match=r"parameters.gain must be in \[0, 4\], got 9"):
        check_recipe("gain_copy", None, [{"model": "a"}], {"gain": 9}, "R")
    from components.merge.engine import run_recipe

    run_recipe(recipe(four_layers, "gain_copy", [("e0", {})], {"gain": 0.5}, base=False), tmp_path / "out")
    merged, e0 = tensors(tmp_path / "out"), tensors(four_layers["e0"])
    assert all(torch.allclose(merged[name], e0[name] * 0.5) for name in e0)
    space = SearchSpace(methods=["gain_copy"], realign_lr=None)
    plan = suggest(FixedTrial({"method": "gain_copy", "gain": 1.2}), space, ["domain", "math"])
    assert plan.recipe["parameters"] == {"gain": 1.2} and plan.recipe["base_model"] is None


def test_registration_refuses_a_second_method_of_a_name_and_a_knob_of_two_ranges(monkeypatch):
    monkeypatch.setattr(registry, "_METHODS", dict(registry._METHODS))
    with pytest.raises(ValueError, match="merge method 'ties' is registered twice"):
        registry.register(MergeMethod("ties", "another ties", (), _gain_copy))
    other_lambda = Knob("lambda", float, 1.0, low=0, search=(0.1, 9.0))
    with pytest.raises(ValueError, match=r"knob 'lambda' has search range \(0.1, 9.0\), but pcb, task_arithmetic"):
        registry.register(MergeMethod("scaled", "x", (other_lambda,), _gain_copy))
    assert "scaled" not in our_methods()


def test_settings_resolve_as_mergekit_resolves_them():
    # t = layer / (L − 1); a gradient interpolates linearly between its neighbouring points
    assert position(TensorSlot("model.layers.1.mlp.up_proj.weight", 1, 5)) == 0.25
    assert position(TensorSlot("model.norm.weight", None, 5)) == 0.0
    assert setting_at([0.0, 1.0, 0.5], "x", 0.25) == 0.5  # halfway from 0 to 1
    assert setting_at([0.0, 1.0, 0.5], "x", 0.75) == 0.75  # halfway from 1 to 0.5
    assert setting_at([True, False], "x", 0.9) is True  # booleans select: int(0.9 × 1) = 0
    filtered = [{"filter": "mlp", "value": [0.0, 1.0]}, {"value": 0.3}]
    assert setting_at(filtered, "model.layers.3.mlp.up_proj.weight", 0.5) == 0.5
    assert setting_at(filtered, "model.layers.3.self_attn.q_proj.weight", 0.5) == 0.3
    assert setting_at([{"filter": "mlp", "value": 1}], "lm_head.weight", 0.0) is None
    # a filter that matches nothing falls through to the top-level parameters
    checked = check_recipe(
        "ties",
        "base",
        [{"model": "a", "parameters": {"density": {"filter": "mlp", "value": 0.2}}}],
        {"density": 0.7},
        "R",
    )
    assert checked.at(TensorSlot("model.layers.0.mlp.up_proj.weight", 0, 4))[0][0]["density"] == 0.2
    assert checked.at(TensorSlot("model.layers.0.self_attn.v_proj.weight", 0, 4))[0][0]["density"] == 0.7
