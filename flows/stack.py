"""The local stack in one command: Prefect server, MLflow server, a process work pool and its worker, the deployments.

    python -m flows stack start      # prints the UI addresses and the environment to use them
    python -m flows stack stop

Everything lives under one folder (default `outputs/stack/`): the Prefect database (SQLite, under
prefect-home/), the MLflow store (mlflow.db) and artifacts (mlartifacts/), the logs, and stack.json
with the processes to stop. Every server is started in its own process group so that `stop` ends it
with all its children.

Postgres and S3 instead of SQLite and local files (what the Terraform outputs give):
- Prefect: PREFECT_API_DATABASE_CONNECTION_URL=postgresql+asyncpg://USER:PASSWORD@HOST:5432/prefect
- MLflow: MLFLOW_BACKEND_STORE_URI=postgresql://USER:PASSWORD@HOST:5432/mlflow and
  MLFLOW_ARTIFACTS_DESTINATION=s3://BUCKET/mlflow (AWS credentials from the usual AWS_* variables or the
  instance role)
`stack start` passes them on when they are set.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from components.config import DEFAULT_PARAMS
from components.errors import PipelineError
from flows.defaults import DEFAULT_CRON, DEFAULT_POOL
from flows.form import form_choices

STATE = "stack.json"
REPO = Path(__file__).resolve().parents[1]


def _bin(name: str) -> str:
    return str(Path(sys.executable).parent / name)


def _spawn(command: list[str], log: Path, env: dict[str, str]) -> int:
    with open(log, "a") as out:
        return subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO, start_new_session=True
        ).pid


def _wait(url: str, what: str, log: Path, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise PipelineError(f"{what} did not answer {url} within {timeout:.0f} s; see {log}")


def environment(home: Path, prefect_port: int, mlflow_port: int) -> dict[str, str]:
    """The variables a shell, a worker or a test needs to talk to this stack."""
    return {
        "PREFECT_API_URL": f"http://127.0.0.1:{prefect_port}/api",
        "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{mlflow_port}",
        "PREFECT_HOME": str(home / "prefect-home"),
    }


def start(
    home: Path,
    prefect_port: int = 4200,
    mlflow_port: int = 5000,
    pool: str = DEFAULT_POOL,
    nightly_cron: str = DEFAULT_CRON,
    nightly_profile: str | None = None,
) -> dict:
    """Start everything, register the deployments; returns what stack.json records."""
    home = Path(home).resolve()
    if (home / STATE).is_file():
        raise PipelineError(
            f"{home / STATE}: a stack is already running from this folder; `python -m flows stack stop` first"
        )
    home.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        **environment(home, prefect_port, mlflow_port),
        "PYTHONPATH": str(REPO),
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    }
    nightly_profile = nightly_profile or form_choices(DEFAULT_PARAMS).default_profile
    state: dict = {
        "home": str(home),
        "pids": {},
        "nightly": {"cron": nightly_cron, "timezone": "UTC", "profile": nightly_profile},
        **environment(home, prefect_port, mlflow_port),
    }
    try:
        state["pids"]["prefect-server"] = _spawn(
            [_bin("prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(prefect_port)],
            home / "prefect-server.log",
            env,
        )
        state["pids"]["mlflow-server"] = _spawn(
            [
                _bin("mlflow"),
                "server",
                "--host",
                "127.0.0.1",
                "--port",
                str(mlflow_port),
                "--workers",
                "1",
                "--backend-store-uri",
                os.environ.get("MLFLOW_BACKEND_STORE_URI", f"sqlite:///{home / 'mlflow.db'}"),
                "--artifacts-destination",
                os.environ.get("MLFLOW_ARTIFACTS_DESTINATION", str(home / "mlartifacts")),
            ],
            home / "mlflow-server.log",
            env,
        )
        _write_state(home, state)
        _wait(f"http://127.0.0.1:{prefect_port}/api/health", "Prefect server", home / "prefect-server.log")
        _wait(f"http://127.0.0.1:{mlflow_port}/health", "MLflow server", home / "mlflow-server.log")
        subprocess.run(
            [_bin("prefect"), "work-pool", "create", pool, "--type", "process", "--overwrite"],
            env=env,
            check=True,
            capture_output=True,
        )
        deployed = subprocess.run(
            [sys.executable, "-m", "flows", "deploy", "--pool", pool, "--cron", nightly_cron]
            + ["--nightly-profile", nightly_profile],
            env=env,
            cwd=REPO,
            check=True,
            capture_output=True,
            text=True,
        )
        state["deployments"] = json.loads(deployed.stdout.strip().splitlines()[-1])
        state["pids"]["worker"] = _spawn(
            [_bin("prefect"), "worker", "start", "--pool", pool, "--type", "process"], home / "worker.log", env
        )
        _write_state(home, state)
    except (subprocess.CalledProcessError, PipelineError) as err:
        stop(home)
        detail = getattr(err, "stderr", None) or ""
        raise PipelineError(f"the stack did not start: {err} {detail[-2000:]}") from None
    return state


def _write_state(home: Path, state: dict) -> None:
    tmp = home / f".{STATE}.tmp"
    tmp.write_text(json.dumps(state, indent=2) + "\n")
    tmp.replace(home / STATE)


def stop(home: Path) -> list[str]:
    """Stop every process of the stack (worker first), with its children; returns what was stopped."""
    home = Path(home).resolve()
    if not (home / STATE).is_file():
        raise PipelineError(f"{home / STATE}: no stack runs from this folder")
    pids = json.loads((home / STATE).read_text())["pids"]
    stopped = []
    for name in ("worker", "mlflow-server", "prefect-server"):
        if name in pids and _stop_group(pids[name]):
            stopped.append(name)
    (home / STATE).unlink()
    return stopped


def _stop_group(pid: int, timeout: float = 30) -> bool:
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.2)
    os.killpg(pid, signal.SIGKILL)
    return True


def describe(state: dict) -> str:
    prefect_ui = state["PREFECT_API_URL"].removesuffix("/api")
    nightly = state["nightly"]
    return "\n".join(
        [
            f"Prefect UI:  {prefect_ui}  (deployments: post-train, nightly, recipe-search; work pool and worker running)",
            f"MLflow UI:   {state['MLFLOW_TRACKING_URI']}",
            f"Nightly:     post-train/nightly at '{nightly['cron']}' {nightly['timezone']}, profile {nightly['profile']}",
            "To use them from a shell:",
            *(f"  export {key}={state[key]}" for key in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI")),
            "Run the pipeline from the UI (post-train > Run > Custom run), or: prefect deployment run post-train/post-train",
            f"Stop everything: python -m flows stack stop --home {state['home']}",
        ]
    )
