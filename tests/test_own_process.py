"""A stage run in a process of its own (flows/own_process.py): its result, measurements, logs, progress, errors and
model hashes come back; its memory stays its own; it dies with the run that started it."""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from components import hashing, progress
from components.errors import InputError
from components.resources import peak_rss_mb, reset_peak_rss
from components.stage import StageResult
from flows.own_process import StageProcessError, StageTraceback, run_in_own_process

REPO = Path(__file__).resolve().parents[1]
ALLOCATED_MB = 400


# What the stages of these tests do, in the stage's process (module level, so that they travel by name).


def computes(params: dict) -> StageResult:
    """A product, the thread count, an environment variable, the hash of a file, a log record and progress."""
    torch.manual_seed(0)
    a = torch.randn(64, 64)
    logging.getLogger("posttrain.own_process_test").info("step %d of %d", 1, 2)
    logging.getLogger("posttrain.own_process_test").debug("below the flow's level: not sent")
    progress.report("work", 0.5)
    hashing.file_sha256(params["file"])
    return StageResult(
        {"out": params["file"]},
        {
            "sum": float((a @ a).sum()),
            "threads": float(torch.get_num_threads()),
            "env": float(os.environ.get("OWN_PROCESS_TEST", "0")),
            "pid": float(os.getpid()),
        },
    )


def allocates(params: None) -> StageResult:
    block = torch.ones(ALLOCATED_MB * 1024 * 1024 // 4)  # written, so resident
    return StageResult({}, {"sum": float(block.sum())})


def fails(params: None) -> StageResult:
    raise InputError("tables/x.jsonl: row 3 has no `prompt`")


def is_killed(params: None) -> StageResult:
    os.kill(os.getpid(), signal.SIGKILL)
    raise AssertionError("unreachable")


def starts_a_process(params: None) -> StageResult:
    helper = multiprocessing.get_context("fork").Process(target=os.getpid)
    helper.start()
    helper.join()
    return StageResult({}, {"exitcode": float(helper.exitcode)})


def waits(params: Path) -> StageResult:
    params.write_text(str(os.getpid()))
    time.sleep(120)
    return StageResult({})


def test_a_stage_apart_returns_its_result_logs_progress_and_hashes(tmp_path: Path, monkeypatch):
    file = tmp_path / "weights.bin"
    file.write_bytes(b"w" * 1000)
    monkeypatch.setenv("OWN_PROCESS_TEST", "7")  # set after the fork server may have started: still seen
    logger = logging.getLogger("posttrain.own_process_test")
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    reports: list[tuple[str, float]] = []
    try:
        with progress.listening(lambda what, fraction: reports.append((what, fraction))):
            result, usage = run_in_own_process(computes, {"file": file})
    finally:
        logger.removeHandler(handler)
        logger.setLevel(logging.NOTSET)
    torch.manual_seed(0)
    a = torch.randn(64, 64)
    assert result.metrics["sum"] == float((a @ a).sum())  # the same arithmetic as here
    assert result.metrics["threads"] == torch.get_num_threads()
    assert result.metrics["env"] == 7.0 and result.metrics["pid"] != os.getpid()
    assert [r.getMessage() for r in records] == ["step 1 of 2"]
    assert reports == [("work", 0.5)]
    assert usage.seconds > 0 and usage.peak_rss_mb > 0
    assert any(key[1][0] == str(file.resolve()) for key in hashing.known()), "the hash came back"


def test_a_stage_apart_keeps_its_memory_to_itself():
    if not reset_peak_rss():
        pytest.skip("this system cannot reset a process's high-water mark")
    before = peak_rss_mb()
    result, usage = run_in_own_process(allocates, None)
    assert result.metrics["sum"] == ALLOCATED_MB * 1024 * 1024 // 4
    assert usage.peak_rss_mb > ALLOCATED_MB  # measured where it was allocated
    # and this process's high-water mark never saw it (torch hands a freed block back, so the current size would not
    # tell: the peak does)
    assert peak_rss_mb() < before + ALLOCATED_MB / 4


def test_a_stage_apart_raises_its_own_error_with_its_traceback():
    with pytest.raises(InputError, match=r"tables/x.jsonl: row 3 has no `prompt`") as raised:
        run_in_own_process(fails, None)
    assert isinstance(raised.value.__cause__, StageTraceback)
    assert 'in fails\n    raise InputError("tables/x.jsonl' in str(raised.value.__cause__)


def test_a_stage_apart_may_start_processes_of_its_own():  # a DataLoader's workers, datasets' map with num_proc
    assert run_in_own_process(starts_a_process, None)[0].metrics == {"exitcode": 0.0}


def test_a_stage_process_killed_fails_with_the_signal():
    with pytest.raises(StageProcessError, match="killed by SIGKILL"):
        run_in_own_process(is_killed, None)


def dead(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/status").read_text().split("State:")[1].split()[0] in ("Z", "X")
    except (FileNotFoundError, IndexError):
        return True


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's")
def test_a_killed_run_takes_its_stage_process_with_it(tmp_path: Path):
    pid_file = tmp_path / "stage.pid"
    code = (
        "import sys; from pathlib import Path; from flows.own_process import run_in_own_process; "
        "from tests.test_own_process import waits; run_in_own_process(waits, Path(sys.argv[1]))"
    )
    run = subprocess.Popen([sys.executable, "-c", code, str(pid_file)], cwd=REPO, env={**os.environ})
    deadline = time.monotonic() + 120
    while not (pid_file.is_file() and pid_file.read_text()) and time.monotonic() < deadline:
        assert run.poll() is None, "the run ended before its stage started"
        time.sleep(0.1)
    stage = int(pid_file.read_text())
    assert not dead(stage)
    run.send_signal(signal.SIGKILL)
    run.wait()
    deadline = time.monotonic() + 20
    while not dead(stage) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert dead(stage), "the stage's process outlived the run"
