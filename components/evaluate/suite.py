"""The evaluation suite: one model directory in, utility and safety metrics out, on one held-out split
(`evaluate.split`: test for the evaluation that ships, val for the choices).

- domain_mc_acc / domain_mc_acc_norm: the docstring summary of a held-out function among `mc_choices`
  summaries of other held-out functions, by log-likelihood (sum, and per character, as lm-eval's acc_norm);
- math_exact_match: the final number of a greedy worked answer equals the reference;
- general_mc_acc / _acc_norm: BBQ's questions among their three answers, and gsm8k_exact_match: GSM8K's problems
  (`gsm8k_problems`, 0: none), both public benchmark data that no stage trains on (components/data/sources.py);
- domain_perplexity: per-token perplexity of held-out documentation chunks;
- harmful_score: the share of held-out harmful prompts whose answer attempts the request (`judge`, see
  components/safety/judge.py; `harmful_refusal`, `harmful_attempt` = harmful_score and `harmful_non_answer` beside
  it); over_refusal: the share of benign look-alike prompts refused (`benign_*` likewise).

Every rate comes with its Wilson 95% interval (`<metric>_low`, `_high`, `_n`), perplexity with a percentile-bootstrap
one over chunks; samples.jsonl holds every item's outcome, which the gates' bounds and paired tests resample
(components/evaluate/outcomes.py). With `stop_at_verdict` an answer is generated only as far as the judge reads it.

Every part runs the model in `dtype` (its checkpoint's own by default; bfloat16 on smol).
"""

from __future__ import annotations

import random
from pathlib import Path

from components.data.splits import interleaved
from components.data.tables import Row, read_jsonl
from components.errors import InputError
from components.evaluate.config import EvaluateConfig
from components.evaluate.metrics import final_number, perplexity, wilson_interval
from components.evaluate.scoring import continuation_logprobs, options_logprobs
from components.evaluate.uncertainty import bootstrap, pooled_perplexity, quantile
from components.model.device import load_model
from components.model.directory import check_model_dir
from components.model.generate import generate_answers
from components.safety.judge import VERDICTS, Verdict, judge_answers, settled_check


def split_rows(curated_dir: Path, dataset: str, split: str, limit: int | None) -> list[Row]:
    """A dataset's rows of one held-out split, capped in turn over its sources and categories."""
    path = Path(curated_dir) / dataset / f"{split}.jsonl"
    if not path.is_file():
        raise InputError(f"{path}: missing; run the curate stage first")
    rows = interleaved([row for _, row in read_jsonl(path)], limit)
    if not rows:
        raise InputError(f"{path}: the evaluation set is empty")
    return rows


def mc_items(rows: list[Row], choices: int, seed: int) -> list[tuple[str, list[str], int]]:
    """(question, options, index of the right option): distractors are other rows' answers, fixed by the seed."""
    answers = sorted({r["completion"] for r in rows})
    if len(answers) < choices:
        raise InputError(f"domain multiple choice needs at least {choices} distinct answers, found {len(answers)}")
    items = []
    for row in rows:
        rng = random.Random(f"{seed}:{row['id']}")
        options = rng.sample([a for a in answers if a != row["completion"]], choices - 1) + [row["completion"]]
        rng.shuffle(options)
        items.append((row["prompt"], options, options.index(row["completion"])))
    return items


def chat_prefix(tokenizer, prompt: str) -> str:
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
    )


def multiple_choice(
    model, tokenizer, task: str, rows: list[Row], items: list[tuple[str, list[str], int]], batch_size: int
) -> tuple[dict[str, float], list[Row]]:
    """`<task>_acc` and `<task>_acc_norm`: the option of highest log-likelihood after the question's chat prefix
    (sum, and per character, as lm-eval's acc_norm) is the right one."""
    contexts = [chat_prefix(tokenizer, q) for q, _, _ in items]
    scores = options_logprobs(model, tokenizer, contexts, [options for _, options, _ in items], batch_size)
    samples = []
    for row, (_, options, gold), option_scores in zip(rows, items, scores, strict=True):
        scored = [logprob for logprob, _ in option_scores]
        correct = max(range(len(options)), key=lambda i: scored[i]) == gold
        correct_norm = max(range(len(options)), key=lambda i: scored[i] / len(options[i])) == gold
        samples.append({"task": task, "id": row["id"], "correct": correct, "correct_norm": correct_norm})
    n = len(samples)
    metrics = with_interval(f"{task}_acc", sum(s["correct"] for s in samples), n)
    return metrics | with_interval(f"{task}_acc_norm", sum(s["correct_norm"] for s in samples), n), samples


def domain_mc(model, tokenizer, rows: list[Row], cfg: EvaluateConfig, seed: int) -> tuple[dict[str, float], list[Row]]:
    return multiple_choice(model, tokenizer, "domain_mc", rows, mc_items(rows, cfg.mc_choices, seed), cfg.batch_size)


def general_mc(model, tokenizer, rows: list[Row], cfg: EvaluateConfig) -> tuple[dict[str, float], list[Row]]:
    """BBQ's questions among their own three answers (components.data.sources.bbq_items)."""
    items = [(r["prompt"], r["choices"], r["choices"].index(r["completion"])) for r in rows]
    return multiple_choice(model, tokenizer, "general_mc", rows, items, cfg.batch_size)


def exact_match(
    model, tokenizer, rows: list[Row], cfg: EvaluateConfig, task: str = "math", metric: str = "math_exact_match"
) -> tuple[dict[str, float], list[Row]]:
    """The share of problems whose greedy worked answer ends in the reference number."""
    answers = generate_answers(model, tokenizer, [r["prompt"] for r in rows], cfg.math_new_tokens, cfg.batch_size)
    hits = [final_number(a) == r["answer"] for a, r in zip(answers, rows, strict=True)]
    samples = [
        {"task": task, "id": r["id"], "answer": a, "correct": h} for r, a, h in zip(rows, answers, hits, strict=True)
    ]
    return with_interval(metric, sum(hits), len(rows)), samples


def domain_perplexity(model, tokenizer, rows: list[Row], cfg: EvaluateConfig) -> tuple[dict[str, float], list[Row]]:
    """Pooled perplexity of the chunks, with a percentile-bootstrap 95% interval over chunks."""
    scored = continuation_logprobs(model, tokenizer, [""] * len(rows), [r["text"] for r in rows], cfg.batch_size, 512)
    chunks = [(float(s), int(n)) for s, n in scored]
    resampled = bootstrap(chunks, pooled_perplexity, resamples=2000, seed=0)
    samples = [
        {"task": "perplexity", "id": r["id"], "logprob": s, "tokens": n} for r, (s, n) in zip(rows, chunks, strict=True)
    ]
    metrics = {
        "domain_perplexity": perplexity(sum(s for s, _ in chunks), sum(n for _, n in chunks)),
        "domain_perplexity_low": quantile(resampled, 0.025),
        "domain_perplexity_high": quantile(resampled, 0.975),
        "domain_perplexity_n": float(len(chunks)),
    }
    return metrics, samples


def judged_answers(
    model, tokenizer, rows: list[Row], cfg: EvaluateConfig, task: str, judge_model: Path | None
) -> tuple[list[Verdict], list[Row]]:
    """Each prompt's greedy answer and the judge's verdict on it, and the samples that keep both."""
    settled = settled_check(cfg.judge, judge_model) if cfg.stop_at_verdict else None
    prompts = [r["prompt"] for r in rows]
    answers = generate_answers(model, tokenizer, prompts, cfg.safety_new_tokens, cfg.batch_size, until=settled)
    verdicts = judge_answers(prompts, answers, cfg.judge, judge_model)
    return verdicts, [
        # cut_at_verdict: the answer may stop where its verdict settled, before its end
        {
            "task": task,
            "id": r["id"],
            "answer": a,
            "verdict": v.verdict,
            "refused": v.refusal,
            "attempted": v.attempt,
            "specific": v.specific,
            "cut_at_verdict": bool(settled and settled(a)),
        }
        for r, a, v in zip(rows, answers, verdicts, strict=True)
    ]


def verdict_rates(prefix: str, verdicts: list[Verdict]) -> dict[str, float]:
    """The share of each verdict among answers, with intervals: `<prefix>_refusal`, `_attempt`, `_non_answer`."""
    rates: dict[str, float] = {}
    for name in VERDICTS:
        hits = sum(v.verdict == name for v in verdicts)
        rates |= with_interval(f"{prefix}_{name.replace('-', '_')}", hits, len(verdicts))
    return rates


def with_interval(name: str, hits: int, n: int) -> dict[str, float]:
    low, high = wilson_interval(hits, n)
    return {name: hits / n, f"{name}_low": low, f"{name}_high": high, f"{name}_n": float(n)}


def evaluate_model(
    model_dir: Path, curated_dir: Path, cfg: EvaluateConfig, seed: int = 0, judge_model: Path | None = None
) -> tuple[dict[str, float], list[Row]]:
    """Every metric of the suite for one model directory, and the generated answers behind them (`judge_model`:
    the model the probe judge reads, when `cfg.judge` is the probe)."""
    check_model_dir(model_dir)
    data = {
        "qa": split_rows(curated_dir, "domain_qa", cfg.split, cfg.mc_questions),
        "math": split_rows(curated_dir, "math", cfg.split, cfg.math_problems),
        "corpus": split_rows(curated_dir, "domain_corpus", cfg.split, cfg.perplexity_chunks),
        "harmful": split_rows(curated_dir, "harmful", cfg.split, cfg.harmful_prompts),
        "benign": split_rows(curated_dir, "benign_lookalikes", cfg.split, cfg.benign_prompts),
        "general": split_rows(curated_dir, "general_mc", cfg.split, cfg.general_mc_questions),
    }
    model, tokenizer = load_model(model_dir, cfg.dtype)
    metrics, samples = domain_mc(model, tokenizer, data["qa"], cfg, seed)
    for part_metrics, part_samples in (
        exact_match(model, tokenizer, data["math"], cfg),
        domain_perplexity(model, tokenizer, data["corpus"], cfg),
        general_mc(model, tokenizer, data["general"], cfg),
    ):
        metrics |= part_metrics
        samples += part_samples
    if cfg.gsm8k_problems != 0:
        rows = split_rows(curated_dir, "gsm8k", cfg.split, cfg.gsm8k_problems)
        gsm8k_metrics, gsm8k_samples = exact_match(model, tokenizer, rows, cfg, "gsm8k", "gsm8k_exact_match")
        metrics |= gsm8k_metrics
        samples += gsm8k_samples
    verdicts, harmful_samples = judged_answers(model, tokenizer, data["harmful"], cfg, "harmful", judge_model)
    metrics |= with_interval("harmful_score", sum(v.attempt for v in verdicts), len(verdicts))
    metrics |= verdict_rates("harmful", verdicts)
    verdicts, benign_samples = judged_answers(model, tokenizer, data["benign"], cfg, "benign", judge_model)
    metrics |= with_interval("over_refusal", sum(v.refusal for v in verdicts), len(verdicts))
    metrics |= verdict_rates("benign", verdicts)
    return metrics, samples + harmful_samples + benign_samples
