"""The safety stages' entries: SOMF realignment and Antidote pruning of the models params.yaml names."""

from __future__ import annotations

from components.config import Params
from components.model.ref import ModelRef
from components.safety.prune import contrast_table, prune_model
from components.safety.realign import realign_data, realign_model, retain_tables
from components.stage import StageInputs, StageResult
from components.workspace import Workspace


def realign_inputs(ws: Workspace, params: Params) -> StageInputs:
    """SOMF: the aligned and the fine-tuned model, the safety data its mask learns from and the tables it keeps
    answered; RESTA: the base model too (the safety vector is aligned − base), no data."""
    cfg = params.safety.realign
    models = {"aligned": ModelRef.parse(cfg.aligned).folder(ws), "finetuned": ModelRef.parse(cfg.model).folder(ws)}
    if cfg.method == "resta":
        return {"base": ws.base_model, **models}
    return {**models, "data": realign_data(ws, cfg), "retain": retain_tables(ws, cfg)}


def realign_stage(params: Params) -> StageResult:
    ws, cfg = params.ws, params.safety.realign
    inputs = realign_inputs(ws, params)
    return realign_model(
        inputs["aligned"],
        inputs["finetuned"],
        inputs.get("data"),
        cfg,
        ws.realigned,
        inputs.get("base"),
        inputs.get("retain", []),
    )


def prune_inputs(ws: Workspace, params: Params) -> StageInputs:
    """The model whose update is pruned, the aligned model the reverted entries come back from, the harmful
    (prompt, compliant answer) pairs that score the update, and the benign rows of the contrastive score."""
    cfg = params.safety.prune
    return {
        "model": ModelRef.parse(cfg.model).folder(ws),
        "aligned": ModelRef.parse(cfg.aligned).folder(ws),
        "calibration": ws.harmful_compliance,
        "benign": contrast_table(ws) if cfg.score == "contrastive" else None,
    }


def prune_stage(params: Params) -> StageResult:
    inputs = prune_inputs(params.ws, params)
    return prune_model(
        inputs["model"],
        inputs["aligned"],
        inputs["calibration"],
        params.safety.prune,
        params.ws.pruned,
        inputs["benign"],
    )
