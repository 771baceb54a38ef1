"""The base-model stage's entry: params.yaml's `base_model` source to the workspace's base_model/ folder."""

from __future__ import annotations

from components.config import Params
from components.model.base import build_base_model, source_files
from components.stage import StageInputs, StageResult
from components.workspace import Workspace


def base_model_inputs(ws: Workspace, params: Params) -> StageInputs:
    """The user's files the base model is built from (an embedded or Hub source names none)."""
    return {"source": source_files(params.base_model)}


def base_model_stage(params: Params) -> StageResult:
    return build_base_model(params.base_model, params.ws.base_model)
