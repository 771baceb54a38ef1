"""The training stages' entries: on-policy pairs, then one stage per entry of train.jobs."""

from __future__ import annotations

import os

import mlflow

from components.config import Params
from components.data.stage import require_validated
from components.model.ref import ModelRef
from components.stage import StageInputs, StageResult
from components.train.data import harmful_mix_table, table_folder
from components.train.job import run_job
from components.train.pairs import build_pairs
from components.workspace import Workspace


def pairs_inputs(ws: Workspace, params: Params) -> StageInputs:
    """The base model that answers, the harmful training prompts, and the benign look-alikes' (when it answers them)."""
    return {
        "model": ws.base_model,
        "data": ws.split("harmful", "train"),
        "lookalikes": ws.split("benign_lookalikes", "train") if params.train.pairs.lookalike_prompts else None,
    }


def pairs_stage(params: Params) -> StageResult:
    ws = params.ws
    require_validated(ws)
    inputs = pairs_inputs(ws, params)
    return build_pairs(inputs["model"], inputs["data"], inputs["lookalikes"], params.train.pairs, ws.pairs, params.seed)


def train_inputs(ws: Workspace, params: Params, name: str) -> StageInputs:
    """The model the job starts from, the folders of its tables, and the harmful table it mixes in (if any)."""
    job = params.train.jobs[name]
    return {
        "init": ModelRef.parse(job.init).folder(ws),
        **{table: table_folder(table, ws) for table in job.datasets},
        "harmful": harmful_mix_table(job, ws),
    }


def train_stage(params: Params, name: str) -> StageResult:
    """Train job `name` from its init model; its merged model goes to models/<name>/, its work to train/<name>/."""
    ws, job = params.ws, params.train.jobs[name]
    require_validated(ws)
    # the Trainer logs loss curves to the stage's run: the active one, or the one handed to a stage run in a process of
    # its own (MLFLOW_RUN_ID, which the Trainer's MLflow callback resumes)
    report_to = ["mlflow"] if mlflow.active_run() or os.environ.get("MLFLOW_RUN_ID") else []
    init = train_inputs(ws, params, name)["init"]
    return run_job(name, job, init, ws, ws.job_model(name), ws.job_work(name), report_to)
