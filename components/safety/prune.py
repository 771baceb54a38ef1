"""Prune stage: Antidote on a model directory and the aligned model it drifted from, calibrated on harmful
(prompt, compliant answer) pairs."""

from __future__ import annotations

from pathlib import Path

import torch

from components.data.tables import read_jsonl
from components.errors import InputError
from components.model.compat import check_compatible
from components.model.device import load_model, load_weights
from components.model.directory import check_model_dir, save_model_dir
from components.safety.antidote import antidote_revert
from components.safety.config import PruneConfig
from components.stage import StageCache, StageResult
from components.workspace import Workspace


def calibration_batches(tokenizer, rows: list[dict], cfg: PruneConfig) -> list[dict[str, torch.Tensor]]:
    """Chat-formatted (harmful prompt, compliant answer) sequences, right-padded, in batches."""
    texts = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": r["completion"]}],
            tokenize=False,
        )
        for r in rows
    ]
    return [
        dict(
            tokenizer(
                texts[i : i + cfg.batch_size],
                return_tensors="pt",
                padding=True,
                truncation=True,
                max_length=cfg.max_length,
                add_special_tokens=False,
            )
        )
        for i in range(0, len(texts), cfg.batch_size)
    ]


def calibration_rows(path: Path, limit: int, what: str, hint: str) -> list[dict]:
    if not Path(path).is_file():
        raise InputError(f"{path}: missing; {hint}")
    rows = [row for _, row in read_jsonl(path)][:limit]
    if not rows:
        raise InputError(f"{path}: the {what} calibration set is empty")
    return rows


def prune_model(
    model_dir: Path,
    aligned_dir: Path,
    calibration: Path,
    cfg: PruneConfig,
    out_dir: Path,
    benign_calibration: Path | None = None,
) -> StageResult:
    """Write `model_dir` with Antidote's harmful update entries reverted to `aligned_dir`'s weights to `out_dir`,
    with a card of what changed. `benign_calibration` (prompt, completion rows of a benign task) is read for
    the contrastive score."""
    for path in (model_dir, aligned_dir):
        check_model_dir(path)
    rows = calibration_rows(calibration, cfg.calibration_rows, "harmful", "run the pairs stage first")
    contrastive = cfg.score == "contrastive"
    benign_rows = (
        calibration_rows(benign_calibration, cfg.calibration_rows, "benign", "run the curate stage first")
        if contrastive
        else []
    )
    check_compatible(Path(aligned_dir), [Path(model_dir)], max_relative_delta=cfg.max_relative_delta)
    cache = StageCache(
        "prune",
        out_dir,
        __name__,
        cfg,
        {
            "model": model_dir,
            "aligned": aligned_dir,
            "calibration": calibration,
            "benign": benign_calibration if contrastive else None,
        },
    )
    if (done := cache.result({"model": Path(out_dir)})) is not None:
        return done
    model, tokenizer = load_model(model_dir)
    aligned = load_weights(aligned_dir)
    reverted = antidote_revert(
        model,
        aligned,
        calibration_batches(tokenizer, rows, cfg),
        cfg.ratio,
        calibration_batches(tokenizer, benign_rows, cfg) if contrastive else None,
    )
    total = sum(module.weight.numel() for name, module in model.named_modules() if name in reverted)
    metrics = {
        "reverted_weights": float(sum(reverted.values())),
        "reverted_share": sum(reverted.values()) / total,
        "calibration_rows": float(len(rows)),
    }
    card = {
        "method": f"antidote (the update's entries by Wanda score, {cfg.score}, reverted to the aligned model)",
        "source": str(model_dir),
        "aligned": str(aligned_dir),
        "ratio": cfg.ratio,
        "score": cfg.score,
        "reverted_per_layer": reverted,
    }
    return save_model_dir(Path(out_dir), model, tokenizer, "prune_card.json", card, cache, metrics)


def contrast_table(ws: Workspace) -> Path:
    """Benign (prompt, completion) rows whose importance Antidote's contrastive score subtracts: the domain Q/A."""
    return ws.split("domain_qa", "train")
