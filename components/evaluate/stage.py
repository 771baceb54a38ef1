"""The evaluation stages' entries: the suite on every candidate of the pipeline, and the run's pictures."""

from __future__ import annotations

from pathlib import Path

from components.config import Params, pipeline_models
from components.evaluate.evaluation import EVAL_SETS, evaluate_candidates, judge_files, judge_model
from components.stage import StageInputs, StageResult
from components.workspace import Workspace


def candidate_folders(params: Params, ws: Workspace) -> dict[str, Path]:
    """Every model params.yaml defines, base first, by its folder in `ws`: what the evaluate stage can score."""
    return {str(ref): ref.folder(ws) for ref in pipeline_models(params)}


def candidates(params: Params) -> dict[str, Path]:
    """The models the pipeline has produced so far, base first, of those `evaluate.candidates` names (every one when
    it is null): what the evaluate stage scores."""
    chosen = params.evaluate.candidates
    found = candidate_folders(params, params.ws)
    return {
        name: folder
        for name, folder in found.items()
        if (chosen is None or name in chosen) and (name == "base" or folder.is_dir())
    }


def evaluate_inputs(ws: Workspace, params: Params) -> StageInputs:
    """Each candidate's weights (every model params.yaml defines; the stage scores those `evaluate.candidates` names
    that have been built), the splits the suite reads (`evaluate.split`), and the model and files a learned judge reads (if one is the judge)."""
    return {
        "candidates": list(candidate_folders(params, ws).values()),
        "tests": [ws.split(name, params.evaluate.split) for name in EVAL_SETS],
        "judge_model": judge_model(params.evaluate, ws),
        "judge_files": list(judge_files(params.evaluate).values()),
    }


def evaluate_stage(params: Params) -> StageResult:
    ws = params.ws
    return evaluate_candidates(
        candidates(params),
        ws.curated,
        params.evaluate,
        params.seed,
        ws.evaluation(params.evaluate.split),
        judge_model(params.evaluate, ws),
    )


def report_inputs(ws: Workspace, params: Params) -> StageInputs:
    """The train jobs' loss histories (the evaluation reaches the report's key through the evaluation's own keys)."""
    return {job: ws.loss_history(job) for job in params.train.jobs}


def report_stage(params: Params) -> StageResult:
    from components.evaluate.report import draw_report
    from components.registry.lineage import champion_point

    ws = params.ws
    return draw_report(
        ws.evaluation(params.evaluate.split),
        candidates(params),
        report_inputs(ws, params),
        champion_point(params),
        ws.report,
    )
