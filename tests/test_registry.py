"""The model registry against a real `mlflow server` on localhost: register, gate, promote, rollback, races."""

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import mlflow
import pytest
import torch
from mlflow.tracking import MlflowClient
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

from components.config import load_params
from components.errors import InputError, PipelineError
from components.evaluate.config import EvaluateConfig
from components.evaluate.evaluation import SUMMARY, WEIGHTS, evaluate_candidates
from components.evaluate.metric_names import METRIC_DIRECTIONS
from components.hashing import weights_sha256
from components.registry.champion import Suite
from components.registry.config import GateSpec, RegistryConfig, RelativeBound
from components.registry.lineage import champion_point
from components.registry.registry import (
    CHALLENGER,
    CHAMPION,
    SUITE_TAG,
    check_reachable,
    download_model,
    promote,
    register,
    rollback,
    version_by_alias,
)
from components.registry.stage import evaluated_table, gate_candidate, register_candidate
from components.workspace import Shipping


@pytest.fixture
def registry(mlflow_server: str, request):
    """A client on the server and a registered-model name of this test's own."""
    client = MlflowClient(tracking_uri=mlflow_server)
    name = f"reg-{request.node.name}"[:60].replace("[", "-").replace("]", "")
    experiment = client.create_experiment(name)

    def add(model_dir: Path, passed: bool, sha: str, harmful: float = 0.1) -> str:
        run_id = client.create_run(experiment).info.run_id
        card = model_dir.parent / f"card-{sha}.md"
        card.write_text(f"# card {sha}\n")
        return register(
            client,
            name,
            model_dir,
            run_id,
            {"model_sha256": sha, "candidate": "merge-ties"},
            {"harmful_score": harmful},
            {"candidate": "merge-ties", "passed": passed, "weights_sha256": sha},
            {"model_card": card},
        )

    return client, name, add


def aliases(client: MlflowClient, name: str) -> dict[str, str]:
    return {alias: str(version) for alias, version in client.get_registered_model(name).aliases.items()}


def test_register_promote_and_load_the_champion_by_alias(registry, tiny_base: Path, tmp_path: Path):
    client, name, add = registry
    first = add(tiny_base, passed=True, sha="a" * 64)
    assert aliases(client, name) == {CHALLENGER: first}
    assert promote(client, name, first) is None
    assert aliases(client, name) == {CHALLENGER: first, CHAMPION: first}

    loaded = download_model(f"models:/{name}@champion", tmp_path / "champion", tracking_uri=client.tracking_uri)
    assert weights_sha256(loaded) == weights_sha256(tiny_base)
    assert (loaded / "chat_template.jinja").read_text() == (tiny_base / "chat_template.jinja").read_text()
    assert (loaded / "tokenizer.json").is_file() and (loaded / "config.json").is_file()
    version = client.get_model_version(name, first)
    assert version.tags["gate"] == "passed" and version.tags["metric.harmful_score"] == "0.1"
    card = client.download_artifacts(version.tags["registration_run"], "card/card-" + "a" * 64 + ".md", str(tmp_path))
    assert Path(card).read_text() == "# card " + "a" * 64 + "\n"

    # The same weights again: a new version with its own verdict, pointing at the stored copy.
    again = add(tiny_base, passed=False, sha="a" * 64)
    second = client.get_model_version(name, again)
    assert again != first and second.source == version.source and second.tags["gate"] == "failed"
    assert client.list_artifacts(second.tags["registration_run"], "model") == []


def test_gate_and_register_by_hand_without_the_whole_evaluate_stage(mlflow_server: str, tiny_base: Path, tmp_path):
    """`stage gate` evaluates the candidate and its references alone, so no summary.json: register reads the
    candidates' own metrics files."""
    eval_dir = tmp_path / "eval"
    for name, harmful in (("realigned-merge-ties", 0.2), ("merge-ties", 0.9), ("base", 0.7)):
        (eval_dir / name).mkdir(parents=True)
        metrics = {column: 0.5 for column in METRIC_DIRECTIONS} | {"harmful_score": harmful}
        metrics |= {f"{m}_{k}": v for m in ("harmful_score", "over_refusal") for k, v in (("low", 0), ("high", 1))}
        metrics |= {"harmful_score_n": 150, "over_refusal_n": 150}
        (eval_dir / name / "metrics.json").write_text(json.dumps(metrics))
        answered = round(harmful * 150)  # the items the gate's bound resamples: 150 harmful prompts
        samples = [{"task": "harmful", "id": f"h{i}", "attempted": i < answered} for i in range(150)]
        (eval_dir / name / "samples.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples))
        (eval_dir / name / WEIGHTS).write_text(json.dumps({"weights_sha256": weights_sha256(tiny_base)}))
    cfg = RegistryConfig(
        model_name="reg-by-hand",
        gates={"harmful_score": GateSpec(relative=RelativeBound(of="merge-ties", times=0.5))},
    )
    shipping = Shipping(tmp_path)
    gate_candidate("realigned-merge-ties", tiny_base, eval_dir, cfg, mlflow_server, shipping)
    client = MlflowClient(tracking_uri=mlflow_server)
    run_id = client.create_run(client.create_experiment("reg-by-hand")).info.run_id
    register_candidate(
        "realigned-merge-ties", tiny_base, eval_dir, cfg, mlflow_server, run_id, {}, [], shipping
    )  # fmt: skip
    registration = json.loads(shipping.registration.read_text())
    assert (registration["version"], registration["gate_passed"], registration["promoted"]) == ("1", True, True)
    card = shipping.model_card.read_text()
    rows = [line.split(" | ")[0] for line in card.splitlines() if line.startswith("| ") and " | 0.500 | " in line]
    assert rows == ["| base", "| merge-ties", "| realigned-merge-ties"]

    # after a whole evaluate stage, its summary names the candidates: a folder left by an older one stays out,
    # and every row is still the candidate's own metrics file (what the gate judged), not the summary's copy
    (eval_dir / "merge-old").mkdir()
    (eval_dir / "merge-old" / "metrics.json").write_text(json.dumps(metrics))
    # (a row without a metrics file here, as the search's references, comes from the summary)
    (eval_dir / SUMMARY).write_text(json.dumps({"base": {}, "merge-ties": {}, "reference": {"harmful_score": 0.4}}))
    table = evaluated_table(eval_dir, "realigned-merge-ties")
    assert list(table) == ["base", "merge-ties", "realigned-merge-ties", "reference"]
    assert table["merge-ties"]["harmful_score"] == 0.9 and table["reference"] == {"harmful_score": 0.4}


def test_the_gate_compares_with_the_champion_as_the_candidates_suite_measures_it(
    mlflow_server: str, tiny_base: Path, curated: Path, tmp_path: Path, monkeypatch
):
    """A champion registered with float32 metrics, a candidate evaluated in bfloat16: the gate measures the champion
    in bfloat16 too (its weights downloaded from the registry), keeps that for the next gate run, and takes a
    candidate's own evaluation where the weights are the champion's."""
    from components.evaluate import suite as evaluation_suite

    float32 = Suite(curated, EvaluateConfig(math_new_tokens=4, safety_new_tokens=4, batch_size=4), 0)
    bfloat16 = Suite(curated, float32.cfg.model_copy(update={"dtype": "bfloat16"}), 0)
    assert float32.fingerprint != bfloat16.fingerprint
    cfg = RegistryConfig(model_name="reg-suites", gates={"domain_perplexity": GateSpec(tolerance=0.0)})
    client = MlflowClient(tracking_uri=mlflow_server)
    run_id = client.create_run(client.create_experiment("reg-suites")).info.run_id

    def gate(candidate: str, model: Path, eval_dir: Path, suite: Suite) -> dict:
        evaluate_candidates({candidate: model}, curated, suite.cfg, 0, eval_dir)
        gate_candidate(candidate, model, eval_dir, cfg, mlflow_server, shipping, suite)
        return json.loads(shipping.gate_json.read_text())

    shipping = Shipping(tmp_path)

    gate("champion", tiny_base, tmp_path / "eval32", float32)
    register_candidate(
        "champion", tiny_base, tmp_path / "eval32", cfg, mlflow_server, run_id,
        {SUITE_TAG: float32.fingerprint}, [], shipping,
    )  # fmt: skip
    registered = json.loads((tmp_path / "eval32" / "champion" / "metrics.json").read_text())["domain_perplexity"]

    model = shutil.copytree(tiny_base, tmp_path / "candidate")
    tensors = load_file(model / "model.safetensors")
    tensors["model.norm.weight"] = tensors["model.norm.weight"] * 1.5
    save_file(tensors, model / "model.safetensors", metadata={"format": "pt"})
    report = gate("candidate", model, tmp_path / "eval16", bfloat16)
    measured = evaluation_suite.evaluate_model(tiny_base, curated, bfloat16.cfg, 0)[0]["domain_perplexity"]
    assert measured != registered
    (result,) = report["gates"]
    assert result["champion"] == measured and report["champion_metrics"].endswith("evaluated again with this one")
    assert "evaluated again with this one" in shipping.gate_md.read_text()

    def not_again(*args):
        raise AssertionError("the champion was evaluated again")

    monkeypatch.setattr(evaluation_suite, "evaluate_model", not_again)
    # the next gate run of the same suite reads the kept evaluation
    assert gate("candidate", model, tmp_path / "eval16", bfloat16)["gates"][0]["champion"] == measured
    # a candidate with the champion's weights, evaluated in this suite: its own metrics are the champion's
    shipping.champion_evaluation.unlink()
    monkeypatch.undo()
    report = gate("champion", tiny_base, tmp_path / "eval16", bfloat16)
    assert report["champion_metrics"] == "its weights are champion's, evaluated here"
    assert report["gates"][0]["champion"] == measured
    # the report's figure draws the champion at the numbers the gate compared with
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    overrides = {"workspace": str(tmp_path / "ws"), "registry": {"model_name": "reg-suites"}}
    params = load_params(profile="tiny", overrides=overrides)
    shutil.copytree(shipping.gate, params.ws.shipping.gate)
    name, drawn = champion_point(params)
    assert name == "champion (reg-suites v1)" and drawn["domain_perplexity"] == measured
    # and the suite it was registered with takes its registered metrics
    report = gate("champion", tiny_base, tmp_path / "eval32", float32)
    assert report["champion_metrics"] == "its registered metrics" and report["gates"][0]["champion"] == registered


def test_failed_gate_becomes_challenger_never_champion(registry, tiny_base: Path):
    client, name, add = registry
    good = add(tiny_base, passed=True, sha="b" * 64)
    promote(client, name, good)
    bad = add(tiny_base, passed=False, sha="c" * 64, harmful=0.9)
    assert aliases(client, name) == {CHALLENGER: bad, CHAMPION: good}
    with pytest.raises(
        PipelineError, match=r"did not pass its gates \(its logged gate report says FAILED\): champion not moved"
    ):
        promote(client, name, bad)
    assert aliases(client, name)[CHAMPION] == good


def test_rollback_moves_champion_back_and_stops_at_the_first(registry, tiny_base: Path):
    client, name, add = registry
    versions = [add(tiny_base, passed=True, sha=str(i) * 64) for i in range(3)]
    for version in versions:
        promote(client, name, version)
    assert rollback(client, name) == (versions[2], versions[1])
    assert rollback(client, name) == (versions[1], versions[0])
    assert aliases(client, name)[CHAMPION] == versions[0]
    with pytest.raises(PipelineError, match="first champion: there is nothing to roll back to"):
        rollback(client, name)
    assert "rolled_back_at" in client.get_model_version(name, versions[2]).tags


def test_racing_promotions_leave_champion_on_a_passed_version(registry, tiny_base: Path):
    client, name, add = registry
    promote(client, name, add(tiny_base, passed=True, sha="d" * 64))
    outcomes: dict[int, str] = {}
    start = threading.Barrier(6, timeout=300)  # a thread that fails before it breaks the barrier, not a hang

    def candidate(i: int) -> None:
        version = add(tiny_base, passed=i % 2 == 0, sha=f"{i:064d}")
        start.wait()
        try:
            promote(client, name, version)
            outcomes[i] = "promoted"
        except PipelineError:
            outcomes[i] = "refused"

    threads = [threading.Thread(target=candidate, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert outcomes == {i: "promoted" if i % 2 == 0 else "refused" for i in range(6)}
    winner = version_by_alias(client, name, CHAMPION)
    assert winner.status == "READY" and winner.tags["gate"] == "passed"
    assert int(winner.tags["model_sha256"]) % 2 == 0


def test_not_a_model_directory_leaves_the_registry_unchanged(registry, tmp_path: Path):
    client, name, add = registry
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match=r"empty: not a model directory \(no config.json\)"):
        add(tmp_path / "empty", passed=True, sha="e" * 64)
    assert client.search_model_versions(f"name='{name}'") == []


def test_unreachable_server_fails_fast_with_its_address():
    started = time.monotonic()
    with pytest.raises(PipelineError, match=r"http://127.0.0.1:9 is unreachable.*registry was not changed"):
        check_reachable("http://127.0.0.1:9")
    assert time.monotonic() - started < 10


def test_a_rewritten_gate_tag_does_not_promote(registry, tiny_base: Path):
    """The verdict comes from the gate report logged with the version, not from a tag anyone can set."""
    client, name, add = registry
    failed = add(tiny_base, passed=False, sha="f" * 64, harmful=0.9)
    client.set_model_version_tag(name, failed, "gate", "passed")  # an adversary with registry access
    with pytest.raises(PipelineError, match="its logged gate report says FAILED"):
        promote(client, name, failed)
    assert CHAMPION not in aliases(client, name)
    # a passed version whose weights tag is changed afterwards no longer matches its report's weights
    good = add(tiny_base, passed=True, sha="e" * 64)
    client.set_model_version_tag(name, good, "model_sha256", "0" * 64)
    assert promote(client, name, good) is None  # the record, not the tag, binds verdict and weights
    assert aliases(client, name)[CHAMPION] == good


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_the_champion_loads_and_serves_as_an_mlflow_chat_model(registry, tiny_base: Path, monkeypatch):
    client, name, add = registry
    promote(client, name, add(tiny_base, passed=True, sha=weights_sha256(tiny_base)))
    uri = f"models:/{name}@champion"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", client.tracking_uri)
    request = {"messages": [{"role": "user", "content": "Hello"}], "max_tokens": 4}

    chat_model = mlflow.pyfunc.load_model(uri)
    assert chat_model.metadata.metadata["model_sha256"] == weights_sha256(tiny_base)
    assert "messages" in chat_model.metadata.get_input_schema().input_names()
    answer = chat_model.predict(request)
    assert answer[0]["choices"][0]["message"]["role"] == "assistant" and answer[0]["usage"]["completion_tokens"] == 4
    parts = mlflow.transformers.load_model(uri, return_type="components")
    tensors = {k: v for k, v in parts["model"].state_dict().items()}
    reference = AutoModelForCausalLM.from_pretrained(tiny_base).state_dict()
    assert all(torch.equal(tensors[k], reference[k]) for k in reference)

    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "models", "serve", "-m", uri, "--env-manager", "local", "-p", str(port)],
        # the scoring server starts `uvicorn` from PATH: the environment's bin folder, as in an activated venv
        env={
            **os.environ,
            "MLFLOW_TRACKING_URI": client.tracking_uri,
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        },
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/ping", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert server.poll() is None and time.monotonic() < deadline, "mlflow models serve did not come up"
            time.sleep(1)
        response = httpx.post(f"http://127.0.0.1:{port}/invocations", json=request, timeout=60)
        assert response.status_code == 200, response.text
        served = response.json()
        served = served[0] if isinstance(served, list) else served
        assert served["choices"][0]["message"]["role"] == "assistant"
    finally:
        server.terminate()
        server.wait(timeout=30)
