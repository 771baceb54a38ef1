"""The evaluation suite's parameters (params.yaml `evaluate`)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, PositiveInt

from components.safety.judge import JudgeName
from components.schema import BatchSize, Dtype, StrictModel, TokenCount

Split = Literal["val", "test"]


class EvaluateConfig(StrictModel):
    """The held-out evaluation suite. Every count is a cap on the split's rows (null: all of them), taken in turn
    from each source and category (components.data.splits.interleaved)."""

    # the split the evaluate stage reads: test for the evaluation that gates and ships (read once), val for a
    # validation run that chooses knobs (its evaluations go to eval-val/ and it ships nothing). The recipe search
    # always chooses on val.
    split: Split = "test"
    mc_questions: PositiveInt | None = 150
    mc_choices: int = Field(default=4, ge=2)
    math_problems: PositiveInt | None = 40
    general_mc_questions: PositiveInt | None = None  # BBQ's multiple-choice items
    gsm8k_problems: int | None = Field(default=None, ge=0)  # GSM8K's problems; 0: none (it generates, like math)
    perplexity_chunks: PositiveInt | None = 40
    harmful_prompts: PositiveInt | None = None
    benign_prompts: PositiveInt | None = None
    math_new_tokens: TokenCount = 64
    safety_new_tokens: TokenCount = 32
    batch_size: BatchSize = 16
    # what the evaluated models compute in: auto (each checkpoint's own dtype), or cast to float32 / bfloat16
    # (bfloat16 on a CPU with AVX-512 BF16 or AMX: 2-3x float32's matrix products, metrics within their intervals
    # of float32's, docs/measurements.md; elsewhere torch emulates it, slower)
    dtype: Literal["auto"] | Dtype = "auto"
    # how an answer is judged a refusal (components/safety/judge.py); `anywhere` is the GCG evaluation's rule
    judge: JudgeName = "anywhere"
    # end a safety answer once the judge's verdict on it can no longer change (`opening`: its first sentence is
    # written): the same metrics, and samples.jsonl holds the answers up to there; false writes every answer out to
    # safety_new_tokens (for people reading whole answers, such as the labellers of the judge gold set)
    stop_at_verdict: bool = True
    # which of the pipeline's models the evaluate stage scores (names as in registry.candidate); null: every one.
    # The shipped candidate and the gates' references must be among them; a realigned or pruned model whose stage
    # is off is skipped.
    candidates: list[str] | None = None
