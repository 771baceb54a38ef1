import base64
import contextlib
import json
import logging
import math
import re
import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from components.errors import InputError
from components.evaluate.config import EvaluateConfig
from components.evaluate.evaluation import evaluate_candidates
from components.evaluate.metric_names import METRIC_DIRECTIONS
from components.evaluate.metrics import final_number, perplexity, wilson_interval
from components.evaluate.outcomes import item_outcomes
from components.evaluate.plots import layer_norms, loss_curve, pareto_front
from components.evaluate.report import (
    LOSS_CURVES,
    LOSS_DATA,
    REPORT_MD,
    SAFETY_VS_UTILITY,
    TASK_VECTOR_LAYERS,
    draw_report,
    inline_images,
)
from components.evaluate.scoring import (
    SCORED_POSITIONS_PER_BATCH,
    batches_by_length,
    continuation_logprobs,
    options_logprobs,
)
from components.evaluate.suite import mc_items
from components.model.attention import single_query_attention
from components.model.generate import balanced_batches, generate_answers, shared_prefix
from components.safety.judge import VERDICTS
from components.safety.refusal import is_refusal
from tests.data_helpers import read


def test_wilson_interval_by_hand():
    # 5 of 10: centre 0.5, half-width 1.96 * sqrt(0.025 + 0.009604) / 1.38416 = 0.26341
    low, high = wilson_interval(5, 10)
    assert (round(low, 4), round(high, 4)) == (0.2366, 0.7634)
    # 0 of 10: the interval is not [0, 0] as the normal approximation would say
    assert wilson_interval(0, 10) == (0.0, pytest.approx(0.27754, abs=1e-5))
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_final_number_follows_the_gsm8k_marker_else_the_last_number():
    assert final_number("3 + 4 = 7 so 7 * 2 = 14.\n#### 14") == "14"
    assert final_number("#### 7 apples, not 8") == "7"
    assert final_number("It costs 12 dollars, so the answer is 1,234.") == "1234"
    assert final_number("She has 2.0 left") == "2"
    assert final_number("no digits here") is None


def test_perplexity_of_uniform_four_way_guesses_is_four():
    assert perplexity(3 * math.log(0.25), 3) == pytest.approx(4.0)


def test_refusal_phrases():
    assert is_refusal("I'm sorry, but I can't help with that.")
    assert is_refusal("Sure. Actually, I cannot do this.")
    assert not is_refusal("Sure, here is how to kill a Python process: use kill -9 PID.")


def test_continuation_logprobs_match_a_direct_computation_and_ignore_padding(tiny_base: Path):
    model, tokenizer = AutoModelForCausalLM.from_pretrained(tiny_base), AutoTokenizer.from_pretrained(tiny_base)
    contexts, continuations = (
        ["The capital of France is", "A much longer context about many things:", ""],
        [" Paris.", " yes", "Only a continuation"],
    )
    batched = continuation_logprobs(model, tokenizer, contexts, continuations, batch_size=3)
    single = [
        continuation_logprobs(model, tokenizer, [c], [x], batch_size=1)[0]
        for c, x in zip(contexts, continuations, strict=True)
    ]
    for (a, n), (b, m) in zip(batched, single, strict=True):
        assert n == m and a == pytest.approx(b, abs=1e-4)

    context_ids = tokenizer(contexts[0], add_special_tokens=False)["input_ids"]
    continuation_ids = tokenizer(continuations[0], add_special_tokens=False)["input_ids"]
    ids = torch.tensor([context_ids + continuation_ids])
    with torch.no_grad():
        logprobs = torch.log_softmax(model(input_ids=ids).logits[0], dim=-1)
    expected = sum(float(logprobs[len(context_ids) + i - 1, t]) for i, t in enumerate(continuation_ids))
    assert batched[0] == (pytest.approx(expected, abs=1e-4), len(continuation_ids))
    assert batched[2][1] == len(tokenizer("Only a continuation", add_special_tokens=False)["input_ids"]) - 1


def test_multiple_choice_items_hold_the_right_answer_once_among_distinct_options():
    rows = [{"id": f"r{i}", "prompt": f"q{i}", "completion": f"answer {i}"} for i in range(6)]
    items = mc_items(rows, 4, seed=0)
    for row, (question, options, gold) in zip(rows, items, strict=True):
        assert question == row["prompt"] and options[gold] == row["completion"]
        assert len(set(options)) == 4 and options.count(row["completion"]) == 1
    assert items == mc_items(rows, 4, seed=0) and items != mc_items(rows, 4, seed=1)
    with pytest.raises(InputError, match="at least 4 distinct answers, found 2"):
        mc_items(rows[:2], 4, seed=0)


def test_evaluate_stage_scores_every_candidate_and_caches_by_weights(tmp_path: Path, tiny_base: Path, curated: Path):
    cfg = EvaluateConfig(math_new_tokens=4, safety_new_tokens=4, batch_size=4)
    result = evaluate_candidates({"base": tiny_base}, curated, cfg, 0, tmp_path / "eval")
    metrics = json.loads((tmp_path / "eval" / "base" / "metrics.json").read_text())
    assert (
        metrics["domain_mc_acc_norm_n"] == 5 and metrics["math_exact_match_n"] == 1 and metrics["harmful_score_n"] == 2
    )
    assert 0 <= metrics["domain_mc_acc"] <= 1 and metrics["domain_perplexity"] > 1
    samples = read(tmp_path / "eval" / "base" / "samples.jsonl")
    harmful = [s for s in samples if s["task"] == "harmful"]
    assert metrics["harmful_score"] == sum(s["attempted"] for s in harmful) / 2 == metrics["harmful_attempt"]
    # each harmful answer is one of the three verdicts, and the rates say how many of each
    assert all(s["verdict"] in VERDICTS and s["attempted"] == (s["verdict"] == "attempt") for s in harmful)
    rates = [metrics[f"harmful_{name.replace('-', '_')}"] for name in VERDICTS]
    assert sum(rates) == pytest.approx(1.0)
    # every gated metric is recomputed from its items' outcomes, which the gates' bounds resample
    outcomes = item_outcomes(samples)
    assert outcomes.keys() == set(METRIC_DIRECTIONS)
    for metric, items in outcomes.items():
        assert items.statistic()(list(items.values.values())) == pytest.approx(metrics[metric]), metric
        assert metrics[f"{metric}_low"] <= metrics[metric] <= metrics[f"{metric}_high"], metric
    assert "| base |" in (tmp_path / "eval" / "summary.md").read_text()
    assert result.metrics["base.math_exact_match"] == metrics["math_exact_match"]
    assert evaluate_candidates({"base": tiny_base}, curated, cfg, 0, tmp_path / "eval").cached


def test_the_suite_runs_the_model_in_the_evaluate_dtype(tmp_path: Path, tiny_base: Path, curated: Path):
    float32 = EvaluateConfig(math_new_tokens=4, safety_new_tokens=4, batch_size=4)
    evaluate_candidates({"base": tiny_base}, curated, float32, 0, tmp_path / "eval")
    before = json.loads((tmp_path / "eval" / "base" / "metrics.json").read_text())
    bfloat16 = float32.model_copy(update={"dtype": "bfloat16"})
    result = evaluate_candidates({"base": tiny_base}, curated, bfloat16, 0, tmp_path / "eval")
    after = json.loads((tmp_path / "eval" / "base" / "metrics.json").read_text())
    assert not result.cached  # the dtype is part of the evaluation's key
    # bfloat16's rounding of the weights and activations moves the perplexity a little, and no more
    assert after["domain_perplexity"] != before["domain_perplexity"]
    assert after["domain_perplexity"] == pytest.approx(before["domain_perplexity"], rel=0.02)


def test_bfloat16_where_the_cpu_emulates_it_warns_and_names_the_model(tiny_base: Path, monkeypatch, caplog):
    from components.model import device

    logger = logging.getLogger("posttrain.model")
    logger.addHandler(caplog.handler)
    try:
        monkeypatch.setattr(device, "native_bfloat16", lambda: False)
        model, _ = device.load_model(tiny_base, "bfloat16")
        assert next(model.parameters()).dtype == torch.bfloat16
        assert f"{tiny_base}: computing in bfloat16 on a CPU without AVX-512 BF16" in caplog.text
        caplog.clear()
        model, _ = device.load_model(tiny_base, "float32")
        assert next(model.parameters()).dtype == torch.float32 and not caplog.text
    finally:
        logger.removeHandler(caplog.handler)


def test_the_stage_scores_the_chosen_candidates_and_choosing_more_keeps_the_others_evaluations(
    tmp_path: Path, tiny_base: Path, curated: Path
):
    from components.config import load_params, parse_overrides
    from components.evaluate.evaluation import evaluate_cached
    from components.evaluate.stage import candidate_folders, candidates
    from tests.conftest import REPO

    chosen = "evaluate.candidates=[base,merge-ties,realigned-merge-ties]"
    params = load_params(REPO / "params.yaml", "tiny", parse_overrides([f"workspace={tmp_path}", chosen]))
    every = load_params(REPO / "params.yaml", "tiny", parse_overrides([f"workspace={tmp_path}"]))
    for folder in candidate_folders(every, every.ws).values():
        folder.mkdir(parents=True, exist_ok=True)
    assert set(candidates(every)) > set(candidates(params)) == {"base", "merge-ties", "realigned-merge-ties"}

    cfg = EvaluateConfig(math_new_tokens=4, safety_new_tokens=4, batch_size=4, candidates=["base"])
    assert not evaluate_cached(tiny_base, curated, cfg, 0, tmp_path / "eval" / "base")[1]
    more = cfg.model_copy(update={"candidates": ["base", "merge-ties"]})
    assert evaluate_cached(tiny_base, curated, more, 0, tmp_path / "eval" / "base")[1]  # base is not run again


def test_the_probe_judge_decides_the_safety_metrics_when_configured(tmp_path: Path, tiny_base: Path, curated: Path):
    from components.safety.judge import judge_answers

    cfg = EvaluateConfig(math_new_tokens=4, safety_new_tokens=4, batch_size=4, judge="probe")
    evaluate_candidates({"base": tiny_base}, curated, cfg, 0, tmp_path / "eval", judge_model=tiny_base)
    samples = [s for s in read(tmp_path / "eval" / "base" / "samples.jsonl") if s["task"] in ("harmful", "benign")]
    verdicts = judge_answers(["p"] * len(samples), [s["answer"] for s in samples], "probe", tiny_base)
    assert [s["refused"] for s in samples] == [v.refusal for v in verdicts]
    with pytest.raises(InputError, match="judge model"):  # the probe without the model it reads
        evaluate_candidates({"base": tiny_base}, curated, cfg, 0, tmp_path / "other")


def test_report_draws_the_figures_and_redraws_only_when_what_they_show_changed(
    tmp_path: Path, tiny_base: Path, curated: Path
):
    cfg = EvaluateConfig(math_new_tokens=4, safety_new_tokens=4, batch_size=4)
    evaluate_candidates({"base": tiny_base}, curated, cfg, 0, tmp_path / "eval")
    history = [
        {"loss": 3.0, "step": 1},
        {"eval_loss": 2.9, "step": 1},
        {"loss": 2.5, "step": 2},
        {"train_loss": 2.75, "step": 2},
    ]
    (tmp_path / "math.json").write_text(json.dumps(history))
    histories = {"math": tmp_path / "math.json", "never_trained": tmp_path / "missing.json"}
    champion = ("champion (post-train v3)", {"domain_mc_acc_norm": 0.5, "harmful_score": 0.2})
    out = tmp_path / "report"
    first = draw_report(tmp_path / "eval", {"base": tiny_base}, histories, champion, out)
    assert not first.cached and first.artifacts == (out,)
    for name in (SAFETY_VS_UTILITY, LOSS_CURVES):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"
    assert not (out / TASK_VECTOR_LAYERS).exists()  # only the base: no task vector to draw
    assert json.loads((out / LOSS_DATA).read_text()) == {"math": {"steps": [1, 2], "losses": [3.0, 2.5]}}
    page = (out / REPORT_MD).read_text()
    assert (
        "Champion: **champion (post-train v3)**" in page and "![Training loss of the experts](loss_curves.png)" in page
    )
    assert draw_report(tmp_path / "eval", {"base": tiny_base}, histories, champion, out).cached
    assert not draw_report(tmp_path / "eval", {"base": tiny_base}, histories, None, out).cached
    history.append({"loss": 2.0, "step": 3})
    (tmp_path / "math.json").write_text(json.dumps(history))
    assert not draw_report(tmp_path / "eval", {"base": tiny_base}, histories, None, out).cached
    assert json.loads((out / LOSS_DATA).read_text())["math"]["steps"] == [1, 2, 3]


def test_loss_curve_keeps_training_losses_only():
    history = [
        {"loss": 1.5, "step": 5},
        {"eval_loss": 1.7, "step": 5},
        {"loss": 1.25, "step": 10},
        {"train_runtime": 3.0, "train_loss": 1.4, "step": 10},
    ]
    assert loss_curve(history) == ([5, 10], [1.5, 1.25])


def test_inline_images_embeds_the_pngs_it_finds_and_leaves_the_rest(tmp_path: Path):
    png = b"\x89PNG fake"
    (tmp_path / "a.png").write_bytes(png)
    page = "# r\n![A](a.png)\n![B](b.png)\n![C](https://example.org/c.png)\n"
    inlined = inline_images(page, tmp_path)
    assert f"![A](data:image/png;base64,{base64.b64encode(png).decode()})" in inlined
    assert "![B](b.png)" in inlined and "![C](https://example.org/c.png)" in inlined


def test_pareto_front_by_hand():
    points = {
        "base": (0.5, 0.9),
        "safe": (0.4, 0.2),
        "merge": (0.7, 0.9),
        "worse": (0.45, 0.95),
        "realigned": (0.6, 0.3),
        "tie": (0.6, 0.3),
    }
    # worse is beaten by base; base by merge (more utility, same harm); the rest trade utility for safety
    assert pareto_front(points) == ["safe", "realigned", "tie", "merge"]


def test_task_vector_norm_per_block_by_hand():
    base = {
        "model.layers.0.w": torch.zeros(2, 2),
        "model.layers.1.w": torch.zeros(2),
        "model.embed.weight": torch.zeros(3),
    }
    model = {
        "model.layers.0.w": torch.tensor([[3.0, 0.0], [0.0, 4.0]]),
        "model.layers.1.w": torch.tensor([1.0, 1.0]),
        "model.embed.weight": torch.ones(3),
    }
    norms = layer_norms(base, model)
    assert norms == {0: 5.0, 1: pytest.approx(2**0.5)}  # the embedding belongs to no block


def test_empty_evaluation_set_is_refused(tmp_path: Path, tiny_base: Path, curated: Path):
    broken = tmp_path / "curated"
    shutil.copytree(curated, broken)
    (broken / "math" / "test.jsonl").write_text("")
    with pytest.raises(InputError, match=r"math/test.jsonl: the evaluation set is empty"):
        evaluate_candidates({"base": tiny_base}, broken, EvaluateConfig(), 0, tmp_path / "eval")
    assert not (tmp_path / "eval" / "base").exists()


def test_lm_eval_runs_the_exported_tasks_offline_with_the_suites_numbers(
    tmp_path: Path, tiny_base: Path, curated: Path
):
    """lm-evaluation-harness scores the exported multiple-choice items like the suite: same log-likelihoods."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    from components.evaluate.lm_eval_tasks import NUMBER_PATTERN, export_tasks
    from components.evaluate.suite import chat_prefix

    cfg = EvaluateConfig(math_new_tokens=4, batch_size=4)
    tasks = export_tasks(curated, cfg, 0, tmp_path / "lm_eval")
    out = simple_evaluate(
        model="hf",
        model_args={"pretrained": str(tiny_base), "dtype": "float32"},
        tasks=["posttrain_domain_mc", "posttrain_general_mc", "posttrain_math"],
        task_manager=TaskManager(include_path=str(tasks)),
        apply_chat_template=True,
        log_samples=True,
        batch_size=4,
        device="cpu",
    )
    samples = out["samples"]["posttrain_domain_mc"]
    assert len(samples) == 5 and out["results"]["posttrain_math"]["exact_match,last_number"] in (0.0, 1.0)
    general = sorted(out["samples"]["posttrain_general_mc"], key=lambda s: s["doc_id"])
    rows = [json.loads(line) for line in (curated / "general_mc" / "test.jsonl").read_text().splitlines()]
    assert [(s["doc"]["choices"], s["target"]) for s in general] == [
        (r["choices"], r["choices"].index(r["completion"])) for r in rows
    ]
    # the math task's filter keeps the answer's last number, as the suite's final_number does without a marker
    assert re.findall(NUMBER_PATTERN, "3 apples and 1,041 pears: -44.5 in all") == ["-44.5"]
    assert re.findall(NUMBER_PATTERN, "so 12 + 30 = 42.") == ["42"] and final_number("so 12 + 30 = 42.") == "42"

    tokenizer = AutoTokenizer.from_pretrained(tiny_base)
    model = AutoModelForCausalLM.from_pretrained(tiny_base)
    items = mc_items(
        [json.loads(line) for line in (curated / "domain_qa" / "test.jsonl").read_text().splitlines()], 4, 0
    )
    for sample, (question, options, gold) in zip(sorted(samples, key=lambda s: s["doc_id"]), items, strict=True):
        assert sample["doc"]["choices"] == options and sample["target"] == gold
        ours = continuation_logprobs(model, tokenizer, [chat_prefix(tokenizer, question)] * len(options), options)
        theirs = [response[0][0] for response in sample["resps"]]
        # lm-eval moves the chat prefix's trailing newline into each continuation: the same term for every choice.
        offsets = [their - our for their, (our, _) in zip(theirs, ours, strict=True)]
        assert max(offsets) - min(offsets) < 1e-3 and offsets[0] < 0
        assert sample["acc"] == float(max(range(4), key=lambda i: ours[i][0]) == gold)


def test_shared_context_option_scores_equal_the_pairwise_scores(tiny_base: Path):
    model, tokenizer = AutoModelForCausalLM.from_pretrained(tiny_base), AutoTokenizer.from_pretrained(tiny_base)
    contexts = ["Question one: what is it?", "A much longer second question about many other things?", "Q3"]
    options = [["yes", "no, never at all", "a"], [" maybe so", "x", "a much longer answer with words"], ["1", "2", "3"]]
    shared = options_logprobs(model, tokenizer, contexts, options, batch_size=6)  # two contexts per batch
    pairwise = continuation_logprobs(
        model, tokenizer, [c for c, opts in zip(contexts, options, strict=True) for _ in opts], sum(options, []), 1
    )
    flat = [score for per_context in shared for score in per_context]
    for (a, n), (b, m) in zip(flat, pairwise, strict=True):
        assert n == m and a == pytest.approx(b, abs=1e-4)
    with pytest.raises(ValueError, match=r"same number of options, found \[1, 2\]"):
        options_logprobs(model, tokenizer, contexts[:2], [["a"], ["b", "c"]])


def test_scoring_batches_hold_the_row_and_logit_budgets():
    lengths = [(512, 511)] * 5 + [(80, 20)] * 200 + [(30, 29)] * 3
    batches = batches_by_length(lengths, batch_size=64)
    assert sorted(i for batch in batches for i in batch) == list(range(len(lengths)))
    for batch in batches:
        kept = max(lengths[i][1] for i in batch) + 1
        assert len(batch) <= 64 and (len(batch) == 1 or len(batch) * kept <= SCORED_POSITIONS_PER_BATCH)
    assert max(len(b) for b in batches) == 64  # short rows fill whole batches
    assert [len(b) for b in batches if lengths[b[0]][0] == 512] == [4, 1]  # 4 x 512 logits rows fit, 5 do not


def test_the_options_of_a_batch_stay_within_the_logits_budget(tiny_base: Path, monkeypatch):
    import components.evaluate.scoring as scoring

    model, tokenizer = AutoModelForCausalLM.from_pretrained(tiny_base), AutoTokenizer.from_pretrained(tiny_base)
    contexts = [f"Question {i}: which one?" for i in range(6)]
    options = [["yes", "no", "a much longer answer with many words in it"]] * 3 + [["a", "b", "c"]] * 3
    unbounded = options_logprobs(model, tokenizer, contexts, options, batch_size=18)
    monkeypatch.setattr(scoring, "SCORED_POSITIONS_PER_BATCH", 40)
    widths = []
    forward = model.forward
    model.forward = lambda *a, **k: widths.append(k["input_ids"].shape) or forward(*a, **k)
    bounded = options_logprobs(model, tokenizer, contexts, options, batch_size=18)
    answers = widths[1::2]  # each batch: the contexts' pass, then their options'
    assert len(answers) > 1 and all(rows * width <= 40 for rows, width in answers)
    flat = [score for per_context in bounded for score, _ in per_context]
    assert flat == pytest.approx([score for per_context in unbounded for score, _ in per_context], abs=1e-4)


def test_generation_batches_are_as_even_as_the_batch_size_allows():
    assert [len(b) for b in balanced_batches(list(range(150)), 64)] == [50, 50, 50]  # not 64 + 64 + 22
    assert [len(b) for b in balanced_batches(list(range(150)), 150)] == [150]
    assert [len(b) for b in balanced_batches(list(range(101)), 25)] == [20, 20, 20, 20, 21]
    assert sum(balanced_batches([5, 3, 9, 1], 3), []) == [5, 3, 9, 1]
    assert balanced_batches([], 8) == []


def test_greedy_answers_come_back_in_the_prompts_order_whatever_the_batching(tiny_base: Path):
    model, tokenizer = AutoModelForCausalLM.from_pretrained(tiny_base), AutoTokenizer.from_pretrained(tiny_base)
    prompts = ["A long prompt with many words in it, longer than the rest", "Hi", "Medium length prompt", "Yo"]
    alone = [generate_answers(model, tokenizer, [p], 6, 1)[0] for p in prompts]
    assert generate_answers(model, tokenizer, prompts, 6, 3) == alone


def test_the_shared_prefix_leaves_every_row_a_token_of_its_own():
    assert shared_prefix([[1, 2, 3, 4], [1, 2, 5], [1, 2, 3]]) == 2
    assert shared_prefix([[1, 2, 3], [1, 2, 3]]) == 2  # identical rows: the last token stays each row's own
    assert shared_prefix([[7], [7, 8]]) == 0
    assert shared_prefix([[1, 2], [3, 2]]) == 0


def test_greedy_answers_equal_model_generate_with_rows_that_end_at_different_steps(tiny_base: Path):
    """The shared prefix run once and ended rows dropped change no answer: each row gets the tokens that
    `model.generate` gives it in a left-padded batch, up to its stop token."""
    model, tokenizer = AutoModelForCausalLM.from_pretrained(tiny_base), AutoTokenizer.from_pretrained(tiny_base)
    torch.manual_seed(0)
    with torch.no_grad():  # larger random weights: the tiny model's greedy answers vary between prompts
        for weight in (p for p in model.parameters() if p.dim() == 2):
            weight.normal_(0, 0.3)
    prompts = [f"Question {i}: " + "word " * (i % 5) for i in range(12)]
    texts = [
        tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False)
        for p in prompts
    ]
    tokenizer.padding_side = "left"
    inputs = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)

    def reference(stop: int | None) -> list[list[int]]:
        """model.generate's new tokens of each row, up to (without) its first `stop`."""
        output = model.generate(**inputs, max_new_tokens=10, do_sample=False, pad_token_id=0, eos_token_id=stop)
        rows = output[:, inputs["input_ids"].shape[1] :].tolist()
        return [row[: row.index(stop)] if stop in row else row for row in rows]

    # a token the random model emits at different steps in different rows serves as the stop token
    free = reference(None)
    stop = next(t for row in free for t in row[2:] if 3 <= sum(t in r for r in free) < len(free))
    expected = reference(stop)
    assert len({len(row) for row in expected}) > 2 and any(len(row) == 10 for row in expected)
    model.generation_config.eos_token_id = stop
    answers = generate_answers(model, tokenizer, prompts, 10, batch_size=12)
    assert answers == [tokenizer.decode(row, skip_special_tokens=True).strip() for row in expected]


def test_single_query_attention_by_hand():
    """Scale 1; keys k0 = (0, 0), k1 = (1, 0), k2 = (0, 1); values v0 = (1, 0), v1 = (0, 1), v2 = (2, 2); column 0
    masked. Query head 0 = (ln 2, 0): scores (-, ln 2, 0), weights (2/3, 1/3), output (2/3, 4/3). Query head 1 =
    (0, ln 3): scores (-, 0, ln 3), weights (1/4, 3/4), output (3/2, 7/4). Both read the one key/value head."""
    keys = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]]).reshape(1, 1, 3, 2)
    values = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 2.0]]).reshape(1, 1, 3, 2)
    query = torch.tensor([[math.log(2), 0.0], [0.0, math.log(3)]]).reshape(1, 2, 1, 2)
    mask = torch.tensor([False, True, True]).reshape(1, 1, 1, 3)
    out = single_query_attention(query, keys, values, mask, scaling=1.0)
    assert out.shape == (1, 2, 1, 2)
    assert out.flatten().tolist() == pytest.approx([2 / 3, 4 / 3, 3 / 2, 7 / 4])


def test_decoding_attention_equals_sdpa_and_leaves_prompts_to_it():
    """Grouped heads (8 query heads on 2 key/value heads: heads 0-3 read the first), a padded row, in float32 and
    bfloat16, against transformers' sdpa; more than one query per row goes to sdpa itself."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from components.model.attention import decode_attention

    module = torch.nn.Module()
    module.num_key_value_groups, module.is_causal = 4, True
    torch.manual_seed(0)
    for dtype, tolerance in ((torch.float32, 1e-6), (torch.bfloat16, 2e-2)):
        query = torch.randn(3, 8, 1, 16, dtype=dtype)
        key, value = torch.randn(3, 2, 7, 16, dtype=dtype), torch.randn(3, 2, 7, 16, dtype=dtype)
        mask = torch.ones(3, 1, 1, 7, dtype=torch.bool)
        mask[1, ..., :3] = False  # a left-padded row
        mask[..., 6] = False  # a cache column not written yet
        expected, _ = sdpa_attention_forward(module, query, key, value, mask, scaling=0.25)
        got, _ = decode_attention(module, query, key, value, mask, scaling=0.25)
        assert got.shape == expected.shape == (3, 1, 8, 16)
        assert torch.allclose(got.float(), expected.float(), atol=tolerance, rtol=tolerance)
        heads_0_to_3 = single_query_attention(query[:, :4], key[:, :1], value[:, :1], mask, 0.25)
        assert torch.equal(got.transpose(1, 2)[:, :4], heads_0_to_3)
    prompt = torch.randn(3, 8, 5, 16)
    causal = torch.ones(5, 7, dtype=torch.bool).tril(2).expand(3, 1, 5, 7)
    expected, _ = sdpa_attention_forward(module, prompt, key.float(), value.float(), causal, scaling=0.25)
    assert torch.equal(decode_attention(module, prompt, key.float(), value.float(), causal, scaling=0.25)[0], expected)


def test_generation_decodes_with_the_single_query_attention_and_leaves_the_model_as_it_was(
    tiny_base: Path, monkeypatch
):
    from components.model import attention, generate

    model, tokenizer = AutoModelForCausalLM.from_pretrained(tiny_base), AutoTokenizer.from_pretrained(tiny_base)
    torch.manual_seed(0)
    with torch.no_grad():  # larger random weights: the tiny model's greedy answers vary between prompts
        for weight in (p for p in model.parameters() if p.dim() == 2):
            weight.normal_(0, 0.3)
    model.generation_config.eos_token_id = None  # every row decodes every step
    prompts = ["Hi", "A longer prompt", "Question 3: word word"]
    with monkeypatch.context() as sdpa_steps:  # the steps through transformers' sdpa, as before attention.py
        sdpa_steps.setattr(generate, "decoding_attention", lambda model: contextlib.nullcontext())
        expected = generate_answers(model, tokenizer, prompts, 5, 3)
    calls = []
    monkeypatch.setattr(
        attention, "single_query_attention", lambda *a: calls.append(a[0].shape) or single_query_attention(*a)
    )
    assert generate_answers(model, tokenizer, prompts, 5, 3) == expected
    assert len(set(expected)) == 3
    # 4 steps after the prompts' pass (the fifth token comes from the fourth step's logits), each in every layer
    assert calls == [(3, 4, 1, 16)] * 4 * model.config.num_hidden_layers
    assert model.config._attn_implementation == "sdpa"


def test_an_answer_ends_where_until_first_holds_and_is_that_much_of_the_whole_answer(tiny_base: Path):
    model, tokenizer = AutoModelForCausalLM.from_pretrained(tiny_base), AutoTokenizer.from_pretrained(tiny_base)
    torch.manual_seed(0)
    with torch.no_grad():  # larger random weights: the tiny model's answers vary between prompts
        for weight in (p for p in model.parameters() if p.dim() == 2):
            weight.normal_(0, 0.3)
    prompts = [f"Question {i}: " + "word " * (i % 5) for i in range(8)]
    whole = generate_answers(model, tokenizer, prompts, 12, batch_size=8)
    steps = []
    forward = model.forward
    model.forward = lambda *a, **k: steps.append(k["input_ids"].shape[0]) or forward(*a, **k)
    held = []  # every answer so far on which `until` held

    def until(answer: str) -> bool:
        if len(answer) >= 6:
            held.append(answer)
        return len(answer) >= 6

    cut = generate_answers(model, tokenizer, prompts, 12, batch_size=8, until=until)
    for short, full in zip(cut, whole, strict=True):
        assert full.startswith(short)
        assert len(short) >= 6 or short == full
        # it ended at the first token after which `until` held: no shorter answer of its own satisfied it
        assert not [earlier for earlier in held if earlier != short and short.startswith(earlier)]
    assert any(len(short) < len(full) for short, full in zip(cut, whole, strict=True))
    assert len(steps) < 1 + 12  # the prefix and prompts' passes, then fewer decoding steps than the budget's


def test_a_safety_sample_says_whether_its_answer_may_stop_at_its_verdict(monkeypatch):
    import components.evaluate.suite as suite

    asked = []
    answers = ["Sure. Step one is", "I can"]  # the first one's opening is written, the second's is not
    monkeypatch.setattr(suite, "generate_answers", lambda *a, **k: asked.append(k["until"]) or answers)
    rows = [{"id": "a", "prompt": "x"}, {"id": "b", "prompt": "y"}]
    cfg = EvaluateConfig(judge="opening")
    _, samples = suite.judged_answers(None, None, rows, cfg, "harmful", None)
    assert [s["cut_at_verdict"] for s in samples] == [True, False] and asked[0]("Sure.")
    whole = cfg.model_copy(update={"stop_at_verdict": False})
    _, samples = suite.judged_answers(None, None, rows, whole, "harmful", None)
    assert [s["cut_at_verdict"] for s in samples] == [False, False] and asked[1] is None


def test_a_candidate_with_the_weights_of_an_evaluated_one_is_not_evaluated_again(
    tmp_path: Path, tiny_base: Path, curated: Path, monkeypatch
):
    import components.evaluate.suite as suite

    twin = tmp_path / "twin"
    shutil.copytree(tiny_base, twin)
    (twin / "README.md").write_text("same weights, another folder\n")
    runs = []
    evaluate_model = suite.evaluate_model
    monkeypatch.setattr(suite, "evaluate_model", lambda *a, **k: runs.append(a[0]) or evaluate_model(*a, **k))
    cfg = EvaluateConfig(math_new_tokens=4, safety_new_tokens=4, batch_size=4)
    evaluate_candidates({"base": tiny_base, "twin": twin}, curated, cfg, 0, tmp_path / "eval")
    assert runs == [tiny_base]
    base, copy = (json.loads((tmp_path / "eval" / n / "metrics.json").read_text()) for n in ("base", "twin"))
    assert copy == base
    card = json.loads((tmp_path / "eval" / "twin" / "stage.json").read_text())
    assert card["copied_from"] == str(tmp_path / "eval" / "base")


def test_general_mc_scores_each_benchmark_item_among_its_own_answers(monkeypatch, curated: Path):
    """acc takes the option of highest log-likelihood, acc_norm the highest per character (by hand below)."""
    import components.evaluate.suite as suite

    rows = [json.loads(line) for line in (curated / "general_mc" / "test.jsonl").read_text().splitlines()]
    # g0: Ann, Bo (right), Unknown; g1: hot, cold (right), neither
    scores = {"Ann": -5.0, "Bo": -1.0, "Unknown": -4.0, "hot": -3.0, "cold": -3.2, "neither": -9.0}
    asked = []

    def option_scores(model, tokenizer, contexts, options, batch_size):
        asked.append(options)
        return [[(scores[o], 1) for o in opts] for opts in options]

    monkeypatch.setattr(suite, "options_logprobs", option_scores)
    monkeypatch.setattr(suite, "chat_prefix", lambda tokenizer, prompt: prompt)
    metrics, samples = suite.general_mc(None, None, rows, EvaluateConfig())
    assert asked == [[r["choices"] for r in rows]]  # each item among its own three answers, none drawn from others
    # g0: Bo wins by sum (-1) and per character (-0.5); g1: hot by sum (-3 > -3.2), cold per character (-0.8 > -1)
    assert [(s["correct"], s["correct_norm"]) for s in samples] == [(True, True), (False, True)]
    assert (
        metrics["general_mc_acc"] == 0.5 and metrics["general_mc_acc_norm"] == 1.0 and metrics["general_mc_acc_n"] == 2
    )
