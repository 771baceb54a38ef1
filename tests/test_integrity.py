"""Bad input, as a careful user and an adversary would bring it: every case exits 2 with a message naming the key,
file and line or value at fault, and changes no file outside the temporary workspace (nothing half-written in it).
Also: one run per workspace, and what a killed run leaves behind is cleared by the next."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from components.config import load_params, parse_overrides
from components.lock import workspace_lock
from components.redact import redact_text, redact_tree
from flows.__main__ import main
from tests.conftest import REPO

PARAMS_CASES = [
    (["--set", "seed=[1"], "--set 'seed=[1': the value is not valid YAML"),
    (["--set", "seed=1", "--set", "seed.x=2"], "--set 'seed.x=2': seed is set to a value above, not a section"),
    (["--set", "train.jobs.math.max_steps=1000000000000"], "train.jobs.math.max_steps: Input should be less than"),
    (["--set", "train.jobs.math.lora.r=100000"], "train.jobs.math.lora.r: Input should be less than or equal to 1024"),
    (["--set", "safety.realign.init_logit=.inf"], "safety.realign.init_logit: Input should be"),
    (["--set", "evaluate.batch_size=1000000000"], "evaluate.batch_size: Input should be less than or equal to 4096"),
    (["--set", "merge.recipes.ties.parameters.lambda=-5"], "parameters.lambda must be in (0, inf), got -5"),
    (["--set", "merge.recipes.ties.parameters.lambda=abc"], "parameters.lambda must be a number, got 'abc'"),
    (["--set", "merge.recipes.ties.models=[{model: math}, {model: math}]"], "['math'] named more than once"),
    (["--set", "merge.recipes.ties.merge_method=tie"], "unknown merge method 'tie'"),
    (["--set", "search.storage=${POSTTRAIN_TEST_UNSET}"], "search.storage: environment variable POSTTRAIN_TEST_UNSET"),
    (["--set", "train.jobs.safety.beta=0.2"], "--set train.jobs.safety.beta: unknown key"),
    (["--set", "base_model.layers=3"], "--set base_model.layers: unknown key"),
    (["--set", "registry.candidate=merge-nope"], "'merge-nope' is not a candidate of this pipeline"),
    (["--profile", "huge"], "unknown profile 'huge'"),
]


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    code = main(argv)
    return code, capsys.readouterr().err


def snapshot(root: Path) -> dict[str, float]:
    return {str(p): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


@pytest.mark.parametrize(("args", "message"), PARAMS_CASES)
def test_bad_parameters_exit_2_naming_the_key_and_write_nothing(params_file: Path, capsys, args, message):
    before = snapshot(params_file.parent)
    code, err = run_cli(
        [
            "stage",
            "sources",
            "--params",
            str(params_file),
            "--profile",
            "tiny",
            "--no-tracking",
            *args[2 * (args[0] == "--profile") :],
            *args[: 2 * (args[0] == "--profile")],
        ],
        capsys,
    )
    assert code == 2 and message in err and "Traceback" not in err, err
    assert snapshot(params_file.parent) == before


def test_a_key_written_twice_in_params_yaml_is_refused(params_file: Path, capsys):
    text = params_file.read_text()
    params_file.write_text(text.replace("common:\n", "common:\n  seed: 1\n  seed: 2\n", 1))
    code, err = run_cli(["stages", "--params", str(params_file), "--profile", "tiny"], capsys)
    assert code == 2 and "key 'seed' is also on line" in err


def user_table(params_file: Path, name: str, content: bytes, **entry) -> list[str]:
    path = params_file.parent / name
    path.write_bytes(content)
    fields = ", ".join(
        f"{k}: {v}" for k, v in {"name": "mine", "path": name, "kind": "prompt_completion", **entry}.items()
    )
    return ["--set", f"data.user=[{{{fields}}}]"]


GOOD_ROW = b'{"prompt": "What is 2 + 2?", "completion": "4"}\n'
DATA_CASES = [
    (
        "latin1.jsonl",
        GOOD_ROW * 2 + '{"prompt": "caf\u00e9", "completion": "x"}\n'.encode("latin-1"),
        {},
        "latin1.jsonl:3: not UTF-8",
    ),
    ("nul.jsonl", GOOD_ROW + b'{"prompt": "a\x00b", "completion": "x"}\n', {}, "nul.jsonl:2: a NUL byte in the data"),
    ("broken.jsonl", GOOD_ROW + b'{"prompt": "a", \n', {}, "broken.jsonl:2: malformed JSON"),
    ("records.csv", b'prompt,completion\n"two\nlines",x\nq,\x00\n', {}, "records.csv:4: a NUL byte in the data"),
    ("latin1.csv", b"prompt,completion\nq,a\nq2,caf\xe9\n", {}, "latin1.csv:3: not UTF-8"),
    ("missing_column.jsonl", b'{"prompt": "q"}\n', {}, "missing_column.jsonl:1"),
]


@pytest.mark.parametrize(("name", "content", "entry", "message"), DATA_CASES)
def test_bad_user_data_is_named_by_file_and_physical_line(params_file: Path, capsys, name, content, entry, message):
    args = user_table(params_file, name, content, **entry)
    code, err = run_cli(
        ["stage", "sources", "--params", str(params_file), "--profile", "tiny", "--no-tracking", *args], capsys
    )
    assert code == 2 and message in err and "Traceback" not in err, err
    raw = params_file.parent / "outputs" / "tiny" / "data" / "raw"
    assert not raw.exists() and not list((params_file.parent / "outputs" / "tiny" / "data").glob(".*"))


def test_dataset_names_must_be_distinct_and_not_built_in(params_file: Path, capsys):
    (params_file.parent / "a.jsonl").write_bytes(GOOD_ROW)
    twice = (
        "[{name: mine, path: a.jsonl, kind: prompt_completion}, {name: mine, path: a.jsonl, kind: prompt_completion}]"
    )
    code, err = run_cli(
        ["stages", "--params", str(params_file), "--profile", "tiny", "--set", f"data.user={twice}"], capsys
    )
    assert code == 2 and "data.user: [1].name: 'mine' is also the name of data.user[0]" in err
    builtin = "[{name: math, path: a.jsonl, kind: prompt_completion}]"
    code, err = run_cli(
        ["stages", "--params", str(params_file), "--profile", "tiny", "--set", f"data.user={builtin}"], capsys
    )
    assert code == 2 and "'math' is a built-in dataset's name" in err


def test_a_csv_field_longer_than_the_csv_module_default_is_data(tmp_path: Path):
    from components.data.tables import read_table

    path = tmp_path / "long.csv"
    path.write_text("prompt,completion\nq," + "x" * 200_000 + "\n")
    [(where, row)] = list(read_table(path))
    assert where.endswith("long.csv:2") and len(row["completion"]) == 200_000


def test_secrets_are_masked_in_everything_logged(params_file: Path, monkeypatch):
    monkeypatch.setenv("POSTTRAIN_TEST_STORAGE", "postgresql://user:hunter2@db.example:5432/optuna")
    params = load_params(params_file, "tiny", parse_overrides(["search.storage=${POSTTRAIN_TEST_STORAGE}"]))
    assert params.search.storage == "postgresql://user:hunter2@db.example:5432/optuna"  # the value works
    from components.tracking import pipeline_run, tracking_uri

    with pipeline_run(params, REPO) as run_id:
        pass
    logged = MlflowClient(tracking_uri(params)).get_run(run_id).data.params
    assert logged["search.storage"] == "postgresql://user:***@db.example:5432/optuna"
    assert not any("hunter2" in value for value in logged.values())
    assert redact_tree({"hub": {"token": "hf_abc", "tokenizer": "x"}, "url": "s3://k?X-Amz-Signature=zz&sig=1"}) == {
        "hub": {"token": "***", "tokenizer": "x"},
        "url": "s3://k?X-Amz-Signature=zz&sig=***",
    }
    assert redact_text("https://user:pw@host/x") == "https://user:***@host/x"


def test_one_run_per_workspace_names_the_holder(tmp_path: Path):
    with (
        workspace_lock(tmp_path / "ws", "the first run"),
        pytest.raises(Exception, match=r"ws is in use by `the first run` \(pid \d+"),
        workspace_lock(tmp_path / "ws"),
    ):
        pass
    with workspace_lock(tmp_path / "ws"):  # released when the holder ends
        pass


def test_a_killed_run_leaves_nothing_the_next_run_keeps(params_file: Path, monkeypatch):
    """SIGKILL during a tracked run; the next run takes the lock, clears the dead process's temporary folders and
    marks its MLflow runs KILLED."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # the workspace's own SQLite store
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "flows", "run", "--params", str(params_file), "--profile", "tiny"]
    first = subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    run_dir = params_file.parent / "outputs" / "tiny"
    deadline = time.monotonic() + 240
    while not (run_dir / "models").is_dir() and time.monotonic() < deadline:  # killed while training
        time.sleep(0.5)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    leftover = run_dir / "models" / f".math.tmp-{first.pid}"
    leftover.mkdir(parents=True, exist_ok=True)  # as a kill between mkdir and rename leaves it
    client = MlflowClient(f"sqlite:///{params_file.parent / 'outputs' / 'mlflow.db'}")
    [experiment] = [e.experiment_id for e in client.search_experiments() if e.name != "Default"]
    running = {r.info.run_id for r in client.search_runs([experiment], "attributes.status = 'RUNNING'")}
    assert running  # the killed process's parent run and its stage's run
    assert main(["stage", "base-model", "--params", str(params_file), "--profile", "tiny"]) == 0  # the next run
    assert all(client.get_run(run).info.status == "KILLED" for run in running)
    assert not leftover.exists() and not [p for p in run_dir.rglob(f"*-{first.pid}") if p.name.startswith(".")]
