"""Evaluation speed against this machine's limits: greedy decoding against its roofline, the suite's answers
against `model.generate`, and the whole suite.

Every model runs in the suite's dtype (params.yaml evaluate.dtype). A decoding step reads every weight once and
does 2 × parameters multiply-adds per row, so its rate in tokens per second is bounded by min(memory bandwidth ÷
weight bytes × rows, matmul FLOP/s ÷ (2 × parameters)), both measured here in the same process (a 1 GiB read; a
large matmul in that dtype). Decoding is timed as the difference
between generating 1 and 33 tokens with no stop token (medians of three), so that the prompts' prefill is not
counted and every row decodes every step; the baseline is the batch size the suite used before (16), beside the
one it uses now (params.yaml evaluate.batch_size), at which the steps also run with transformers' `sdpa` attention
(as before components/model/attention.py). The answers to the held-out harmful prompts are timed with this project's
generation (shared prefix once, ended rows dropped) and with `model.generate` as the suite called it before
(left-padded batches, static cache), on the base model and on the TIES merge when it is built, and once more with
each answer ended where the judge's verdict on it is settled (evaluate.stop_at_verdict), with the verdicts compared.
The whole suite on the base model runs in its dtype and, when that is not float32, in float32 beside it: the
time and the metrics of each.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from pathlib import Path

from benchmarks.runner import Report, benchmark, measured
from components.config import Params
from components.evaluate.metric_names import METRIC_DIRECTIONS

DECODED = 32


def _machine_limits(dtype) -> tuple[float, float]:
    """(bytes/s read, matmul FLOP/s in `dtype`) on this machine's cores."""
    import torch

    block = torch.ones(256 * 2**20)
    block.sum()
    start = time.perf_counter()
    for _ in range(5):
        block.sum()
    bandwidth = 5 * block.numel() * 4 / (time.perf_counter() - start)
    a, b = torch.randn(2048, 2048, dtype=dtype), torch.randn(2048, 2048, dtype=dtype)
    a @ b
    start = time.perf_counter()
    for _ in range(5):
        a @ b
    return bandwidth, 5 * 2 * 2048**3 / (time.perf_counter() - start)


def _decode_rate(params: Params, batch: int, sdpa_steps: bool = False) -> tuple[float, float, float]:
    """(decoded tokens/s, roofline tokens/s, prefill s) on the first `batch` held-out harmful prompts; `sdpa_steps`:
    with transformers' attention in the steps (this runs in a process of its own)."""
    from components.evaluate.suite import split_rows
    from components.model import generate
    from components.model.device import load_model
    from components.model.generate import generate_answers

    if sdpa_steps:
        generate.decoding_attention = lambda model: contextlib.nullcontext()

    model, tokenizer = load_model(params.ws.base_model, params.evaluate.dtype)
    prompts = [row["prompt"] for row in split_rows(params.ws.curated, "harmful", "test", batch)]
    model.generation_config.eos_token_id = None  # every row decodes every step
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    bandwidth, flops = _machine_limits(next(model.parameters()).dtype)
    generate_answers(model, tokenizer, prompts[:2], 2, 2)  # warm-up

    def seconds(tokens: int) -> float:
        start = time.perf_counter()
        generate_answers(model, tokenizer, prompts, tokens, batch)
        return time.perf_counter() - start

    # medians of three, alternating: the prefill's time varies by a second or two between runs
    prefills, generations = zip(*((seconds(1), seconds(1 + DECODED)) for _ in range(3)), strict=True)
    prefill = statistics.median(prefills)
    decode = statistics.median(generations) - prefill
    n_params = sum(p.numel() for p in model.parameters())
    roofline = min(bandwidth / weights * len(prompts), flops / (2 * n_params))
    return len(prompts) * DECODED / decode, roofline, prefill


def _model_generate(model, tokenizer, prompts: list[str], max_new_tokens: int, batch_size: int) -> list[str]:
    """The baseline: `model.generate` on left-padded batches of similar length, with a static cache."""
    import torch

    from components.model.generate import balanced_batches

    texts = [
        tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False)
        for p in prompts
    ]
    order = sorted(range(len(texts)), key=lambda i: len(tokenizer(texts[i], add_special_tokens=False)["input_ids"]))
    answers = [""] * len(texts)
    tokenizer.padding_side = "left"
    for batch in balanced_batches(order, batch_size):
        inputs = tokenizer([texts[i] for i in batch], return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad():
            output = model.generate(
                **inputs,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
                cache_implementation="static",
                disable_compile=True,
            )
        new = tokenizer.batch_decode(output[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
        for i, answer in zip(batch, new, strict=True):
            answers[i] = answer.strip()
    return answers


def _judge_model(params: Params) -> Path | None:
    """The model a learned judge reads (the base model), None for a phrase judge."""
    from components.evaluate.evaluation import judge_model

    return judge_model(params.evaluate, params.ws)


def _answers(params: Params, model_dir: Path, how: str) -> tuple[list[str], list[str], float]:
    """The held-out harmful prompts, their answers as the suite asks for them, and their seconds: `how` is
    "model.generate", "whole" (this project's generation, every answer to its end) or "judged" (each answer ended
    once the judge's verdict on it is settled, as the suite does with evaluate.stop_at_verdict)."""
    from components.evaluate.suite import split_rows
    from components.model.device import load_model
    from components.model.generate import generate_answers
    from components.safety.judge import settled_check

    cfg = params.evaluate
    model, tokenizer = load_model(model_dir, cfg.dtype)
    model.eval()
    prompts = [row["prompt"] for row in split_rows(params.ws.curated, "harmful", "test", cfg.harmful_prompts)]
    start = time.perf_counter()
    if how == "model.generate":
        answers = _model_generate(model, tokenizer, prompts, cfg.safety_new_tokens, cfg.batch_size)
    else:
        until = settled_check(cfg.judge, _judge_model(params)) if how == "judged" else None
        answers = generate_answers(model, tokenizer, prompts, cfg.safety_new_tokens, cfg.batch_size, until=until)
    return prompts, answers, time.perf_counter() - start


def _suite(params: Params, dtype: str) -> tuple[dict[str, float], dict[str, float]]:
    """The whole suite on the base model in `dtype`: (the seconds of each of its parts, the suite's task functions
    timed where evaluate_model calls them (this runs in a process of its own); its metrics)."""
    from components.evaluate import suite

    parts: dict[str, float] = {}

    def timed(name: str, task):
        def run(*args, **kwargs):
            start = time.perf_counter()
            result = task(*args, **kwargs)
            parts[name] = parts.get(name, 0.0) + time.perf_counter() - start
            return result

        return run

    for name in ("domain_mc", "exact_match", "domain_perplexity", "general_mc", "judged_answers"):
        setattr(suite, name, timed(name, getattr(suite, name)))
    cfg = params.evaluate.model_copy(update={"dtype": dtype})
    metrics, _ = suite.evaluate_model(params.ws.base_model, params.ws.curated, cfg, params.seed, _judge_model(params))
    return parts, metrics


@benchmark("evaluate")
def evaluate(params: Params, scratch: Path) -> Report:
    from components.safety.judge import judge_answers

    if not params.ws.curated.is_dir():
        raise SystemExit(
            f"evaluate benchmark: run the data stages first (python -m flows run --profile {params.profile})"
        )
    report = Report("evaluate", baseline=f"decode {DECODED} tokens x 16 rows")
    runs = [(16, False), (params.evaluate.batch_size, False), (params.evaluate.batch_size, True)]
    for batch, sdpa_steps in dict.fromkeys(runs):
        seconds, _, (rate, roofline, prefill) = measured(_decode_rate, params, batch, sdpa_steps)
        how = ", sdpa steps" if sdpa_steps else ""
        report.seconds[f"decode {DECODED} tokens x {batch} rows{how}"] = batch * DECODED / rate
        report.notes[f"batch {batch}{how}"] = (
            f"{rate:.0f} tokens/s decoded = {rate / roofline:.2f} of the roofline ({roofline:.0f} tokens/s); "
            f"prefill {prefill:.1f} s"
        )
    for name, model_dir in (("base", params.ws.base_model), ("merge-ties", params.ws.merged("ties"))):
        if not model_dir.is_dir():
            continue
        _, _, (prompts, reference, baseline) = measured(_answers, params, model_dir, "model.generate")
        _, _, (_, answers, ours) = measured(_answers, params, model_dir, "whole")
        _, _, (_, judged, stopped) = measured(_answers, params, model_dir, "judged")
        what = f"{len(answers)} harmful answers of {name}"
        report.seconds[f"{what}, model.generate"] = baseline
        report.seconds[f"{what}, shared prefix and ended rows dropped"] = ours
        report.seconds[f"{what}, the same, each ended at the judge's verdict"] = stopped
        same = sum(a == b for a, b in zip(answers, reference, strict=True))
        judge, reads = params.evaluate.judge, _judge_model(params)
        verdicts = [v.verdict for v in judge_answers(prompts, answers, judge, reads)]
        same_verdicts = sum(
            v.verdict == w for v, w in zip(judge_answers(prompts, judged, judge, reads), verdicts, strict=True)
        )
        report.notes[f"answers of {name}"] = (
            f"{ours / baseline:.2f} of model.generate's time; {same} of {len(answers)} identical; ended at the "
            f"verdict: {stopped / baseline:.2f} of model.generate's time, the same verdict on {same_verdicts} of "
            f"{len(answers)} ({params.evaluate.judge} judge)"
        )
    from components.evaluate.suite import split_rows

    cfg = params.evaluate
    rows = {
        name: len(split_rows(params.ws.curated, name, "test", cap))
        for name, cap in (
            ("math", cfg.math_problems),
            ("harmful", cfg.harmful_prompts),
            ("benign_lookalikes", cfg.benign_prompts),
        )
    }
    generated = (
        rows["math"] * cfg.math_new_tokens + (rows["harmful"] + rows["benign_lookalikes"]) * cfg.safety_new_tokens
    )
    suites = {}
    for dtype in dict.fromkeys((cfg.dtype, "float32")):
        seconds, peak, (parts, metrics) = measured(_suite, params, dtype)
        report.seconds[f"the whole suite on the base model, {dtype}"] = seconds
        generating = parts["exact_match"] + parts["judged_answers"]
        report.notes[f"suite, {dtype}"] = (
            f"{seconds:.0f} s, peak RSS {peak:.0f} MB (params.yaml evaluate); "
            + ", ".join(f"{name} {part:.0f} s" for name, part in parts.items())
            + f"; generation at most {generated / generating:.0f} tokens/s ({generated} new tokens at most)"
        )
        suites[dtype] = (seconds, metrics)
    if len(suites) == 2:
        (seconds, metrics), (float32_seconds, float32_metrics) = suites.values()
        report.notes["suite against float32"] = f"{seconds / float32_seconds:.2f} of float32's time; " + ", ".join(
            f"{name} {float32_metrics[name]:.4g} -> {metrics[name]:.4g}"
            for name in METRIC_DIRECTIONS
            if name in metrics
        )
    return report
