"""Confidence of a model in each training answer, for optional CLEAR-style filtering.

CLEAR (Chen & Mueller, "Automated Data Curation for Robust Language Model Fine-Tuning", 2024) drops
fine-tuning rows whose answers the model is least confident are right. CLEAR estimates confidence with
BSDetector (self-consistency plus self-reflection by a capable LLM); on a 135M model on a CPU that is out
of reach, so this uses the cheapest confidence signal the same model gives: the geometric-mean probability
of the answer's tokens given the prompt, exp(mean_t log p(y_t | x, y_<t)). Off by default.
"""

from __future__ import annotations

import numpy as np
import torch


def answer_confidence(model, tokenizer, prompts: list[str], answers: list[str], max_tokens: int = 512,
                      batch_size: int = 8) -> np.ndarray:
    """exp(mean log-probability of each answer's tokens), the answer following the chat-formatted prompt."""
    scores: list[float] = []
    model.eval()
    for start in range(0, len(prompts), batch_size):
        sequences, answer_starts = [], []
        for prompt, answer in zip(prompts[start:start + batch_size], answers[start:start + batch_size], strict=True):
            prefix = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                                   tokenize=True, return_dict=False)
            answer_ids = tokenizer(answer + tokenizer.eos_token, add_special_tokens=False)["input_ids"]
            ids = (list(prefix) + answer_ids)[:max_tokens]
            sequences.append(ids)
            answer_starts.append(min(len(prefix), len(ids) - 1))
        width = max(len(s) for s in sequences)
        input_ids = torch.full((len(sequences), width), tokenizer.pad_token_id)
        attention = torch.zeros((len(sequences), width), dtype=torch.long)
        for i, ids in enumerate(sequences):
            input_ids[i, : len(ids)] = torch.tensor(ids)
            attention[i, : len(ids)] = 1
        with torch.no_grad():
            logprobs = torch.log_softmax(model(input_ids=input_ids, attention_mask=attention).logits.float(), dim=-1)
        # token t is predicted at position t - 1
        token_logprobs = logprobs[:, :-1].gather(-1, input_ids[:, 1:, None])[..., 0]
        for i, ids in enumerate(sequences):
            answer_part = token_logprobs[i, answer_starts[i] - 1 : len(ids) - 1]
            scores.append(float(torch.exp(answer_part.mean())))
    return np.array(scores)


def lowest(scores: np.ndarray, fraction: float) -> np.ndarray:
    """Boolean mask of the `fraction` of rows with the lowest scores (ties broken by position)."""
    count = int(np.floor(fraction * len(scores)))
    mask = np.zeros(len(scores), dtype=bool)
    mask[np.argsort(scores, kind="stable")[:count]] = True
    return mask
