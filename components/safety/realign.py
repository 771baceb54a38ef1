"""Realign stage: SOMF on a fine-tuned or merged model, with the initially aligned model and refusal data."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from components.config import RealignConfig
from components.data.tables import read_jsonl
from components.errors import InputError
from components.merge.engine import check_compatible
from components.model.directory import check_model_dir, save_model_dir
from components.safety.somf import fuse, learn_safety_mask
from components.stage import StageCache, StageResult


def refusal_batches(tokenizer, rows: list[dict], batch_size: int, max_length: int) -> list[dict[str, torch.Tensor]]:
    """Harmful prompt -> refusal sequences with labels on the refusal tokens only (-100 on prompt and padding)."""
    batches = []
    for start in range(0, len(rows), batch_size):
        sequences, labels = [], []
        for row in rows[start : start + batch_size]:
            prompt = tokenizer.apply_chat_template(
                [{"role": "user", "content": row["prompt"]}], add_generation_prompt=True, tokenize=False
            )
            prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
            answer_ids = tokenizer(row["completion"] + tokenizer.eos_token, add_special_tokens=False)["input_ids"]
            ids = (prompt_ids + answer_ids)[:max_length]
            sequences.append(ids)
            labels.append(([-100] * len(prompt_ids) + answer_ids)[:max_length])
        width = max(len(s) for s in sequences)
        batches.append(
            {
                "input_ids": torch.tensor([s + [tokenizer.pad_token_id] * (width - len(s)) for s in sequences]),
                "attention_mask": torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in sequences]),
                "labels": torch.tensor([lab + [-100] * (width - len(lab)) for lab in labels]),
            }
        )
    return batches


def realign_model(
    aligned_dir: Path, finetuned_dir: Path, safety_data: Path, cfg: RealignConfig, out_dir: Path
) -> StageResult:
    """Write SOMF's fusion of `finetuned_dir` with `aligned_dir` to `out_dir`, with a card of the mask's size."""
    for path in (aligned_dir, finetuned_dir):
        check_model_dir(path)
    rows = [row for _, row in read_jsonl(safety_data)][: cfg.safety_rows] if Path(safety_data).is_file() else []
    if not rows:
        raise InputError(f"{safety_data}: no safety rows (harmful prompts with refusals) to learn the mask from")
    if not any(r.get("completion") for r in rows):
        raise InputError(f"{safety_data}: no refusal completions to learn from")
    check_compatible(Path(aligned_dir), [Path(finetuned_dir)], max_relative_delta=cfg.max_relative_delta)
    cache = StageCache(
        "realign", out_dir, __name__, cfg, {"aligned": aligned_dir, "finetuned": finetuned_dir, "data": safety_data}
    )
    if (done := cache.result({"model": Path(out_dir)})) is not None:
        return done

    tokenizer = AutoTokenizer.from_pretrained(finetuned_dir, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(finetuned_dir, local_files_only=True)
    finetuned = {n: t.detach() for n, t in model.state_dict().items()}
    aligned = {
        n: t.detach()
        for n, t in AutoModelForCausalLM.from_pretrained(aligned_dir, local_files_only=True).state_dict().items()
    }
    masks = learn_safety_mask(
        model,
        aligned,
        finetuned,
        refusal_batches(tokenizer, rows, cfg.batch_size, cfg.max_length),
        cfg.steps,
        cfg.lr,
        cfg.sparsity,
        cfg.init_logit,
    )
    # only the masked tensors change; a tied tensor is written once, through its first name
    model.load_state_dict({n: fuse(aligned[n], finetuned[n], masks[n]) for n in masks}, strict=False)
    masked = {n: int(m.sum()) for n, m in masks.items()}
    differing = sum(m.numel() for m in masks.values())
    metrics = {
        "masked_weights": float(sum(masked.values())),
        "masked_share": sum(masked.values()) / differing if differing else 0.0,
        "differing_weights": float(differing),
    }
    card = {
        "method": "SOMF (mask learned on refusal data, fusion with the aligned model)",
        "aligned": str(aligned_dir),
        "finetuned": str(finetuned_dir),
        "config": cfg.model_dump(mode="json"),
        "masked_per_tensor": masked,
    }
    return save_model_dir(Path(out_dir), model, tokenizer, "realign_card.json", card, cache, metrics)
