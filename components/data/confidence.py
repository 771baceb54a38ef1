"""Confidence of a model in each training answer, for optional CLEAR-style filtering.

CLEAR (Chen & Mueller, "Automated Data Curation for Robust Language Model Fine-Tuning", 2024) drops
fine-tuning rows whose answers the model is least confident are right. CLEAR estimates confidence with
BSDetector (self-consistency plus self-reflection by a capable LLM); on a 135M model on a CPU that is out
of reach, so this uses the cheapest confidence signal the same model gives: the geometric-mean probability
of the answer's tokens given the prompt, exp(mean_t log p(y_t | x, y_<t)). Off by default.
"""

from __future__ import annotations

import math

import numpy as np

from components.evaluate.scoring import continuation_logprobs


def answer_confidence(
    model, tokenizer, prompts: list[str], answers: list[str], max_tokens: int = 512, batch_size: int = 8
) -> np.ndarray:
    """exp(mean log-probability of each answer's tokens), the answer following the chat-formatted prompt."""
    contexts = [
        tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False)
        for p in prompts
    ]
    scored = continuation_logprobs(
        model, tokenizer, contexts, [a + tokenizer.eos_token for a in answers], batch_size, max_tokens
    )
    return np.array([math.exp(total / count) for total, count in scored])


def lowest(scores: np.ndarray, fraction: float) -> np.ndarray:
    """Boolean mask of the `fraction` of rows with the lowest scores (ties broken by position)."""
    count = int(np.floor(fraction * len(scores)))
    mask = np.zeros(len(scores), dtype=bool)
    mask[np.argsort(scores, kind="stable")[:count]] = True
    return mask
