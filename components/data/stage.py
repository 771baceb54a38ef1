"""The data stages' entries: sources, curate and validate, each from params.yaml into the workspace's data/ folders."""

from __future__ import annotations

from components.config import Params
from components.data.curate import curate
from components.data.sources import build_sources, user_tables
from components.data.validate import require_valid, validate
from components.stage import StageInputs, StageResult
from components.workspace import Workspace


def sources_inputs(ws: Workspace, params: Params) -> StageInputs:
    """The user's tables (the built-in sources ship with Python and the installed packages)."""
    return user_tables(params.data)


def sources_stage(params: Params) -> StageResult:
    return build_sources(params.data, params.ws.raw)


def curate_inputs(ws: Workspace, params: Params) -> StageInputs:
    """The raw tables, and the base model when the confidence filter scores the training answers with it."""
    return {"raw": ws.raw, "scorer": ws.base_model if params.data.curate.confidence.enabled else None}


def curate_stage(params: Params) -> StageResult:
    inputs = curate_inputs(params.ws, params)
    return curate(inputs["raw"], params.data.curate, params.seed, params.ws.curated, inputs["scorer"])


def validate_inputs(ws: Workspace, params: Params) -> StageInputs:
    return {"curated": ws.curated}


def validate_stage(params: Params) -> StageResult:
    return validate(validate_inputs(params.ws, params)["curated"], params.data.curate, params.ws.validation)


def require_validated(ws: Workspace) -> None:
    """For stages that train or evaluate on curated data: refuse data that has not passed validation."""
    require_valid(ws.validation)
