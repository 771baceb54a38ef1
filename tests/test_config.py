from pathlib import Path

import pytest

from components.config import deep_merge, load_params, parse_overrides
from components.errors import ParamsError


def test_every_profile_loads(params_file: Path):
    kinds = {p: load_params(params_file, p).base_model.source for p in ("tiny", "smol", "gpu")}
    assert kinds == {"tiny": "random", "smol": "embedded", "gpu": "hub"}


def test_default_profile_is_the_files_profile_key(params_file: Path):
    assert load_params(params_file).profile == "smol"


def test_workspace_is_relative_to_the_params_file(params_file: Path):
    params = load_params(params_file, "tiny")
    assert params.workspace == params_file.parent / "outputs"
    assert params.ws.run_dir == params_file.parent / "outputs" / "tiny"


def test_unknown_profile_names_the_file_and_the_known_ones(params_file: Path):
    with pytest.raises(ParamsError, match=r"params.yaml: unknown profile 'huge'; known profiles: tiny, smol, gpu"):
        load_params(params_file, "huge")


def test_typo_in_profile_is_reported_where_it_was_written(params_file: Path):
    params_file.write_text(params_file.read_text().replace("num_hidden_layers: 2", "num_hiden_layers: 2"))
    with pytest.raises(ParamsError, match=r"profiles\.tiny\.base_model\.num_hiden_layers: unknown key"):
        load_params(params_file, "tiny")


def test_typo_in_common_is_reported_under_common(params_file: Path):
    params_file.write_text(params_file.read_text().replace("  seed: 0", "  sead: 0"))
    with pytest.raises(ParamsError, match=r"common\.sead: unknown key"):
        load_params(params_file, "smol")


def test_wrong_type_names_the_key(params_file: Path):
    with pytest.raises(ParamsError, match=r"--set base_model\.hidden_size: Input should be a valid integer"):
        load_params(params_file, "tiny", parse_overrides(["base_model.hidden_size=wide"]))


def test_missing_model_path_names_key_and_path(params_file: Path, tmp_path: Path):
    overrides = parse_overrides(["base_model.source=local", "base_model.path=no/such/model"])
    with pytest.raises(ParamsError, match=rf"base_model\.path: {tmp_path}/no/such/model does not exist"):
        load_params(params_file, "tiny", overrides)


def test_heads_must_divide_hidden_size(params_file: Path):
    with pytest.raises(ParamsError, match=r"hidden_size \(64\) must be a multiple of num_attention_heads \(5\)"):
        load_params(params_file, "tiny", parse_overrides(["base_model.num_attention_heads=5"]))


def test_switching_source_replaces_the_block_instead_of_merging_it():
    merged = deep_merge({"m": {"source": "random", "hidden_size": 8}, "x": 1}, {"m": {"source": "embedded"}})
    assert merged == {"m": {"source": "embedded"}, "x": 1}
    merged = deep_merge({"m": {"source": "random", "hidden_size": 8}}, {"m": {"hidden_size": 16}})
    assert merged == {"m": {"source": "random", "hidden_size": 16}}


def test_overrides_parse_yaml_scalars_into_nested_keys():
    assert parse_overrides(["a.b=3", "a.c=bfloat16", "d=true"]) == {"a": {"b": 3, "c": "bfloat16"}, "d": True}
    with pytest.raises(ParamsError, match="expected KEY=VALUE"):
        parse_overrides(["seed"])


def test_params_digest_changes_with_any_value(params_file: Path):
    a = load_params(params_file, "tiny")
    b = load_params(params_file, "tiny", parse_overrides(["seed=1"]))
    assert a.digest() == load_params(params_file, "tiny").digest()
    assert a.digest() != b.digest()


def test_invalid_yaml_and_missing_file(tmp_path: Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("profiles: [unclosed\n")
    with pytest.raises(ParamsError, match=r"bad.yaml: not valid YAML"):
        load_params(bad)
    with pytest.raises(ParamsError, match=r"nothere.yaml: no such parameters file"):
        load_params(tmp_path / "nothere.yaml")
