"""Prune stage: Antidote on a model directory, calibrated on harmful (prompt, compliant answer) pairs."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from components.config import PruneConfig
from components.data.tables import read_jsonl
from components.errors import InputError
from components.model.directory import check_model_dir, save_model_dir
from components.safety.antidote import antidote_prune
from components.stage import StageCache, StageResult


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
    model_dir: Path, calibration: Path, cfg: PruneConfig, out_dir: Path, utility_calibration: Path | None = None
) -> StageResult:
    """Write `model_dir` with Antidote's harmful weights zeroed to `out_dir`, with a card of what changed.

    `utility_calibration` (prompt, completion rows of a benign task) is read when `cfg.keep_utility_top` > 0.
    """
    check_model_dir(model_dir)
    rows = calibration_rows(calibration, cfg.calibration_rows, "harmful", "run the pairs stage first")
    utility_rows = (
        calibration_rows(utility_calibration, cfg.calibration_rows, "utility", "run the curate stage first")
        if cfg.keep_utility_top
        else []
    )
    cache = StageCache(
        "prune",
        out_dir,
        __name__,
        cfg,
        {"model": model_dir, "calibration": calibration, "utility": utility_calibration if utility_rows else None},
    )
    if (done := cache.result({"model": Path(out_dir)})) is not None:
        return done
    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True)
    pruned = antidote_prune(
        model,
        calibration_batches(tokenizer, rows, cfg),
        cfg.ratio,
        calibration_batches(tokenizer, utility_rows, cfg) if utility_rows else None,
        cfg.keep_utility_top,
    )
    total = sum(module.weight.numel() for name, module in model.named_modules() if name in pruned)
    metrics = {
        "pruned_weights": float(sum(pruned.values())),
        "pruned_share": sum(pruned.values()) / total,
        "calibration_rows": float(len(rows)),
    }
    card = {
        "method": "antidote (Wanda score on harmful data)",
        "source": str(model_dir),
        "ratio": cfg.ratio,
        "keep_utility_top": cfg.keep_utility_top,
        "pruned_per_layer": pruned,
    }
    return save_model_dir(Path(out_dir), model, tokenizer, "prune_card.json", card, cache, metrics)
