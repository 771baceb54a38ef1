"""The Prefect flow on tiny: end to end under prefect_test_harness, UI artifacts, bad form values, kill and resume."""

import base64
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from components.errors import PipelineError
from flows.form import FormChoices, form_choices
from flows.post_train import PostTrainRequest, resolve
from tests.conftest import REPO, prefect_api_call


def test_form_fields_become_params():
    params = resolve(
        PostTrainRequest(
            profile="tiny",
            merge_method="ties",
            density=0.3,
            merge_lambda=0.7,
            prune_ratio=0.1,
            realign_lr=0.05,
            promote=False,
            gates={"harmful_score": {"max": 0.5}},
        )
    )
    ties = params.merge.recipes["ties"]  # the recipe of the shipped candidate, realigned-merge-ties
    assert ties.parameters["lambda"] == 0.7 and [m["parameters"]["density"] for m in ties.models] == [0.3, 0.3]
    pcb = resolve(PostTrainRequest(profile="tiny", merge_recipe="pcb", merge_method="task_arithmetic"))
    assert pcb.merge.recipes["pcb"].merge_method == "task_arithmetic"
    assert params.safety.prune.ratio == 0.1 and params.safety.realign.lr == 0.05 and params.registry.promote is False
    assert set(params.registry.gates) == {"harmful_score"}  # the form's gates replace the file's
    only_math = resolve(
        PostTrainRequest(
            profile="tiny",
            experts=["math"],
            overrides=["safety.realign.model=null", "safety.prune.model=null", "registry.candidate=math"],
        )
    )
    assert list(only_math.train.jobs) == ["math"] and only_math.merge.recipes == {}
    chosen = resolve(
        PostTrainRequest(
            profile="tiny",
            experts=["math"],
            overrides=[
                "safety.realign.model=null",
                "safety.prune.model=null",
                "registry.candidate=math",
                "evaluate.candidates=[base,domain,math,merge-ties,realigned-merge-ties]",
            ],
        )
    )
    assert chosen.evaluate.candidates == ["base", "math"]  # of the candidates chosen, those still made
    with_init = resolve(PostTrainRequest(profile="tiny", experts=["domain", "math", "safety"]))
    assert list(with_init.train.jobs) == ["cpt", "domain", "math", "safety"]  # domain starts from cpt


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"overrides": ["merge.recipes.ties.merge_method=tie"]}, "unknown merge method 'tie'"),
        ({"merge_method": "pcb", "density": 0.5}, "parameters ['density'] mean nothing to pcb"),
        ({"gates": {"accuracy": {"min": 0.5}}}, "gate on 'accuracy': not a metric"),
        ({"experts": ["math"]}, "safety.prune.model: 'merge-ties' is not a model of this pipeline"),
        ({"params_file": "../../etc/params.yaml"}, "params_file: '../../etc/params.yaml' leads outside the repository"),
    ],
)
def test_bad_form_values_are_refused_with_the_field(fields, message):
    with pytest.raises(PipelineError, match=message.replace("[", r"\[").replace("]", r"\]")):
        resolve(PostTrainRequest(profile="tiny", **fields))


def test_both_forms_keep_a_relative_params_file_inside_the_repository():
    from flows.recipe_search import RecipeSearchRequest, resolve_search

    with pytest.raises(PipelineError, match="params_file: '../params.yaml' leads outside the repository"):
        resolve_search(RecipeSearchRequest(profile="tiny", params_file="../params.yaml"))
    assert resolve_search(RecipeSearchRequest(profile="tiny", trials=2)).search.trials == 2


def test_out_of_range_form_values_and_names_not_offered_fail_validation():
    for fields in (
        {"density": 1.5},
        {"prune_ratio": 1.0},
        {"gates": {"harmful_score": {"max": -0.1}}},
        {"merge_method": "tie"},
        {"experts": ["chemistry"]},
        {"profile": "huge"},
        {"merge_recipe": "dare"},
    ):
        with pytest.raises(ValueError, match=next(iter(fields))):
            PostTrainRequest(**fields)


def test_the_form_offers_the_names_of_params_yaml_one_input_per_field(tmp_path: Path):
    choices = form_choices(REPO / "params.yaml")
    assert (
        choices.default_profile == "smol"
        and choices.profiles == ("tiny", "smol", "gpu")
        and set(choices.jobs) == {"cpt", "domain", "math", "safety"}
    )
    assert {"ties", "pcb", "task_arithmetic"} <= set(choices.recipes)
    # a job or recipe only one profile declares is offered too
    (tmp_path / "p.yaml").write_text(
        "profile: a\ncommon: {train: {jobs: {x: {}}}}\nprofiles: {a: {merge: {recipes: {r: {}}}}, b: {train: {jobs: {y: {}}}}}\n"
    )
    assert form_choices(tmp_path / "p.yaml") == FormChoices("a", ("a", "b"), ("x", "y"), ("r",))

    from prefect.utilities.callables import parameter_schema

    from flows.post_train import post_train

    schema = parameter_schema(post_train.fn).model_dump()
    assert list(schema["properties"]) == list(PostTrainRequest.model_fields)  # flat: no `request` object
    assert schema["properties"]["profile"]["enum"] == ["tiny", "smol", "gpu"]  # a select, params.yaml's profile set
    assert schema["properties"]["profile"]["default"] == "smol"
    assert schema["properties"]["experts"]["items"]["enum"] == list(choices.jobs)
    assert {"ties", "dare_ties", "slerp"} <= set(schema["properties"]["merge_method"]["anyOf"][0]["enum"])
    assert schema["properties"]["density"]["anyOf"][0] == {"maximum": 1, "minimum": 0, "type": "number"}


UNINTERRUPTED: dict = {}  # the end-to-end run's evaluation, for the kill-and-resume test to compare with


APART = ["stage_processes=true"]  # the kill-and-resume test runs the model stages apart, as smol does


def run_flow_in_subprocess(params_file: Path, api_url: str, tracking_uri: str) -> subprocess.Popen:
    code = (
        "import sys; from flows.post_train import post_train; "
        f"post_train(params_file=sys.argv[1], profile='tiny', overrides={APART!r})"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO), "PREFECT_API_URL": api_url, "MLFLOW_TRACKING_URI": tracking_uri}
    return subprocess.Popen(
        [sys.executable, "-c", code, str(params_file)],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def test_flow_end_to_end_on_tiny(prefect_api, mlflow_server, params_file: Path, monkeypatch):
    from flows.post_train import post_train

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    params_file.write_text(params_file.read_text().replace("model_name: post-train-tiny", "model_name: flow-tiny"))
    state = post_train(params_file=str(params_file), profile="tiny", return_state=True)
    assert state.is_completed(), state.message
    metrics = state.result()
    assert metrics["register"]["promoted"] == 1.0 and metrics["train-math"]["steps"] == 2
    UNINTERRUPTED["summary"] = json.loads((params_file.parent / "outputs/tiny/eval/summary.json").read_text())

    client = MlflowClient(tracking_uri=mlflow_server)
    version = client.get_model_version_by_alias("flow-tiny", "champion")
    parent = client.get_run(version.tags["pipeline_run"])
    assert parent.data.tags["prefect.flow_run_id"]
    flow_run_id = parent.data.tags["prefect.flow_run_id"]
    assert prefect_api_call(prefect_api, "get", f"flow_runs/{flow_run_id}")["state"]["type"] == "COMPLETED"
    only_this_run = {"flow_runs": {"id": {"any_": [flow_run_id]}}, "limit": 200, "offset": 0}
    artifacts = {
        a["key"]: a for a in prefect_api_call(prefect_api, "post", "artifacts/filter", only_this_run) if a["key"]
    }
    task_runs = prefect_api_call(prefect_api, "post", "task_runs/filter", only_this_run)
    assert {"post-train-report", "evaluation", "mlflow-run"} <= set(artifacts)
    assert f"models:/flow-tiny/{version.version}" in artifacts["post-train-report"]["data"]
    assert "# Gate report: realigned-merge-ties" in artifacts["post-train-report"]["data"]
    report = (params_file.parent / "outputs/tiny/report/safety_vs_utility.png").read_bytes()
    assert base64.b64encode(report).decode() in artifacts["post-train-report"]["data"]  # the figure, inline
    assert "Champion: **realigned-merge-ties**" in artifacts["post-train-report"]["data"]
    assert parent.info.run_id in artifacts["mlflow-run"]["data"]
    table = json.loads(artifacts["evaluation"]["data"])
    assert {row["candidate"] for row in table} >= {"base", "merge-ties", "realigned-merge-ties"}
    assert {t["name"] for t in task_runs} >= {"train-math", "merge-ties", "register", "report"}
    by_id = {t["id"]: t["name"] for t in task_runs}
    waits = {t["name"]: [by_id[i["id"]] for i in t["task_inputs"].get("wait_for", [])] for t in task_runs}
    assert waits["base-model"] == [] and waits["sources"] == ["base-model"] and waits["register"] == ["gate"]
    logs = prefect_api_call(
        prefect_api, "post", "logs/filter", {"logs": {"flow_run_id": {"any_": [flow_run_id]}}, "limit": 200}
    )
    assert not [entry["message"] for entry in logs if "LOAD_FAST" in entry["message"] or not entry["message"].strip()]


def test_killed_run_resumes_without_recomputing_finished_stages(
    prefect_api, mlflow_server, params_file: Path, monkeypatch
):
    from components.train.job import checkpoint_is_complete
    from flows.post_train import post_train

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    params_file.write_text(params_file.read_text().replace("model_name: post-train-tiny", "model_name: killed-tiny"))
    run_dir = params_file.parent / "outputs" / "tiny"
    process = run_flow_in_subprocess(params_file, prefect_api, mlflow_server)
    checkpoint = run_dir / "train" / "math" / "checkpoints" / "checkpoint-1"
    deadline = time.monotonic() + 400
    while not checkpoint_is_complete(checkpoint) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert checkpoint_is_complete(checkpoint), "the flow never completed the math expert's first checkpoint"
    process.send_signal(signal.SIGKILL)
    process.wait()
    # A real Prefect server revokes the killed run's lease on the workspace lock once it lapses (60 s); the test
    # harness runs no such service, so the test frees the slot as an operator would: prefect gcl update --active-slots 0.
    for limit in prefect_api_call(prefect_api, "post", "v2/concurrency_limits/filter", {"limit": 100, "offset": 0}):
        if limit["name"].startswith("workspace-") and limit["name"].endswith("-tiny") and limit["active_slots"]:
            prefect_api_call(prefect_api, "patch", f"v2/concurrency_limits/{limit['id']}", {"active_slots": 0})
    time.sleep(2)  # the training's own process ends with the flow's: had it gone on, it would have written models/math
    assert not (run_dir / "models" / "math").exists()
    # it may have completed the second checkpoint in the ~0.1 s it took to notice (the flow was killed up to 50 ms
    # after the first): the run resumes from the last complete one
    complete = [int(c.name.split("-")[1]) for c in checkpoint.parent.glob("checkpoint-*") if checkpoint_is_complete(c)]
    finished = {path: path.stat().st_mtime_ns for path in run_dir.glob("**/stage.json")}
    assert run_dir / "base_model" / "stage.json" in finished

    # resumed in the test's process: the checkpoint the stage's own process wrote resumes anywhere
    state = post_train(params_file=str(params_file), profile="tiny", return_state=True)
    assert state.is_completed(), state.message
    for path, mtime in finished.items():
        assert path.stat().st_mtime_ns == mtime, f"{path.parent.name} was recomputed"
    metrics = state.result()
    assert metrics["train-math"]["resumed_from_step"] == max(complete) and metrics["train-math"]["steps"] == 2
    uninterrupted = UNINTERRUPTED.get("summary")
    if uninterrupted is not None:  # the end-to-end test ran the same params without a kill
        resumed = json.loads((run_dir / "eval" / "summary.json").read_text())
        assert resumed.keys() == uninterrupted.keys()
        for candidate, metrics in uninterrupted.items():
            assert resumed[candidate] == pytest.approx(metrics, rel=1e-4), candidate


def test_transient_errors_are_retried_bad_input_is_not():
    from prefect.states import Failed

    from components.errors import InputError
    from flows.runner import _not_bad_input

    assert _not_bad_input(None, None, Failed(data=OSError("connection reset"))) is True
    assert _not_bad_input(None, None, Failed(data=InputError("math/test.jsonl: the evaluation set is empty"))) is False
