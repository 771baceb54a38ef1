"""The training stages' entries: on-policy pairs, then one stage per entry of train.jobs."""

from __future__ import annotations

import os

import mlflow

from components.config import Params
from components.data.stage import require_validated
from components.model.ref import ModelRef
from components.stage import StageResult
from components.train.job import run_job
from components.train.pairs import build_pairs


def pairs_stage(params: Params) -> StageResult:
    ws = params.ws
    require_validated(ws)
    return build_pairs(ws.base_model, ws.curated, params.train.pairs, ws.pairs, params.seed)


def train_stage(params: Params, name: str) -> StageResult:
    """Train job `name` from its init model; its merged model goes to models/<name>/, its work to train/<name>/."""
    ws, job = params.ws, params.train.jobs[name]
    require_validated(ws)
    # the Trainer logs loss curves to the stage's run: the active one, or the one handed to a stage run in a process of
    # its own (MLFLOW_RUN_ID, which the Trainer's MLflow callback resumes)
    report_to = ["mlflow"] if mlflow.active_run() or os.environ.get("MLFLOW_RUN_ID") else []
    return run_job(name, job, ModelRef.parse(job.init).folder(ws), ws, ws.job_model(name), ws.job_work(name), report_to)
