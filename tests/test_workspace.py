"""One workspace, one model reference, one stage key: the run's paths, the model naming grammar, and the code a
stage's cache key covers, checked against the generated dvc.yaml and against hand-written expectations."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from components.config import check_model, load_params, model_parents, parse_overrides, pipeline_models
from components.hashing import content_sha256
from components.model.ref import ModelKind, ModelRef
from components.stage import StageCache, _module_file, code_modules
from components.workspace import Workspace
from flows.__main__ import main
from flows.dvc_yaml import dvc_yaml
from flows.stages import stages_for
from tests.conftest import REPO

USER_TABLE = {"name": "support", "path": "support.jsonl", "kind": "prompt_completion"}


def test_dvc_yaml_is_the_generated_one():
    assert (REPO / "dvc.yaml").read_text() == dvc_yaml(load_params(REPO / "params.yaml"), REPO / "params.yaml"), (
        "dvc.yaml is out of date: run `python -m flows dvc-yaml`"
    )


def test_dvc_yaml_agrees_with_the_workspace_and_the_code_the_stage_keys_cover():
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    params = load_params(REPO / "params.yaml")
    assert list(stages) == [stage.name for stage in stages_for(params)]
    assert {"base-model", "pairs", "train-cpt", "merge-ties", "realign", "prune", "evaluate", "register"} <= set(stages)
    for stage in stages_for(params):
        entry = stages[stage.name]
        assert entry["cmd"] == f"python -m flows stage {stage.name} --profile ${{profile}}"
        code = {_module_file(m).relative_to(REPO).as_posix() for m in code_modules(stage.key_module)}
        deps = {d for d in entry["deps"] if d.startswith("components/") and d.endswith(".py")}
        assert deps == code, f"{stage.name}: dvc.yaml deps differ from the code its key covers: {sorted(deps ^ code)}"
        # the key module is the one that builds the stage's key (gate and register judge the registry: no key)
        source = _module_file(stage.key_module).read_text()
        assert ("StageCache(" in source) != (stage.name in ("gate", "register")), stage.name
    # paths come from the workspace, by hand here: what each stage reads and writes, as dvc.yaml names it
    ws = Workspace(Path("outputs"), "${profile}")
    outs = {
        name: [next(iter(o)) if isinstance(o, dict) else o for o in entry["outs"]] for name, entry in stages.items()
    }
    assert outs["curate"] == [ws.curated.as_posix()] and outs["validate"] == [ws.validation.as_posix()]
    assert outs["train-domain"] == [ws.job_model("domain").as_posix(), ws.job_work("domain").as_posix()]
    assert outs["register"] == [ws.shipping.registry.as_posix()]
    assert ws.raw.as_posix() in stages["curate"]["deps"] and ws.curated.as_posix() in stages["validate"]["deps"]
    assert {ws.job_model("cpt").as_posix(), ws.split("domain_qa", "train").parent.as_posix()} <= set(
        stages["train-domain"]["deps"]
    )
    assert {ws.merged("ties").as_posix(), ws.job_model("safety").as_posix()} <= set(stages["realign"]["deps"])
    # the learned judge's gold set and chosen settings are the evaluation's data too
    judge_data = {"components/safety/gold/gold.jsonl", "components/safety/gold/content_judge.json"}
    assert params.evaluate.judge == "content" and judge_data <= set(stages["evaluate"]["deps"])
    # train jobs keep their outputs (their keys decide), the registry's records are never restored from a cache
    assert stages["train-cpt"]["outs"][1] == {ws.job_work("cpt").as_posix(): {"persist": True}}
    assert stages["gate"]["outs"] == [{ws.shipping.gate.as_posix(): {"cache": False}}]
    # params: common's section and the profile's, where every profile has the key, else the whole profile
    assert stages["curate"]["params"] == ["profile", "common.seed", "common.data.curate"]
    assert stages["base-model"]["params"] == ["profile", "profiles.${profile}.base_model"]
    assert stages["train-cpt"]["params"] == ["profile", "common.train.jobs.cpt", "profiles.${profile}"]


def test_the_user_tables_are_dependencies_of_sources_and_of_the_jobs_that_train_on_them(params_file: Path):
    (params_file.parent / "support.jsonl").write_text('{"prompt": "q", "completion": "a"}\n')
    raw = yaml.safe_load(params_file.read_text())
    raw["common"]["data"]["user"] = [USER_TABLE]
    raw["common"]["train"]["jobs"]["support"] = {"method": "sft", "datasets": ["support"]}
    params_file.write_text(yaml.safe_dump(raw))
    assert main(["dvc-yaml", "--params", str(params_file)]) == 0
    stages = yaml.safe_load((params_file.parent / "dvc.yaml").read_text())["stages"]
    assert "support.jsonl" in stages["sources"]["deps"]
    assert "outputs/${profile}/data/curated/support" in stages["train-support"]["deps"]
    assert "outputs/${profile}/models/support" in stages["evaluate"]["deps"]


def test_a_user_table_that_does_not_exist_is_named(params_file: Path, capsys):
    raw = yaml.safe_load(params_file.read_text())
    raw["common"]["data"]["user"] = [USER_TABLE]
    params_file.write_text(yaml.safe_dump(raw))
    assert main(["dvc-yaml", "--params", str(params_file)]) == 2
    assert "support.jsonl does not exist" in capsys.readouterr().err
    assert not (params_file.parent / "dvc.yaml").exists()


def test_code_discovery_follows_imports_and_skips_inert_modules():
    found = code_modules("components.merge.stage")
    # the engine, every merge method (the registry imports them), lazy loading: found, never listed by hand
    assert {
        "components.merge.engine",
        "components.merge.methods.ties",
        "components.merge.methods.pcb",
        "components.model.tensors",
    } <= set(found)
    assert "components.config" not in found and "components.stage" not in found  # params reach the key as values
    assert "components.data.stdlib_docs" in code_modules("components.data.sources")  # run as a script, imported too
    assert "components.safety.somf" in code_modules("components.safety.realign")
    # realignment and pruning check compatibility through components.model: no merge method's code is in their key
    for stage in ("components.safety.realign", "components.safety.prune"):
        assert "components.model.compat" in code_modules(stage)
        assert not [m for m in code_modules(stage) if m.startswith("components.merge")], stage
    assert not {"components.merge.config", "components.schema"} & set(found)  # schemas are inert too


def test_the_key_changes_with_code_params_and_input_content_but_not_with_cards(tmp_path: Path, monkeypatch):
    model = tmp_path / "model"
    model.mkdir()
    (model / "model.safetensors").write_bytes(b"weights")
    key = StageCache("x", tmp_path / "out", "components.merge.stage", {"a": 1}, {"model": model}).key
    again = StageCache("x", tmp_path / "out", "components.merge.stage", {"a": 1}, {"model": model}).key
    assert key == again
    assert StageCache("x", tmp_path / "out", "components.merge.stage", {"a": 2}, {"model": model}).key != key
    (model / "stage.json").write_text(json.dumps({"build_seconds": 1.5}))  # a card: how, not what
    (model / "merge_card.json").write_text(json.dumps({"seconds": 3.2}))
    assert StageCache("x", tmp_path / "out", "components.merge.stage", {"a": 1}, {"model": model}).key == key
    (model / "model.safetensors").write_bytes(b"other weights")
    assert StageCache("x", tmp_path / "out", "components.merge.stage", {"a": 1}, {"model": model}).key != key
    assert content_sha256(model) != content_sha256(model / "model.safetensors")
    # a change to a module the stage imports (not its own file) changes the key
    import components.stage as stage_module

    before = StageCache("x", tmp_path / "out", "components.merge.stage").key
    real = stage_module.file_sha256
    ties = _module_file("components.merge.methods.ties")
    monkeypatch.setattr(stage_module, "file_sha256", lambda p: "edited" if Path(p) == ties else real(p))
    assert StageCache("x", tmp_path / "out", "components.merge.stage").key != before


def test_a_card_written_with_the_key_makes_the_stage_cached(tmp_path: Path):
    cache = StageCache("x", tmp_path / "out", "components.model.base", {"a": 1})
    assert cache.result({"model": tmp_path / "out"}) is None
    (tmp_path / "out").mkdir()
    cache.write_card(tmp_path / "out", {"seconds": 2.0}, note="kept")
    cached = cache.result({"model": tmp_path / "out"})
    assert cached.cached and cached.metrics == {"seconds": 2.0} and cache.card()["note"] == "kept"
    assert StageCache("x", tmp_path / "out", "components.model.base", {"a": 2}).result({}) is None


@pytest.mark.parametrize(
    ("name", "kind", "folder", "label"),
    [
        ("base", ModelKind.BASE, "base_model", "base model"),
        ("math", ModelKind.JOB, "models/math", "train job math"),
        ("merge-ties", ModelKind.MERGE, "merged/ties", "merge ties"),
        ("realigned-merge-ties", ModelKind.REALIGNED, "safety/realigned", "merge ties, realigned (SOMF)"),
        (
            "pruned-realigned-merge-ties",
            ModelKind.PRUNED,
            "safety/pruned",
            "merge ties, realigned (SOMF), pruned (Antidote)",
        ),
        ("pruned-math", ModelKind.PRUNED, "safety/pruned", "train job math, pruned (Antidote)"),
    ],
)
def test_model_names_parse_once_and_print_back(name, kind, folder, label):
    ref = ModelRef.parse(name)
    assert ref.kind is kind and str(ref) == name and ref.label == label
    assert ref.folder(Workspace(Path("/w"), "tiny")) == Path("/w/tiny") / folder


def test_trials_registry_uris_and_recipes():
    trial = ModelRef.parse("trial-3")
    assert trial.kind is ModelKind.TRIAL and str(trial.realigned()) == "realigned-trial-3"
    assert ModelRef.parse("merge-trial-3") == ModelRef.merge("trial-3")
    assert ModelRef.parse("models:/post-train@champion").registered == ("post-train", "champion", None)
    assert ModelRef.parse("models:/post-train/3").registered == ("post-train", None, "3")
    assert ModelRef.parse("realigned-merge-ties").recipe == "ties" and ModelRef.parse("math").recipe is None
    with pytest.raises(Exception, match="no folder of its own"):
        trial.folder(Workspace(Path("/w"), "tiny"))


def test_parents_and_known_models_come_from_params():
    params = load_params(REPO / "params.yaml", "tiny", parse_overrides(["safety.prune.model=math"]))
    names = [str(ref) for ref in pipeline_models(params)]
    assert (
        names[:2] == ["base", "cpt"] and "merge-ties" in names and names[-2:] == ["realigned-merge-ties", "pruned-math"]
    )
    assert [str(p) for p in model_parents(ModelRef.parse("realigned-merge-ties"), params)] == ["safety", "merge-ties"]
    assert [str(p) for p in model_parents(ModelRef.parse("domain"), params)] == ["cpt"]
    with pytest.raises(ValueError, match="'merge-nope' is not a model of this pipeline"):
        check_model(ModelRef.parse("merge-nope"), params)


def test_a_file_is_hashed_once_per_process_until_it_changes(tmp_path: Path, monkeypatch):
    import hashlib
    import os

    from components.hashing import file_sha256

    path = tmp_path / "weights.bin"
    path.write_bytes(b"a" * 100)
    reads = []
    real_open = open

    def counting_open(file, *args, **kwargs):
        reads.append(file)
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr("builtins.open", counting_open)
    first = file_sha256(path)
    assert first == file_sha256(path) == hashlib.sha256(b"a" * 100).hexdigest()
    assert reads.count(path) == 1, "the second ask is answered from memory"
    replacement = tmp_path / "new.bin"
    replacement.write_bytes(b"b" * 100)  # same size, written beside and renamed in, as every stage writes
    os.replace(replacement, path)
    assert file_sha256(path) == hashlib.sha256(b"b" * 100).hexdigest()
    stat = path.stat()
    with real_open(path, "r+b") as handle:  # rewritten in place: a new modification time
        handle.write(b"c" * 100)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert file_sha256(path) == hashlib.sha256(b"c" * 100).hexdigest()
