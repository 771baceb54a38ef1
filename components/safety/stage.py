"""The safety stages' entries: SOMF realignment and Antidote pruning of the models params.yaml names."""

from __future__ import annotations

from pathlib import Path

from components.config import Params, RealignConfig
from components.model.ref import ModelRef
from components.safety.prune import prune_model
from components.safety.realign import realign_model
from components.stage import StageResult
from components.workspace import Workspace


def realign_data(ws: Workspace, cfg: RealignConfig) -> Path | None:
    """What SOMF learns its mask from: the preference pairs (concrete_dpo), or the safety demonstrations (refusals of
    harmful prompts and answers to benign look-alikes: refusal_mask); RESTA learns nothing (None)."""
    if cfg.method == "resta":
        return None
    return ws.pair_table("refusal_pairs" if cfg.method == "concrete_dpo" else "safety_sft")


def retain_tables(ws: Workspace, cfg: RealignConfig) -> list[Path]:
    """The train splits of the curated tables the realigned model must keep answering (refusal_mask)."""
    return [ws.split(table, "train") for table in cfg.retain] if cfg.method == "refusal_mask" else []


def realign_stage(params: Params) -> StageResult:
    ws, cfg = params.ws, params.safety.realign
    return realign_model(
        ModelRef.parse(cfg.aligned).folder(ws),
        ModelRef.parse(cfg.model).folder(ws),
        realign_data(ws, cfg),
        cfg,
        ws.realigned,
        ws.base_model,
        retain_tables(ws, cfg),
    )


def prune_stage(params: Params) -> StageResult:
    ws, cfg = params.ws, params.safety.prune
    return prune_model(
        ModelRef.parse(cfg.model).folder(ws),
        ModelRef.parse(cfg.aligned).folder(ws),
        ws.harmful_compliance,
        cfg,
        ws.pruned,
        ws.split("domain_qa", "train"),
    )
