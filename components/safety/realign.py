"""Realign stage: SOMF on a fine-tuned or merged model, with the initially aligned model and safety data; or RESTA,
which adds the aligned model's safety vector and needs the base model instead of data."""

from __future__ import annotations

from pathlib import Path

import torch

from components.data.tables import read_jsonl
from components.errors import InputError
from components.hashing import json_sha256
from components.model.compat import check_compatible
from components.model.device import load_model, load_weights
from components.model.directory import check_model_dir, save_model_dir
from components.safety.config import RealignConfig
from components.safety.resta import restore_safety
from components.safety.somf import concrete_fusion, fuse, learn_concrete_mask, learn_safety_mask
from components.stage import StageCache, StageResult
from components.workspace import Workspace


def completion_batches(
    tokenizer, rows: list[dict], answer: str, batch_size: int, max_length: int
) -> list[dict[str, torch.Tensor]]:
    """Prompt -> row[answer] sequences with labels on the answer tokens only (-100 on prompt and padding)."""
    batches = []
    for start in range(0, len(rows), batch_size):
        sequences, labels = [], []
        for row in rows[start : start + batch_size]:
            prompt = tokenizer.apply_chat_template(
                [{"role": "user", "content": row["prompt"]}], add_generation_prompt=True, tokenize=False
            )
            prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
            answer_ids = tokenizer(row[answer] + tokenizer.eos_token, add_special_tokens=False)["input_ids"]
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
    aligned_dir: Path,
    finetuned_dir: Path,
    safety_data: Path | None,
    cfg: RealignConfig,
    out_dir: Path,
    base_dir: Path | None = None,
    retain_data: list[Path] = (),
) -> StageResult:
    """Write SOMF's fusion of `finetuned_dir` with `aligned_dir` to `out_dir`, with a card of the mask's size
    (RESTA: `finetuned_dir` plus the safety vector `aligned_dir` − `base_dir`; no safety data). `retain_data`:
    prompt -> completion tables the refusal_mask's loss also keeps answered."""
    if cfg.method == "resta":
        if base_dir is None:
            raise InputError("safety.realign.method resta adds aligned − base: the base model's folder is needed")
        return restore_model(aligned_dir, finetuned_dir, base_dir, cfg, out_dir)
    retained = [Path(path) for path in retain_data]
    cache = realign_cache(
        {"aligned": aligned_dir, "finetuned": finetuned_dir}, {"data": safety_data, "retain": retained}, cfg, out_dir
    )
    rows = safety_rows(safety_data, cfg)
    retain = [row for path in retained for row in first_rows(path, cfg.retain_rows, ("completion",))]
    if (done := cache.result({"model": Path(out_dir)})) is not None:
        return done

    model, tokenizer = load_model(finetuned_dir)
    finetuned = {n: t.detach() for n, t in model.state_dict().items()}
    # only the tensors that differ are kept, copied out of the checkpoint's memory map: the pages of the others (the
    # embeddings, which fine-tuning with LoRA leaves alone), read once to compare, leave with the map instead of
    # staying resident beside it (the stage's peak: docs/measurements.md)
    aligned = {n: t.clone() for n, t in load_weights(aligned_dir).items() if not torch.equal(t, finetuned[n])}
    if cfg.method == "concrete_dpo":
        chosen = completion_batches(tokenizer, rows, "chosen", cfg.batch_size, cfg.max_length)
        rejected = completion_batches(tokenizer, rows, "rejected", cfg.batch_size, cfg.max_length)
        kept = learn_concrete_mask(
            model,
            aligned,
            finetuned,
            list(zip(chosen, rejected, strict=True)),
            cfg.steps,
            cfg.lr,
            cfg.temperature,
            cfg.init_logit,
            cfg.beta,
            cfg.rescale,
        )
        fused = {n: concrete_fusion(aligned[n], finetuned[n] - aligned[n], kept[n], cfg.rescale) for n in kept}
        back = {n: ~m for n, m in kept.items()}  # what the fusion takes from the aligned model
    else:
        back = learn_safety_mask(
            model,
            aligned,
            finetuned,
            completion_batches(tokenizer, rows, "completion", cfg.batch_size, cfg.max_length),
            cfg.steps,
            cfg.lr,
            cfg.sparsity,
            cfg.init_logit,
            completion_batches(tokenizer, sorted(retain, key=row_order), "completion", cfg.batch_size, cfg.max_length),
        )
        fused = {n: fuse(aligned[n], finetuned[n], back[n]) for n in back}
    # only the masked tensors change; a tied tensor is written once, through its first name
    model.load_state_dict(fused, strict=False)
    masked = {n: int(m.sum()) for n, m in back.items()}
    differing = sum(m.numel() for m in back.values())
    metrics = {
        "masked_weights": float(sum(masked.values())),
        "masked_share": sum(masked.values()) / differing if differing else 0.0,
        "differing_weights": float(differing),
    }
    card = {
        "method": f"SOMF, {cfg.method} (components/safety/somf.py)",
        "aligned": str(aligned_dir),
        "finetuned": str(finetuned_dir),
        "config": cfg.model_dump(mode="json"),
        "masked_per_tensor": masked,  # coordinates taken back from the aligned model
    }
    return save_model_dir(Path(out_dir), model, tokenizer, "realign_card.json", card, cache, metrics)


def realign_cache(models: dict[str, Path], data: dict[str, Path], cfg: RealignConfig, out_dir: Path) -> StageCache:
    """The realign stage's cache over its models and data, once the models are checked: each a model directory, and
    all with the first one's architecture, tensors and tokenizer, close enough to it to share its base."""
    for path in models.values():
        check_model_dir(path)
    first, *others = [Path(path) for path in models.values()]
    check_compatible(first, others, max_relative_delta=cfg.max_relative_delta)
    return StageCache("realign", out_dir, __name__, cfg, {**models, **data})


def restore_model(aligned_dir: Path, finetuned_dir: Path, base_dir: Path, cfg: RealignConfig, out_dir: Path):
    """RESTA: θ* = θ_ft + λ·(θ_aligned − θ_base) on every tensor where the aligned model differs from its base."""
    models = {"base": base_dir, "aligned": aligned_dir, "finetuned": finetuned_dir}
    cache = realign_cache(models, {}, cfg, out_dir)
    if (done := cache.result({"model": Path(out_dir)})) is not None:
        return done
    model, tokenizer = load_model(finetuned_dir)
    finetuned = dict(model.named_parameters())  # a tied tensor (embeddings / LM head) once
    aligned, base = load_weights(aligned_dir), load_weights(base_dir)
    moved = [n for n in finetuned if not torch.equal(aligned[n], base[n])]
    restored = {n: restore_safety(finetuned[n].detach(), aligned[n], base[n], cfg.scale) for n in moved}
    model.load_state_dict(restored, strict=False)
    total = sum(t.numel() for t in finetuned.values())
    metrics = {
        "safety_vector_tensors": float(len(moved)),
        "safety_vector_share": sum(finetuned[n].numel() for n in moved) / total,
        "safety_vector_norm": float(torch.sqrt(sum(((aligned[n] - base[n]).float() ** 2).sum() for n in moved))),
    }
    card = {
        "method": "RESTA (components/safety/resta.py)",
        "aligned": str(aligned_dir),
        "finetuned": str(finetuned_dir),
        "base": str(base_dir),
        "config": cfg.model_dump(mode="json"),
    }
    return save_model_dir(Path(out_dir), model, tokenizer, "realign_card.json", card, cache, metrics)


def row_order(row: dict) -> str:
    """An order fixed by the rows' ids that mixes their kinds (a harmful prompt's refusal, a look-alike's answer)."""
    return json_sha256(str(row.get("id")))


def first_rows(path: Path, count: int, needed: tuple[str, ...]) -> list[dict]:
    """At most `count` rows of a table in `row_order`, each with a prompt and the `needed` keys."""
    rows = sorted((row for _, row in read_jsonl(path)) if Path(path).is_file() else [], key=row_order)[:count]
    if not rows:
        raise InputError(f"{path}: no rows to learn the mask from")
    for row in rows:
        missing = [key for key in ("prompt", *needed) if not row.get(key)]
        if missing:
            raise InputError(f"{path}: row {row.get('id')!r} has no {', '.join(missing)}: SOMF learns from them")
    return rows


def safety_rows(path: Path, cfg: RealignConfig) -> list[dict]:
    """The rows the mask learns from: demonstrations (refusal_mask) or preference pairs (concrete_dpo), at most
    `safety_rows`."""
    return first_rows(
        path, cfg.safety_rows, ("chosen", "rejected") if cfg.method == "concrete_dpo" else ("completion",)
    )


def realign_data(ws: Workspace, cfg: RealignConfig) -> Path | None:
    """What SOMF learns its mask from: the preference pairs (concrete_dpo), or the safety demonstrations (refusals of
    harmful prompts and answers to benign look-alikes: refusal_mask); RESTA learns nothing (None)."""
    if cfg.method == "resta":
        return None
    return ws.pair_table("refusal_pairs" if cfg.method == "concrete_dpo" else "safety_sft")


def retain_tables(ws: Workspace, cfg: RealignConfig) -> list[Path]:
    """The train splits of the curated tables the realigned model must keep answering (refusal_mask)."""
    return [ws.split(table, "train") for table in cfg.retain] if cfg.method == "refusal_mask" else []
