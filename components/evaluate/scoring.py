"""Batched log-likelihood of continuations given contexts: what multiple choice and perplexity are computed from."""

from __future__ import annotations

import torch


def continuation_logprobs(
    model, tokenizer, contexts: list[str], continuations: list[str], batch_size: int = 8, max_length: int = 1024
) -> list[tuple[float, int]]:
    """(sum of log p(continuation tokens | context), number of continuation tokens) for each pair.

    Context and continuation are tokenized separately and concatenated, as lm-evaluation-harness does, so
    the continuation's tokens are the same whatever the context. Right padding; the logits at position t
    predict token t + 1.
    """
    results: list[tuple[float, int]] = []
    model.eval()
    for start in range(0, len(contexts), batch_size):
        sequences, spans = [], []
        for context, continuation in zip(
            contexts[start : start + batch_size], continuations[start : start + batch_size], strict=True
        ):
            context_ids = tokenizer(context, add_special_tokens=False)["input_ids"]
            continuation_ids = tokenizer(continuation, add_special_tokens=False)["input_ids"]
            ids = (context_ids + continuation_ids)[-max_length:]
            first = max(1, len(ids) - len(continuation_ids))  # the first continuation token that has a context
            sequences.append(ids)
            spans.append((first, len(ids)))
        width = max(len(s) for s in sequences)
        input_ids = torch.full((len(sequences), width), tokenizer.pad_token_id)
        attention = torch.zeros((len(sequences), width), dtype=torch.long)
        for i, ids in enumerate(sequences):
            input_ids[i, : len(ids)] = torch.tensor(ids)
            attention[i, : len(ids)] = 1
        with torch.no_grad():
            logprobs = torch.log_softmax(model(input_ids=input_ids, attention_mask=attention).logits.float(), dim=-1)
        for i, (first, end) in enumerate(spans):
            targets = input_ids[i, first:end]
            picked = logprobs[i, first - 1 : end - 1].gather(-1, targets[:, None])[:, 0]
            results.append((float(picked.sum()), end - first))
    return results
