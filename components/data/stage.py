"""The data stages' entries: sources, curate and validate, each from params.yaml into the workspace's data/ folders."""

from __future__ import annotations

from components.config import Params
from components.data.curate import curate
from components.data.sources import build_sources
from components.data.validate import require_valid, validate
from components.stage import StageResult
from components.workspace import Workspace


def sources_stage(params: Params) -> StageResult:
    return build_sources(params.data, params.ws.raw)


def curate_stage(params: Params) -> StageResult:
    ws = params.ws
    return curate(ws.raw, params.data.curate, params.seed, ws.curated, ws.base_model)


def validate_stage(params: Params) -> StageResult:
    ws = params.ws
    return validate(ws.curated, params.data.curate, ws.validation)


def require_validated(ws: Workspace) -> None:
    """For stages that train or evaluate on curated data: refuse data that has not passed validation."""
    require_valid(ws.validation)
