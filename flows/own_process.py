"""A stage run in a process of its own, as `dvc repro` runs each stage: what it allocated goes back to the system
when it ends, its peak RSS is its own rather than on top of what the pipeline's process kept from earlier stages
(docs/measurements.md has the figures), and a stage killed for memory fails its task with a message instead of
taking the whole flow down.

The process is forked from multiprocessing's fork server, which imports torch and transformers once per pipeline
run: a stage starts without the seconds a fresh interpreter takes to import them, and forking is safe because the
server itself never computed anything (no OpenMP threads). What the
stage needs from the flow's process travels with it (environment, logger levels, progress bars on or off, the active
MLflow run, the model hashes already computed), and what it produces comes
back over one queue: log records (to the flow's handlers), progress reports (to the flow's listener), the model
hashes it computed, and its result with its wall time and peak RSS, or its exception.
"""

from __future__ import annotations

import logging
import logging.handlers
import multiprocessing
import multiprocessing.forkserver
import os
import pickle
import queue
import select
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass

from components import hashing, progress, resources
from components.config import Params
from components.errors import PipelineError
from components.stage import StageResult

# What every model stage imports, loaded once into the fork server and shared by every stage it forks. Each stage
# imports the rest itself: a forked process's resident size counts what it inherited, so TRL, PEFT, datasets and
# MLflow here (what only training needs) would sit in every stage's peak.
PRELOAD = ["torch", "transformers", "safetensors"]
POLL_SECONDS = 0.5
_server_started = False  # this process's fork server (start_fork_server)


class StageProcessError(PipelineError):
    """The stage's process ended without a result (killed, for instance by the system when memory ran out)."""


class StageTraceback(Exception):
    """The traceback of an exception raised in a stage's process, attached as the re-raised exception's cause."""


@dataclass(frozen=True)
class Surroundings:
    """What a stage's process takes over from the flow's process."""

    flow_pid: int
    env: dict[str, str]
    levels: dict[str, int]  # loggers with a level of their own ("" is the root)
    mlflow_run: tuple[str, str] | None  # (tracking URI, run id) of the active run
    hashes: dict[tuple, str]
    progress_bars: bool  # transformers' and datasets' (the command line turns them off unless verbose)

    @classmethod
    def here(cls) -> Surroundings:
        loggers = [("", logging.getLogger())] + [
            (name, logger)
            for name, logger in logging.Logger.manager.loggerDict.items()
            if isinstance(logger, logging.Logger)
        ]
        return cls(
            os.getpid(),
            dict(os.environ),
            {name: logger.level for name, logger in loggers if logger.level != logging.NOTSET},
            _active_mlflow_run(),
            hashing.known(),
            _progress_bars_shown(),
        )


def _active_mlflow_run() -> tuple[str, str] | None:
    if "mlflow" not in sys.modules:  # nothing imported it, so no run is active
        return None
    import mlflow

    run = mlflow.active_run()
    return (mlflow.get_tracking_uri(), run.info.run_id) if run else None


def _progress_bars_shown() -> bool:
    if "transformers" not in sys.modules:
        return True
    import transformers

    return transformers.utils.logging.is_progress_bar_enabled()


def start_fork_server() -> None:
    """Start the fork server now (once per process), to import PRELOAD while the first stages run; started by the
    first stage run apart instead, that stage would wait for the imports."""
    global _server_started
    if _server_started or "forkserver" not in multiprocessing.get_all_start_methods():
        return
    multiprocessing.set_forkserver_preload(PRELOAD)
    multiprocessing.forkserver.ensure_running()
    _server_started = True


def _context() -> multiprocessing.context.BaseContext:
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    start_fork_server()
    return multiprocessing.get_context("forkserver")


def run_in_own_process(run: Callable[[Params], StageResult], params: Params) -> tuple[StageResult, resources.Usage]:
    """`run(params)` in a process of its own; its result and its own wall time and peak RSS, or its exception."""
    context = _context()
    events = context.Queue()
    # not a daemon: a stage may start processes of its own (a DataLoader's workers, datasets' map with num_proc)
    child = context.Process(target=_stage_process, args=(run, params, events, Surroundings.here()))
    child.start()
    answered = False
    try:
        while True:
            try:
                event = events.get(timeout=POLL_SECONDS)
            except queue.Empty:
                if child.is_alive():
                    continue
                try:  # what it sent just before it ended
                    event = events.get(timeout=POLL_SECONDS)
                except queue.Empty:
                    child.join()
                    raise StageProcessError(_ended_without_result(child.exitcode)) from None
            kind, *body = event
            if kind == "log":
                (record,) = body
                logging.getLogger(record.name).handle(record)
            elif kind == "progress":
                progress.report(*body)
            elif kind == "done":
                answered = True
                result, usage, hashes = body
                hashing.remember(hashes)
                return result, usage
            else:
                answered = True
                error, text = body
                raise error from StageTraceback(text)
    finally:  # interrupted (Ctrl-C, a cancelled task): the stage stops too
        child.join(timeout=30 if answered else 0)
        if child.is_alive():
            child.kill()
            child.join()


def _ended_without_result(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        name = signal.Signals(-exitcode).name
        cause = " (the system's out-of-memory killer sends this when memory runs out)" if name == "SIGKILL" else ""
        return f"the stage's process was killed by {name}{cause}"
    return f"the stage's process exited with code {exitcode} without a result"


def _stage_process(run: Callable[[Params], StageResult], params: Params, events, around: Surroundings) -> None:
    """The stage's process: the flow's surroundings, then the stage, measured; everything it reports goes to `events`."""
    _die_with_flow(around.flow_pid)
    os.environ.clear()  # (multiprocessing has set the working directory and sys.path already)
    os.environ.update(around.env)
    if around.mlflow_run:
        # MLflow's own way to hand a run to another process: `mlflow.start_run()` there resumes it (the Trainer's
        # MLflow callback does); a stage that logs nothing does not import MLflow for it
        os.environ["MLFLOW_TRACKING_URI"], os.environ["MLFLOW_RUN_ID"] = around.mlflow_run
    _send_logs(events, around.levels)
    if not around.progress_bars:
        import transformers

        transformers.utils.logging.disable_progress_bar()
        os.environ["HF_DATASETS_DISABLE_PROGRESS_BARS"] = "1"  # read when a stage imports datasets
    hashing.remember(around.hashes)
    try:
        with (
            progress.listening(lambda what, fraction: events.put(("progress", what, fraction))),
            resources.measured() as usage,
        ):
            result = run(params)
    except BaseException as err:  # noqa: BLE001  (every error goes back to the flow, which raises it)
        events.put(("error", _picklable(err), "".join(traceback.format_exception(err))))
        return
    events.put(("done", result, usage, hashing.known()))


def _die_with_flow(flow_pid: int) -> None:
    """A thread that kills this process when the flow's process ends: a killed run leaves no stage writing on behind
    it. (The fork server, this process's parent, cannot be relied on for that: it lives while any process it forked
    does.)"""

    def watch() -> None:
        try:
            ended = os.pidfd_open(flow_pid)  # readable once the process has ended (Linux 5.3)
            select.select([ended], [], [])
        except (OSError, AttributeError):  # no pidfd here: ask every second
            while _alive(flow_pid):
                time.sleep(1)
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="die-with-flow", daemon=True).start()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _send_logs(events, levels: dict[str, int]) -> None:
    """Every record at the flow's levels to `events`; the flow's handlers decide where it goes."""
    import transformers

    for name, level in levels.items():
        logging.getLogger(name or None).setLevel(level)
    root = logging.getLogger()
    root.handlers = [logging.handlers.QueueHandler(_LogEvents(events))]
    for logger in logging.Logger.manager.loggerDict.values():
        if isinstance(logger, logging.Logger):
            logger.handlers, logger.propagate = [], True
    logging.captureWarnings(True)
    transformers.utils.logging.disable_default_handler()
    transformers.utils.logging.enable_propagation()


class _LogEvents:
    """A queue-like target for QueueHandler that tags each record as a log event."""

    def __init__(self, events):
        self.events = events

    def put_nowait(self, record: logging.LogRecord) -> None:
        self.events.put(("log", record))


def _picklable(err: BaseException) -> BaseException:
    """`err` if it survives pickling (the flow re-raises it as it is, so a bad input stays a bad input), else a
    RuntimeError with its text."""
    try:
        pickle.loads(pickle.dumps(err))
    except Exception:  # noqa: BLE001  (any exception that does not pickle)
        return RuntimeError(f"{type(err).__name__}: {err}")
    return err
