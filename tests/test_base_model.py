import json
import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from components.config import load_params, parse_overrides
from components.errors import InputError
from components.model.base import build_base_model, embedded_gguf, load_tokenizer
from components.model.chat import chat
from components.model.config import EmbeddedModel
from components.model.directory import check_model_dir
from components.stage import read_card
from tests.conftest import REPO


def test_tiny_base_is_a_complete_model_directory(tiny_base: Path):
    check_model_dir(tiny_base)
    model = AutoModelForCausalLM.from_pretrained(tiny_base)
    tokenizer = AutoTokenizer.from_pretrained(tiny_base)
    assert model.config.num_hidden_layers == 2 and model.config.hidden_size == 64
    assert model.dtype == torch.float32
    assert model.config.vocab_size == len(tokenizer) == 49152
    assert tokenizer.pad_token is not None and "<|im_start|>" in tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False
    )
    assert model.generation_config.eos_token_id == tokenizer.eos_token_id
    assert read_card(tiny_base)["metrics"]["parameters"] == sum(p.numel() for p in model.parameters())


def test_second_build_with_same_config_is_a_cache_hit(tiny_base: Path):
    weights = tiny_base / "model.safetensors"
    before = weights.stat().st_mtime_ns
    result = build_base_model(load_params(REPO / "params.yaml", "tiny").base_model, tiny_base)
    assert result.cached
    assert weights.stat().st_mtime_ns == before


def test_changed_param_rebuilds(tmp_path: Path, tiny_base: Path):
    out = tmp_path / "base"
    shutil.copytree(tiny_base, out)
    cfg = load_params(REPO / "params.yaml", "tiny", parse_overrides(["base_model.init_seed=7"])).base_model
    result = build_base_model(cfg, out)
    assert not result.cached
    rebuilt = AutoModelForCausalLM.from_pretrained(out).state_dict()
    original = AutoModelForCausalLM.from_pretrained(tiny_base).state_dict()
    assert not torch.equal(rebuilt["model.layers.0.mlp.up_proj.weight"], original["model.layers.0.mlp.up_proj.weight"])


def test_local_directory_source_gives_the_same_weights(tmp_path: Path, tiny_base: Path):
    cfg = load_params(
        REPO / "params.yaml", "tiny", parse_overrides(["base_model.source=local", f"base_model.path={tiny_base}"])
    ).base_model
    build_base_model(cfg, tmp_path / "copy")
    a = AutoModelForCausalLM.from_pretrained(tiny_base).state_dict()
    b = AutoModelForCausalLM.from_pretrained(tmp_path / "copy").state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((tmp_path / "copy" / "stage.json").read_text())["source"] == str(tiny_base)


@pytest.mark.parametrize(
    ("remove", "message"),
    [
        (["tokenizer.json"], "no tokenizer"),
        (["chat_template.jinja"], "no chat template"),
        (["config.json"], "no config.json"),
        (["model.safetensors"], "no weights"),
    ],
)
def test_incomplete_local_model_is_refused_and_nothing_is_written(tmp_path: Path, tiny_base: Path, remove, message):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_base, broken)
    for name in remove:
        (broken / name).unlink()
    cfg = load_params(
        REPO / "params.yaml", "tiny", parse_overrides(["base_model.source=local", f"base_model.path={broken}"])
    ).base_model
    with pytest.raises(InputError, match=rf"{broken}: .*{message}"):
        build_base_model(cfg, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken"]


def test_the_embedded_tokenizer_is_the_one_autotokenizer_loads(tmp_path: Path):
    """load_tokenizer skips AutoTokenizer's parse of the whole GGUF for the embedded model; same tokenizer."""
    gguf = embedded_gguf(EmbeddedModel(source="embedded"))
    ours, auto = load_tokenizer(gguf), AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    assert type(ours) is type(auto)
    ours.save_pretrained(tmp_path / "ours")
    auto.save_pretrained(tmp_path / "auto")
    written = sorted(p.name for p in (tmp_path / "auto").iterdir())
    assert written == sorted(p.name for p in (tmp_path / "ours").iterdir()) and "tokenizer.json" in written
    for name in written:
        assert (tmp_path / "ours" / name).read_bytes() == (tmp_path / "auto" / name).read_bytes(), name


@pytest.mark.smol
def test_smol_base_model_answers_a_chat_prompt(smol_base: Path):
    out = smol_base
    parameters = json.loads((out / "stage.json").read_text())["metrics"]["parameters"]
    assert 134e6 < parameters < 135e6
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config and config["dtype"] == "float32"
    answer = chat(out, "What is the capital of France?", max_new_tokens=16)
    assert "Paris" in answer


def test_a_hub_branch_is_keyed_by_the_commit_it_resolves_to(tmp_path: Path, monkeypatch):
    """`revision: main` moves; the base model's key follows the commit (here from the offline cache's refs)."""
    from huggingface_hub import constants

    from components.model.base import hub_commit, source_fingerprint
    from components.model.config import HubModel

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    refs = tmp_path / "models--org--model" / "refs"
    refs.mkdir(parents=True)
    (refs / "main").write_text("a" * 40 + "\n")
    cfg = HubModel(source="hub", repo_id="org/model")
    assert source_fingerprint(cfg) == {"repo_id": "org/model", "commit": "a" * 40}
    (refs / "main").write_text("b" * 40)  # the branch moved
    assert source_fingerprint(cfg)["commit"] == "b" * 40
    assert hub_commit("org/model", "c" * 40) == "c" * 40  # a commit is its own key
