"""What a person sees in the terminal: one line per stage and a progress line for the long ones.

Library chatter (Python warnings, transformers' and datasets' logs and progress bars, the trainer's per-step
dicts) goes to <run>/run.log instead; `-v` puts it back on the console. Training steps and evaluated
candidates are reported through components.progress, which Prefect shows as progress artifacts and this
module as a line that is rewritten in place on a terminal (every tenth elsewhere).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

CHATTY = ("transformers", "datasets", "accelerate", "peft", "trl", "torch", "mlflow", "py.warnings", "posttrain")


class _LazyFileHandler(logging.FileHandler):
    """A file handler that makes its folder and file at the first record: a run refused before any stage
    starts leaves nothing on disk."""

    def __init__(self, path: Path):
        super().__init__(path, delay=True)

    def _open(self):
        Path(self.baseFilename).parent.mkdir(parents=True, exist_ok=True)
        return super()._open()


def route_library_output(log_file: Path, verbose: bool) -> None:
    """Warnings and library logs to `log_file` (and, when verbose, to the console too); progress bars off unless
    verbose."""
    import datasets
    import mlflow  # noqa: F401  (it installs its own console handler on import: imported first, so it can go)
    import transformers

    handler = _LazyFileHandler(log_file)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    logging.captureWarnings(True)
    for name in CHATTY:
        logger = logging.getLogger(name)
        logger.addHandler(handler)
        logger.setLevel(logging.INFO if name == "posttrain" else logging.WARNING)
        logger.propagate = verbose
    transformers.utils.logging.disable_default_handler()
    transformers.utils.logging.enable_propagation()
    if verbose:
        logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(name)s: %(message)s")
        return
    transformers.utils.logging.disable_progress_bar()
    datasets.disable_progress_bars()
    # MLflow's warnings (model registration on smol) to the log only, and its artifact download bars off
    mlflow_logger = logging.getLogger("mlflow")
    for console in [h for h in mlflow_logger.handlers if type(h) is logging.StreamHandler]:
        mlflow_logger.removeHandler(console)
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"


def progress_line(place: str) -> Callable[[str, float], None]:
    """A components.progress listener printing `[place] what 42%` (rewritten in place on a terminal)."""
    interactive = sys.stderr.isatty()
    start = time.monotonic()
    shown = {"tenth": -1}

    def show(what: str, fraction: float) -> None:
        elapsed = time.monotonic() - start
        left = f", about {elapsed / fraction - elapsed:.0f} s left" if 0 < fraction < 1 else ""
        line = f"[{place}] {what} {100 * fraction:.0f}% ({elapsed:.0f} s{left})"
        if interactive:
            print("\r" + line.ljust(79), end="" if fraction < 1 else "\n", file=sys.stderr, flush=True)
        elif int(10 * fraction) > shown["tenth"]:
            shown["tenth"] = int(10 * fraction)
            print(line, file=sys.stderr, flush=True)

    return show
