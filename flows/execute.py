"""Running one stage of the table: in this process or, for a stage that holds models in a whole run, in a process of
its own (flows/own_process.py); measured either way, its wall time and peak RSS in its metrics and the run's
timings file (`python -m flows stages` shows them)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from components import resources
from components.atomic import atomic_file
from components.config import Params
from components.stage import StageResult
from flows.stages import Stage


def execute(stage: Stage, params: Params, apart: bool = False) -> StageResult:
    """`stage.run`, measured. With `apart` (a whole pipeline run with `stage_processes`), a stage that holds models
    runs in a process of its own, measured there."""
    if apart and stage.holds_models and params.stage_processes:
        from flows.own_process import run_in_own_process

        result, usage = run_in_own_process(stage.run, params)
    else:
        with resources.measured() as usage:
            result = stage.run(params)
    record_timing(params.ws.timings, stage.name, usage, result.cached)
    return replace(
        result, metrics={**result.metrics, "stage_seconds": usage.seconds, "stage_peak_rss_mb": usage.peak_rss_mb}
    )


def prepare_apart(params: Params) -> None:
    """Before a whole run: with `stage_processes`, the fork server of the stages run apart starts importing their
    libraries while the data stages run."""
    if params.stage_processes:
        from flows.own_process import start_fork_server

        start_fork_server()


def record_timing(path: Path, stage: str, usage: resources.Usage, cached: bool) -> None:
    """The stage's latest wall time and peak RSS in <run>/timings.json."""
    timings = json.loads(path.read_text()) if path.is_file() else {}
    timings[stage] = {"seconds": round(usage.seconds, 2), "peak_rss_mb": round(usage.peak_rss_mb), "cached": cached}
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(timings, indent=1) + "\n")
