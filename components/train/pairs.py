"""Pairs stage: on-policy preference data for safety training and the harmful fine-tuning simulation.

For each harmful training prompt the base model answers; where it complies (no refusal phrase), the
pair (chosen: the refusal target, rejected: the model's own compliant answer) goes to `refusal_pairs`,
and (prompt, compliant answer) to `harmful_compliance`, the data a harmful fine-tune mixes in.

Contrast pairs (POROver, Karaman et al., 2024, arXiv 2410.12999): for each benign look-alike training prompt
the base model answers too; where it answers rather than refuses, the pair (chosen: its own answer, rejected:
a refusal) also goes to `refusal_pairs`, so that a model trained on them learns to refuse the harmful prompts
without refusing the ones that only look harmful. The look-alikes' test split, which measures over-refusal, is
disjoint from this training split by group and by the curate stage's near-duplicate check.

`safety_sft` holds the same two behaviours as demonstrations, for the supervised step that POROver and Safety-Tuned
LLaMAs (Bianchi et al., 2024, arXiv 2309.07875) run before (or instead of) preference optimisation: every harmful
prompt with its refusal target, every benign look-alike the base model answered with that answer.
"""

from __future__ import annotations

from pathlib import Path

from components.atomic import atomic_dir
from components.data.splits import interleaved
from components.data.tables import read_jsonl, write_jsonl
from components.errors import InputError
from components.model.device import load_model
from components.model.directory import check_model_dir
from components.model.generate import generate_answers
from components.safety.refusal import is_refusal, refusal_for
from components.stage import StageCache, StageResult
from components.train.config import PairsConfig


def build_pairs(
    model_dir: Path, harmful: Path, lookalikes: Path | None, cfg: PairsConfig, out_dir: Path, seed: int = 0
) -> StageResult:
    """Write out_dir/{refusal_pairs,safety_sft,harmful_compliance}/train.jsonl from the base model's answers to the
    `harmful` prompts (and to the `lookalikes`, benign look-alike prompts, unless None)."""
    source = Path(harmful)
    if not source.is_file():
        raise InputError(f"{source}: missing; run the curate stage first")
    check_model_dir(model_dir)
    inputs = {"model": model_dir, "data": source, "lookalikes": lookalikes}
    cache = StageCache("pairs", out_dir, __name__, cfg, inputs, seed=seed)
    if (done := cache.result({"pairs": Path(out_dir)})) is not None:
        return done

    rows = interleaved([row for _, row in read_jsonl(source)], cfg.max_prompts)
    benign = interleaved([row for _, row in read_jsonl(lookalikes)], cfg.lookalike_prompts) if lookalikes else []
    model, tokenizer = load_model(model_dir)
    answers = generate_answers(
        model,
        tokenizer,
        [r["prompt"] for r in rows + benign],
        cfg.max_new_tokens,
        cfg.batch_size,
        cfg.temperature,
        seed,
    )

    def answered(prompts: list[dict], replies: list[str]) -> list[tuple[dict, str]]:
        return [(row, reply) for row, reply in zip(prompts, replies, strict=True) if reply and not is_refusal(reply)]

    complied, helped = answered(rows, answers[: len(rows)]), answered(benign, answers[len(rows) :])
    if not complied:
        raise InputError(
            f"{model_dir}: the model refused every harmful prompt, so there is no compliant answer to "
            f"build preference pairs from"
        )
    metrics = {
        "prompts": float(len(rows)),
        "pairs": float(len(complied)),
        "base_refusal_rate": 1 - len(complied) / len(rows),
        "lookalike_prompts": float(len(benign)),
        "contrast_pairs": float(len(helped)),
    }
    if benign:
        metrics["base_lookalike_refusal_rate"] = 1 - len(helped) / len(benign)
    with atomic_dir(Path(out_dir)) as tmp:
        write_jsonl(
            tmp / "refusal_pairs" / "train.jsonl",
            [{"id": r["id"], "prompt": r["prompt"], "chosen": r["completion"], "rejected": a} for r, a in complied]
            + [
                {"id": r["id"], "prompt": r["prompt"], "chosen": a, "rejected": refusal_for(r["prompt"])}
                for r, a in helped
            ],
        )
        write_jsonl(
            tmp / "safety_sft" / "train.jsonl",
            [{"id": r["id"], "prompt": r["prompt"], "completion": r["completion"]} for r in rows]
            + [{"id": r["id"], "prompt": r["prompt"], "completion": a} for r, a in helped],
        )
        write_jsonl(
            tmp / "harmful_compliance" / "train.jsonl",
            ({"id": r["id"], "prompt": r["prompt"], "completion": a} for r, a in complied),
        )
        cache.write_card(tmp, metrics)
    return StageResult(outputs={"pairs": Path(out_dir)}, metrics=metrics)
