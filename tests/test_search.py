"""The merge-recipe search: the conditional space and the choice by hand, then the flow on tiny and its resumption."""

import base64
import json
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.trial import FixedTrial

from components.config import load_params
from components.data.config import BUILTIN_DATASETS
from components.errors import ParamsError
from components.merge.config import MergeSpec
from components.search.config import FloatRange, SearchSpace, SelectRule
from components.search.space import choose, directions, suggest
from components.search.study import open_study
from flows.__main__ import main
from tests.conftest import prefect_api_call
from tests.test_cli import flows

EXPERTS = ["domain", "math"]


def test_a_trial_draws_only_the_knobs_of_its_method():
    # FixedTrial raises when asked for a knob it was not given: each plan below asks exactly these.
    space = SearchSpace(realign_lr=FloatRange(low=0.1, high=0.1), prune_ratio=FloatRange(low=0.0, high=0.01))
    ties = suggest(FixedTrial({"method": "ties", "density": 0.3, "lambda": 0.8, "prune_ratio": 0.002}), space, EXPERTS)
    assert ties.recipe == {
        "merge_method": "ties",
        "base_model": "base",
        "models": [
            {"model": "domain", "parameters": {"density": 0.3}},
            {"model": "math", "parameters": {"density": 0.3}},
        ],
        "parameters": {"lambda": 0.8},
    }
    assert (ties.realign_lr, ties.prune_ratio) == (0.1, 0.002)  # a range with low == high is not asked, it is fixed
    no_safety = SearchSpace(realign_lr=None)
    swap = suggest(FixedTrial({"method": "layer_swap", "num_layers": 3}), no_safety, EXPERTS)
    assert swap.recipe == {
        "merge_method": "layer_swap",
        "base_model": None,
        "models": [{"model": "domain", "parameters": {}}, {"model": "math", "parameters": {}}],
        "parameters": {"num_layers": 3},
    }  # transition keeps its declared default (0)
    assert (swap.realign_lr, swap.prune_ratio) == (None, None)
    pcb = suggest(FixedTrial({"method": "pcb", "lambda": 1.2, "pcb_ratio": 0.2}), no_safety, EXPERTS)
    assert pcb.recipe["parameters"] == {"lambda": 1.2, "pcb_ratio": 0.2}
    unpruned = suggest(FixedTrial({"method": "task_arithmetic", "lambda": 1.0, "prune_ratio": 0.0}), space, EXPERTS)
    assert unpruned.prune_ratio is None  # ratio 0 prunes nothing: no prune step
    for plan in (ties, swap, pcb, unpruned):
        MergeSpec.model_validate(plan.recipe)  # every plan is a valid recipe of params.yaml


def test_choose_takes_the_best_front_trial_within_the_bounds():
    front = {
        "a": {"domain_mc_acc_norm": 0.6, "harmful_score": 0.4},
        "b": {"domain_mc_acc_norm": 0.7, "harmful_score": 0.6},
        "c": {"domain_mc_acc_norm": 0.5, "harmful_score": 0.1},
        "d": {"domain_mc_acc_norm": 0.6, "harmful_score": 0.3},
    }
    assert choose(front, SelectRule()) == "b"
    assert choose(front, SelectRule(bounds={"harmful_score": {"max": 0.5}})) == "a"  # a and d tie: the first listed
    assert (
        choose(front, SelectRule(bounds={"harmful_score": {"max": 0.5}, "domain_mc_acc_norm": {"min": 0.65}})) is None
    )
    assert choose(front, SelectRule(metric="harmful_score")) == "c"  # lower is better for harm
    assert directions(["domain_mc_acc_norm", "harmful_score", "domain_perplexity"]) == [
        "maximize",
        "minimize",
        "minimize",
    ]


def test_bad_search_settings_name_the_key(params_file: Path, capsys):
    with pytest.raises(ParamsError, match=r"--set search.space.ranges.density: low \(0.9\) is above high \(0.1\)"):
        load_params(params_file, "tiny", {"search": {"space": {"ranges": {"density": {"low": 0.9, "high": 0.1}}}}})
    with pytest.raises(
        ParamsError, match=r"search.space.ranges: num_layers takes whole numbers from 1, got \[1.5, 3\]"
    ):
        load_params(params_file, "tiny", {"search": {"space": {"ranges": {"num_layers": {"low": 1.5, "high": 3}}}}})
    with pytest.raises(ParamsError, match=r"search.space.ranges: \['weight'\] are not searchable knobs"):
        load_params(params_file, "tiny", {"search": {"space": {"ranges": {"weight": {"low": 0.1, "high": 1.0}}}}})
    with pytest.raises(ParamsError, match=r"\['dare_ties'\] cannot be searched"):
        load_params(params_file, "tiny", {"search": {"space": {"methods": ["ties", "dare_ties"]}}})
    with pytest.raises(ParamsError, match=r"objectives: \['accuracy'\] are not metrics"):
        load_params(params_file, "tiny", {"search": {"objectives": ["accuracy"]}})
    assert (
        main(["search", "--params", str(params_file), "--profile", "tiny", "--set", "search.models=[domain, nope]"])
        == 2
    )
    assert "search: ['nope'] are not train jobs of profile 'tiny'" in capsys.readouterr().err
    assert not (params_file.parent / "outputs").exists()


def dominated(a: dict, b: dict, objectives: list[str]) -> bool:
    """b dominates a: no worse on every objective, better on one (every tiny objective is lower-is-better)."""
    return all(b[m] <= a[m] for m in objectives) and any(b[m] < a[m] for m in objectives)


def test_search_flow_on_tiny_yields_a_front_and_registers_the_choice(
    tiny_pipeline: Path, prefect_api, mlflow_server, monkeypatch
):
    from flows.recipe_search import recipe_search

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    state = recipe_search(params_file=str(tiny_pipeline), profile="tiny", register_chosen=True, return_state=True)
    assert state.is_completed(), state.message
    assert state.result()["search"]["trials_complete"] == 3

    params = load_params(tiny_pipeline, "tiny")
    folder = params.ws.search
    trials = json.loads(folder.trials.read_text())
    assert [t["state"] for t in trials] == ["COMPLETE"] * 3
    objectives = params.search.objectives  # domain_perplexity, harmful_score, over_refusal: all lower-is-better
    front = {t["name"] for t in trials if not any(dominated(t["metrics"], o["metrics"], objectives) for o in trials)}
    assert {t["name"] for t in trials if t["on_front"]} == front
    for trial in trials:  # every trial's final model was evaluated; only the front's stay on disk
        assert Path(trial["model"]).is_dir() == trial["on_front"]
        assert (Path(trial["dir"]) / "eval" / "metrics.json").is_file()
    chosen = json.loads(folder.chosen.read_text())
    assert chosen["trial"] == min(
        front, key=lambda name: next(t for t in trials if t["name"] == name)["metrics"]["domain_perplexity"]
    )

    client = MlflowClient(tracking_uri=mlflow_server)
    experiment = client.get_experiment_by_name(params.tracking.experiment)
    search_run = client.search_runs([experiment.experiment_id], "tags.stage = 'search'", order_by=["start_time DESC"])[
        0
    ]
    children = client.search_runs([experiment.experiment_id], f"tags.mlflow.parentRunId = '{search_run.info.run_id}'")
    assert {c.info.run_name: c.data.metrics["domain_perplexity"] for c in children} == {
        t["name"]: t["metrics"]["domain_perplexity"] for t in trials
    }

    # The chosen trial is registered with its recipe as lineage; the Prefect UI shows the front.
    registration = json.loads(folder.shipping.registration.read_text())
    assert registration["candidate"] == chosen["trial"]
    version = client.get_model_version(registration["model_name"], registration["version"])
    assert json.loads(version.tags["merge_recipe"])["merge_method"] == chosen["plan"]["recipe"]["merge_method"]
    assert json.loads(version.tags["merge_recipe"])["name"] == f"merge-{chosen['trial']}"
    steps = [step["name"] for step in json.loads(version.tags["lineage"])]
    assert steps == [
        "base",
        "cpt",
        "domain",
        "math",
        "safety",
        f"merge-{chosen['trial']}",
        f"realigned-{chosen['trial']}",
        f"pruned-{chosen['trial']}",
    ]  # the tiny space realigns and prunes every trial
    flow_run = {"flow_runs": {"id": {"any_": [str(state.state_details.flow_run_id)]}}, "limit": 50, "offset": 0}
    artifacts = {a["key"]: a for a in prefect_api_call(prefect_api, "post", "artifacts/filter", flow_run) if a["key"]}
    page = artifacts["recipe-search-report"]["data"]
    assert base64.b64encode(folder.front_plot.read_bytes()).decode() in page
    assert f"Chosen: **{chosen['trial']}**" in page and registration["model_uri"] in page
    assert len(json.loads(artifacts["pareto-front"]["data"])) == len(front)


def test_a_killed_search_continues_its_study(tiny_pipeline: Path, mlflow_server: str):
    params = load_params(tiny_pipeline, "tiny")
    storage = f"sqlite:///{params.ws.search.study_db.resolve()}"
    study = optuna.load_study(study_name="recipe-search-tiny", storage=storage)
    finished = {t.number: t.user_attrs["seconds"] for t in study.trials}
    # What a kill mid-trial leaves behind: a RUNNING trial whose knobs were drawn.
    study.enqueue_trial({"method": "task_arithmetic", "lambda": 0.7, "realign_lr": 0.1, "prune_ratio": 0.005})
    cut = study.ask()
    suggest(cut, params.search.space, params.search.models)
    out = flows(
        "search",
        "--params",
        str(tiny_pipeline),
        "--profile",
        "tiny",
        "--set",
        "search.trials=4",
        tracking_uri=mlflow_server,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    study = optuna.load_study(study_name="recipe-search-tiny", storage=storage)
    states = {t.number: t.state for t in study.trials}
    assert states[cut.number] == optuna.trial.TrialState.FAIL
    retried = [t for t in study.trials if t.user_attrs.get("retry_of") == cut.number]
    assert len(retried) == 1 and retried[0].state == optuna.trial.TrialState.COMPLETE
    assert retried[0].params == cut.params  # the same knobs, run again
    assert sum(s == optuna.trial.TrialState.COMPLETE for s in states.values()) == 4
    assert {n: study.trials[n].user_attrs["seconds"] for n in finished} == finished  # nothing finished was redone
    other_objectives = params.search.model_copy(update={"objectives": ["domain_perplexity"]})
    with pytest.raises(
        ParamsError, match=r"search.objectives: study 'recipe-search-tiny' .* made for other objectives"
    ):
        open_study(other_objectives, storage, "recipe-search-tiny", seed=0)


def test_the_search_chooses_without_reading_a_test_split(tiny_pipeline: Path, monkeypatch):
    """Every trial and reference is scored on validation: with every curated test split moved away the search runs
    and chooses; only then does its one test evaluation (of the chosen trial and the references) read them."""
    import components.search.stage as search_module

    params = load_params(tiny_pipeline, "tiny", {"search": {"trials": 2, "study_name": "never-reads-test"}})
    tests = sorted(params.ws.curated.glob("*/test.jsonl"))
    assert len(tests) == len(BUILTIN_DATASETS)
    hidden = {path: path.with_name("hidden-test.jsonl") for path in tests}
    final = search_module.evaluate_chosen_on_test

    def tested_after_the_choice(chosen, references, params):
        assert json.loads(params.ws.search.chosen.read_text())["trial"]  # chosen with no test split at hand
        for path, away in hidden.items():
            away.rename(path)
        return final(chosen, references, params)

    monkeypatch.setattr(search_module, "evaluate_chosen_on_test", tested_after_the_choice)
    for path, away in hidden.items():
        path.rename(away)
    try:
        result = search_module.search_stage(params)
    finally:
        for path, away in hidden.items():
            if away.exists():
                away.rename(path)
    trials = json.loads(params.ws.search.trials.read_text())
    for trial in trials:  # each trial's evaluation hashed the val splits, no test split
        card = json.loads((Path(trial["dir"]) / "eval" / "stage.json").read_text())
        split_files = [Path(p).name for p in card["inputs"].values() if str(p).endswith(".jsonl")]
        assert split_files == ["val.jsonl"] * len(BUILTIN_DATASETS)
    chosen = json.loads(params.ws.search.chosen.read_text())["trial"]
    tested = json.loads((params.ws.search.eval / chosen / "metrics.json").read_text())
    assert result.metrics["chosen_test.harmful_score"] == tested["harmful_score"]
    assert json.loads((params.ws.search.eval / chosen / "stage.json").read_text())["inputs"]["harmful"].endswith(
        "harmful/test.jsonl"
    )
    assert "on the test splits (read once, after the choice)" in params.ws.search.report.read_text()
