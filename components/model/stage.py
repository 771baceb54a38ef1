"""The base-model stage's entry: params.yaml's `base_model` source to the workspace's base_model/ folder."""

from __future__ import annotations

from components.config import Params
from components.model.base import build_base_model
from components.stage import StageResult


def base_model_stage(params: Params) -> StageResult:
    return build_base_model(params.base_model, params.ws.base_model)
