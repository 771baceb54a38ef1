"""The local stack for real: `stack start`, a run triggered through Prefect's API as the UI's form does, `stack stop`."""

import datetime
import json
import os
import subprocess
import time
from pathlib import Path

import httpx
from mlflow.tracking import MlflowClient

from tests.conftest import free_port, prefect_api_call, prefect_request
from tests.test_cli import flows


def wait_for_final_state(api: str, flow_run_id: str, timeout: float = 900) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = prefect_api_call(api, "get", f"flow_runs/{flow_run_id}")
        if run["state"]["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
            return run
        time.sleep(2)
    raise AssertionError(f"flow run {flow_run_id} did not finish in {timeout:.0f} s")


def now_utc() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat()


def start_stack(home: Path) -> tuple[subprocess.CompletedProcess, int, int]:
    """`stack start` on free ports, its nightly on the tiny profile; (the command's result, Prefect port, MLflow port)."""
    prefect_port, mlflow_port = free_port(), free_port()
    ports = ["--prefect-port", str(prefect_port), "--mlflow-port", str(mlflow_port)]
    return flows("stack", "start", "--home", str(home), *ports, "--nightly-profile", "tiny"), prefect_port, mlflow_port


def test_stack_runs_the_deployment_triggered_through_the_api(tmp_path: Path, params_file: Path, monkeypatch):
    monkeypatch.setenv("PREFECT_WORKER_QUERY_SECONDS", "2")  # the worker polls every 2 s instead of 10
    monkeypatch.setenv("PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS", "5")  # the scheduler every 5 s, not 60
    home = tmp_path / "stack"
    started, prefect_port, mlflow_port = start_stack(home)
    state = json.loads((home / "stack.json").read_text()) if (home / "stack.json").is_file() else {}
    try:
        assert started.returncode == 0, started.stderr
        assert f"Prefect UI:  http://127.0.0.1:{prefect_port}" in started.stdout
        assert f"MLflow UI:   http://127.0.0.1:{mlflow_port}" in started.stdout
        assert "Nightly:     post-train/nightly at '0 2 * * *' UTC, profile tiny" in started.stdout
        api = f"http://127.0.0.1:{prefect_port}/api"
        assert httpx.get(f"http://127.0.0.1:{prefect_port}/", timeout=30).status_code == 200  # the UI itself
        nightly = prefect_api_call(api, "get", "deployments/name/post-train/nightly")
        assert nightly["schedules"][0]["schedule"]["cron"] == "0 2 * * *"
        # the server's scheduler creates the next nightly runs (it never did with SQLAlchemy 2.1)
        deadline, scheduled = time.monotonic() + 120, []
        while not scheduled and time.monotonic() < deadline:
            scheduled = prefect_api_call(
                api,
                "post",
                "flow_runs/filter",
                {
                    "deployments": {"id": {"any_": [nightly["id"]]}},
                    "flow_runs": {"state": {"type": {"any_": ["SCHEDULED"]}}},
                },
            )
            time.sleep(2)
        assert scheduled and all(
            run["expected_start_time"].endswith("T02:00:00Z") or "02:00:00" in run["expected_start_time"]
            for run in scheduled
        )
        deployment = prefect_api_call(api, "get", "deployments/name/post-train/post-train")
        form = deployment["parameter_openapi_schema"]["properties"]  # flat: one input per field
        assert form["density"]["anyOf"][0]["maximum"] == 1 and "gates" in form
        assert form["profile"]["enum"] == ["tiny", "smol", "gpu"]
        assert "ties" in form["merge_method"]["anyOf"][0]["enum"]
        search = prefect_api_call(api, "get", "deployments/name/recipe-search/recipe-search")
        search_form = search["parameter_openapi_schema"]["properties"]
        assert {"trials", "timeout_minutes", "methods", "register_chosen"} <= set(search_form)
        assert nightly["parameters"]["profile"] == "tiny"  # the profile the nightly runs, as stack start said

        def create_run(request: dict) -> httpx.Response:
            return prefect_request(
                "post", f"{api}/deployments/{deployment['id']}/create_flow_run", {"parameters": request}
            )

        def created_id(response: httpx.Response) -> str:
            assert response.status_code == 201, response.text
            return response.json()["id"]

        out_of_range = create_run({"params_file": str(params_file), "profile": "tiny", "density": 1.5})
        assert out_of_range.status_code == 409 and "1.5 is greater than the maximum of 1" in out_of_range.text

        not_offered = create_run({"params_file": str(params_file), "profile": "tiny", "merge_method": "tie"})
        assert not_offered.status_code == 409 and "'tie' is not one of" in not_offered.text

        unknown_method = create_run(
            {"params_file": str(params_file), "profile": "tiny", "overrides": ["merge.recipes.ties.merge_method=tie"]}
        )
        failed = wait_for_final_state(api, created_id(unknown_method))
        assert failed["state"]["type"] == "FAILED" and "unknown merge method 'tie'" in failed["state"]["message"]
        assert not (params_file.parent / "outputs" / "tiny").exists()  # refused before any stage ran

        # A short pipeline (one expert, no merge or safety stage): the whole one runs in test_post_train.py.
        short_pipeline = {
            "params_file": str(params_file),
            "profile": "tiny",
            "experts": ["math"],
            "overrides": ["safety.realign.model=null", "safety.prune.model=null", "registry.candidate=math"],
            "gates": {"harmful_score": {"max": 1.0}},
        }
        good = create_run(short_pipeline)
        done = wait_for_final_state(api, created_id(good))
        assert done["state"]["type"] == "COMPLETED", done["state"]["message"]
        # A run the scheduler made for 02:00 executes when its time is set to now (on this test's params file and
        # the same short pipeline, so every stage is up to date).
        nightly_run = scheduled[0]["id"]
        prefect_api_call(api, "patch", f"flow_runs/{nightly_run}", {"parameters": short_pipeline})
        prefect_api_call(
            api,
            "post",
            f"flow_runs/{nightly_run}/set_state",
            {"state": {"type": "SCHEDULED", "state_details": {"scheduled_time": now_utc()}}, "force": True},
        )
        ran = wait_for_final_state(api, nightly_run)
        assert ran["state"]["type"] == "COMPLETED" and ran["deployment_id"] == nightly["id"], ran["state"]["message"]

        client = MlflowClient(tracking_uri=f"http://127.0.0.1:{mlflow_port}")
        champion = client.get_model_version_by_alias("post-train-tiny", "champion")
        assert champion.tags["candidate"] == "math"
        parent = client.get_run(champion.tags["pipeline_run"])
        assert parent.data.tags["prefect.flow_run_id"] == good.json()["id"]
        assert parent.data.tags["prefect.flow_run_url"].endswith(good.json()["id"])
    finally:
        stopped = flows("stack", "stop", "--home", str(home))
    assert stopped.returncode == 0 and "worker" in stopped.stdout
    for pid in state.get("pids", {}).values():
        try:
            os.killpg(pid, 0)
            raise AssertionError(f"process group {pid} still runs after stack stop")
        except ProcessLookupError:
            pass
