"""The merge engine on tiny models: same result as mergekit, every method wired per tensor, safe on bad input."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM

from components.errors import InputError
from components.merge import methods
from components.merge.engine import CARD, _mergekit, run_recipe
from components.merge.recipe import Recipe, load_recipe
from tests.conftest import REPO
from tests.model_helpers import fine_tune, recipe, tensors


@pytest.mark.parametrize(
    "method, parameters, per_model",
    [
        (
            "ties",
            {"lambda": 1.3},
            [{"weight": 1.0, "density": 0.5}, {"weight": 0.6, "density": 0.2}, {"weight": 0.3, "density": 0.9}],
        ),
        ("task_arithmetic", {"lambda": 0.7}, [{"weight": 0.5}, {"weight": 0.3}, {"weight": 0.2}]),
        # mergekit's other parameter forms: gradients across the blocks, filtered values, top-level per-model knobs
        (
            "ties",
            {"density": 0.4, "lambda": [0.8, 1.2]},
            [
                {"weight": [{"filter": "mlp", "value": 0.5}, {"value": 1.0}], "density": [0.2, 0.9, 0.5]},
                {"weight": [1.0, 0.3]},
                {"weight": 0.6, "density": [{"filter": "self_attn", "value": [0.1, 0.7]}]},
            ],
        ),
        (
            "task_arithmetic",
            {"weight": 0.4},
            [{"weight": [0.2, 1.0]}, {}, {"weight": [{"filter": "up_proj", "value": 2}]}],
        ),
    ],
)
def test_same_result_as_mergekit(tmp_path: Path, four_layers, method, parameters, per_model):
    r = recipe(four_layers, method, [(f"e{i}", p) for i, p in enumerate(per_model)], parameters)
    run_recipe(r, tmp_path / "ours")
    (tmp_path / "mergekit").mkdir()
    _mergekit(r, tmp_path / "mergekit")
    ours, theirs = tensors(tmp_path / "ours"), tensors(tmp_path / "mergekit")
    assert ours.keys() == theirs.keys()
    assert max(float((ours[k] - theirs[k]).abs().max()) for k in ours) < 1e-6


def test_pcb_and_lines_are_applied_per_tensor_with_the_depth_of_each(tmp_path: Path, four_layers):
    lines = {"alpha": 0.25, "beta": 0.75}
    r = recipe(four_layers, "pcb", [("e0", {}), ("e1", {}), ("e2", {})], {"pcb_ratio": 0.2, "lines": lines})
    run_recipe(r, tmp_path / "pcb")
    merged, base = tensors(tmp_path / "pcb"), tensors(four_layers["base"])
    experts = [tensors(four_layers[f"e{i}"]) for i in range(3)]
    for name, depth in [
        ("model.embed_tokens.weight", 0),
        ("model.layers.0.mlp.up_proj.weight", 0),
        ("model.layers.2.self_attn.q_proj.weight", 2),
        ("model.norm.weight", 0),  # outside the blocks: α, as LiNeS's official code scales it
    ]:
        lam = 0.25 + 0.75 * depth / 3
        expected = methods.pcb(base[name], [e[name] for e in experts], ratio=0.2, lam=lam)
        assert torch.allclose(merged[name], expected, atol=1e-6), name


def test_whole_model_pcb_equals_pcb_on_the_flattened_model(tmp_path: Path, four_layers):
    # the paper's and the official code's form: every statistic over the whole model's concatenated task vectors
    r = recipe(four_layers, "pcb", [("e0", {}), ("e1", {})], {"pcb_ratio": 0.2, "lambda": 0.8, "whole_model": True})
    run_recipe(r, tmp_path / "pcb")
    merged, base = tensors(tmp_path / "pcb"), tensors(four_layers["base"])
    experts = [tensors(four_layers[e]) for e in ("e0", "e1")]
    names = list(base)
    flat = methods.pcb(
        torch.cat([base[n].flatten() for n in names]),
        [torch.cat([e[n].flatten() for n in names]) for e in experts],
        ratio=0.2,
        lam=0.8,
    )
    expected = dict(zip(names, flat.split([base[n].numel() for n in names]), strict=True))
    assert max(float((merged[n].flatten() - expected[n]).abs().max()) for n in names) < 1e-6
    per_tensor = methods.pcb(base[names[1]], [e[names[1]] for e in experts], ratio=0.2, lam=0.8)
    assert not torch.allclose(merged[names[1]], per_tensor, atol=1e-6)  # the scope changes what is kept
    graded = recipe(four_layers, "pcb", [("e0", {}), ("e1", {})], {"pcb_ratio": [0.1, 0.3], "whole_model": True})
    with pytest.raises(InputError, match=r"pcb_ratio: with whole_model: true it is one value for the whole model"):
        run_recipe(graded, tmp_path / "graded")
    assert not (tmp_path / "graded").exists()


def test_lines_multi_task_alpha_is_derived_from_the_task_vectors(tmp_path: Path, four_layers):
    density = {"weight": 1.0, "density": 0.5}
    lines = {"alpha": "auto", "beta": 0.5}
    run_recipe(recipe(four_layers, "ties", [("e0", density), ("e1", density)], {"lines": lines}), tmp_path / "out")
    merged, base = tensors(tmp_path / "out"), tensors(four_layers["base"])
    experts = [tensors(four_layers[e]) for e in ("e0", "e1")]
    # α = ‖Σ_t τ_t‖₁ / (T · ‖τ_TIES‖₁), τ_TIES merged with λ = 1 (LiNeS's official code)
    tv = {n: methods.ties(base[n], [e[n] for e in experts], [1.0, 1.0], [0.5, 0.5]) - base[n] for n in base}
    summed = sum(float((experts[0][n] + experts[1][n] - 2 * base[n]).abs().sum()) for n in base)
    alpha = summed / (2 * sum(float(t.abs().sum()) for t in tv.values()))
    assert 0.5 < alpha < 2  # TIES's disjoint mean is smaller than the sum: α is above 1/T
    for name, factor in [("model.layers.3.mlp.up_proj.weight", alpha + 0.5), ("model.embed_tokens.weight", alpha)]:
        assert torch.allclose(merged[name], base[name] + factor * tv[name], atol=1e-6), name


def test_layer_swap_takes_bottom_and_top_blocks_from_the_donor(tmp_path: Path, four_layers):
    r = recipe(four_layers, "layer_swap", [("e0", {}), ("e1", {})], {"num_layers": 1, "transition": 1}, base=False)
    run_recipe(r, tmp_path / "swap")
    merged, receiver, donor = tensors(tmp_path / "swap"), tensors(four_layers["e0"]), tensors(four_layers["e1"])
    name = "model.layers.{}.mlp.down_proj.weight"
    assert torch.equal(merged[name.format(0)], donor[name.format(0)])
    assert torch.equal(merged[name.format(3)], donor[name.format(3)])
    for blended in (1, 2):  # the transition blocks next to the swapped ones: 4 blocks, N = 1
        assert torch.allclose(
            merged[name.format(blended)], (receiver[name.format(blended)] + donor[name.format(blended)]) / 2
        )
    assert torch.equal(merged["model.embed_tokens.weight"], receiver["model.embed_tokens.weight"])


def test_layer_swap_zones_as_the_paper_configures_them(tmp_path: Path, four_layers):
    # 4 blocks, bottom 1, top 0, a transition of 2: donor shares 1, 1 − 1/3, 1 − 2/3, 0
    assert [methods.layer_swap_share(layer, 4, 1, 0, 2) for layer in range(4)] == pytest.approx([1, 2 / 3, 1 / 3, 0])
    # bottom 1, top 2, no transition: 1, 0, 1, 1
    assert [methods.layer_swap_share(layer, 4, 1, 2, 0) for layer in range(4)] == [1, 0, 1, 1]
    params = {"num_layers": 0, "bottom_layers": 1, "transition": 2}
    run_recipe(recipe(four_layers, "layer_swap", [("e0", {}), ("e1", {})], params, base=False), tmp_path / "swap")
    merged, receiver, donor = tensors(tmp_path / "swap"), tensors(four_layers["e0"]), tensors(four_layers["e1"])
    name = "model.layers.1.self_attn.q_proj.weight"
    assert torch.allclose(merged[name], 2 / 3 * donor[name] + 1 / 3 * receiver[name], atol=1e-7)
    too_many = {"num_layers": 2, "transition": 1}  # 2 + 2 swapped and 2 transition blocks in 4
    with pytest.raises(InputError, match="need 6 blocks; the model has 4"):
        run_recipe(recipe(four_layers, "layer_swap", [("e0", {}), ("e1", {})], too_many, base=False), tmp_path / "x")


def test_output_is_a_model_directory_with_a_card_and_shards(tmp_path: Path, four_layers):
    r = recipe(four_layers, "ties", [("e0", {"density": 0.5}), ("e1", {"density": 0.5})], {})
    result = run_recipe(r, tmp_path / "sharded", max_shard_bytes=4 << 20)
    index = json.loads((tmp_path / "sharded" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "sharded")
    assert model.config.num_hidden_layers == 4
    card = json.loads((tmp_path / "sharded" / CARD).read_text())
    assert card["method"] == "ties" and card["engine"] == "posttrain" and len(card["inputs"]) == 3
    assert all(len(h) == 64 for h in card["inputs"].values())
    assert result.metrics["merge_seconds"] > 0


def test_the_shard_writer_streams_each_tensor_into_readable_shards_in_order(tmp_path: Path):
    from safetensors.torch import load_file

    from components.model.tensors import ShardWriter

    generator = torch.Generator().manual_seed(0)
    made = {
        "b.weight": torch.randn(3, 5, generator=generator),
        "a.bias": torch.randn(7, generator=generator),
        "c.scale": torch.randn((), generator=generator),
    }
    made = {name: t.to(torch.bfloat16) for name, t in made.items()}
    layout = [(name, list(t.shape)) for name, t in made.items()]
    writer = ShardWriter(tmp_path, layout, torch.bfloat16, max_bytes=32)  # 30 + 14 + 2 bytes: two shards
    for name, tensor in made.items():
        writer.add(name, tensor)
    writer.close()
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())["weight_map"]
    assert index == {"b.weight": "model-00001-of-00002.safetensors", "a.bias": "model-00002-of-00002.safetensors",
                     "c.scale": "model-00002-of-00002.safetensors"}  # fmt: skip
    read = {name: t for file in set(index.values()) for name, t in load_file(tmp_path / file).items()}
    assert read.keys() == made.keys() and all(torch.equal(read[n], made[n]) for n in made)
    early = ShardWriter(tmp_path / "x", layout, torch.bfloat16)
    with pytest.raises(ValueError, match=r"got tensor 'a.bias', expected \['b.weight'\]"):
        early.add("a.bias", made["a.bias"])


def test_other_methods_go_to_mergekit(tmp_path: Path, four_layers):
    r = Recipe(
        merge_method="slerp",
        base_model=str(four_layers["e0"]),
        dtype="float32",
        models=[{"model": str(four_layers["e0"])}, {"model": str(four_layers["e1"])}],
        parameters={"t": 0.5},
    )
    run_recipe(r, tmp_path / "slerp")
    assert json.loads((tmp_path / "slerp" / CARD).read_text())["engine"] == "mergekit"
    assert (tmp_path / "slerp" / "chat_template.jinja").is_file()
    AutoModelForCausalLM.from_pretrained(tmp_path / "slerp")


def test_a_different_architecture_is_named(tmp_path: Path, four_layers, tiny_base: Path):
    r = recipe(four_layers | {"e2": tiny_base}, "ties", [("e0", {}), ("e2", {})], {})
    with pytest.raises(InputError, match=r"config.json num_hidden_layers = 2, but .* has 4"):
        run_recipe(r, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_different_tokenizer_is_named(tmp_path: Path, four_layers):
    other = shutil.copytree(four_layers["e1"], tmp_path / "other_tokenizer")
    vocab = json.loads((other / "tokenizer.json").read_text())
    vocab["added_tokens"][0]["content"] = "<|changed|>"
    (other / "tokenizer.json").write_text(json.dumps(vocab))
    r = recipe(four_layers | {"o": other}, "ties", [("e0", {}), ("o", {})], {})
    with pytest.raises(InputError, match=r"other_tokenizer/tokenizer.json: differs from"):
        run_recipe(r, tmp_path / "out")


def test_a_model_not_fine_tuned_from_the_base_is_refused(tmp_path: Path, four_layers):
    stranger = fine_tune(four_layers["base"], tmp_path / "stranger", seed=9, scale=1.0)
    r = recipe(four_layers | {"s": stranger}, "ties", [("e0", {}), ("s", {})], {})
    with pytest.raises(
        InputError, match=r"stranger: its weights differ from .* does not look fine-tuned from the same base"
    ):
        run_recipe(r, tmp_path / "out")


def test_recipe_errors_name_the_key(tmp_path: Path, four_layers):
    path = tmp_path / "recipe.yaml"
    entries = [{"model": str(four_layers["e0"]), "parameters": {"density": 1.5}}]
    path.write_text(yaml.safe_dump({"merge_method": "ties", "base_model": str(four_layers["base"]), "models": entries}))
    with pytest.raises(InputError, match=r"recipe.yaml: models\[0\].parameters.density must be in \[0, 1\], got 1.5"):
        load_recipe(path)
    path.write_text(
        yaml.safe_dump(
            {"merge_method": "pcb", "base_model": "b", "models": [{"model": "m"}], "parameters": {"density": 0.5}}
        )
    )
    with pytest.raises(InputError, match=r"parameters \['density'\] mean nothing to pcb"):
        load_recipe(path)
    same = recipe(four_layers, "ties", [("e0", {}), ("e0", {})], {})
    with pytest.raises(InputError, match="names the same model twice"):
        run_recipe(same, tmp_path / "out")


def test_command_line_merges_and_exits_2_on_bad_input(tmp_path: Path, four_layers):
    path = tmp_path / "recipe.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "merge_method": "task_arithmetic",
                "base_model": str(four_layers["base"]),
                "models": [{"model": str(four_layers["e0"])}],
                "parameters": {"lambda": 0.5},
            }
        )
    )
    done = subprocess.run(
        [sys.executable, "-m", "components.merge", str(path), str(tmp_path / "out")],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    missing = subprocess.run(
        [sys.executable, "-m", "components.merge", str(tmp_path / "nope.yaml"), str(tmp_path / "x")],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert missing.returncode == 2 and "nope.yaml: no such recipe" in missing.stderr
    recipe_with = yaml.safe_load(path.read_text())
    for parameters, message in (
        ({"lambda": "abc"}, "parameters.lambda must be a number, got 'abc'"),
        ({"density": 0.5}, "parameters ['density'] mean nothing to task_arithmetic"),
    ):
        path.write_text(yaml.safe_dump({**recipe_with, "parameters": parameters}))
        bad = subprocess.run(
            [sys.executable, "-m", "components.merge", str(path), str(tmp_path / "bad")],
            cwd=REPO,
            capture_output=True,
            text=True,
        )
        assert bad.returncode == 2 and message in bad.stderr and "Traceback" not in bad.stderr
        assert not (tmp_path / "bad").exists()


def test_the_merge_command_never_destroys_what_it_did_not_create(tmp_path: Path, four_layers):
    """Each bad output: exit 2, a message naming it, and no file outside the output changed."""
    from components.hashing import tree_sha256

    path = tmp_path / "recipe.yaml"
    entries = [{"model": str(four_layers[e]), "parameters": {"density": 0.5}} for e in ("e0", "e1")]
    path.write_text(yaml.safe_dump({"merge_method": "ties", "base_model": str(four_layers["base"]), "models": entries}))
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    (tmp_path / "a_file").write_text("keep me too")
    folder = four_layers["e0"].parent
    cases = [
        (tmp_path / "mine", "exists and is not empty: choose a new folder, or pass --force"),
        (tmp_path / "a_file", "exists (a file)"),
        (four_layers["e0"], "is the input"),
        (folder, "holds the input"),
        (four_layers["e1"] / "sub", "lies inside the input"),
        (Path("."), "is the folder this command runs in"),
    ]
    before = {p: tree_sha256(p) for p in (folder, tmp_path / "mine")}
    for out, message in cases:
        done = subprocess.run(
            [sys.executable, "-m", "components.merge", str(path), str(out)], cwd=REPO, capture_output=True, text=True
        )
        assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr, (out, done.stderr)
    assert {p: tree_sha256(p) for p in before} == before and (tmp_path / "a_file").read_text() == "keep me too"
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]  # no temporary folder left behind
    forced = subprocess.run(
        [sys.executable, "-m", "components.merge", str(path), str(tmp_path / "mine"), "--force"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert forced.returncode == 0 and not (tmp_path / "mine" / "notes.txt").exists()
    assert (tmp_path / "mine" / "model.safetensors").is_file()


def test_unreadable_inputs_and_unknown_methods_are_named(tmp_path: Path, four_layers):
    truncated = shutil.copytree(four_layers["e0"], tmp_path / "truncated")
    weights = truncated / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(InputError, match=r"truncated/model.safetensors: (not a readable safetensors file|tensor)"):
        run_recipe(recipe(four_layers | {"t": truncated}, "ties", [("e1", {}), ("t", {})], {}), tmp_path / "out")
    no_tokenizer = shutil.copytree(four_layers["e1"], tmp_path / "no_tokenizer")
    (no_tokenizer / "tokenizer.json").unlink()
    (no_tokenizer / "vocab.json").write_text("{}")  # a slow tokenizer's files: no tokenizer.json to compare
    with pytest.raises(InputError, match=r"no_tokenizer/tokenizer.json: missing"):
        run_recipe(recipe(four_layers | {"n": no_tokenizer}, "ties", [("e0", {}), ("n", {})], {}), tmp_path / "out")
    path = tmp_path / "recipe.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "merge_method": "tie",
                "base_model": str(four_layers["base"]),
                "models": [{"model": str(four_layers["e0"])}],
            }
        )
    )
    with pytest.raises(InputError, match=r"recipe.yaml: merge_method: unknown method 'tie'"):
        load_recipe(path)
    assert not (tmp_path / "out").exists()
