"""Batched log-likelihood of continuations given contexts: what multiple choice and perplexity are computed from."""

from __future__ import annotations

import torch

# The logits of at most this many positions per forward pass (× vocabulary × 4 bytes: 400 MB for SmolLM2's
# 49,152 tokens): long sequences (perplexity chunks) go a few rows at a time, short ones many.
SCORED_POSITIONS_PER_BATCH = 2048


def _batches(lengths: list[tuple[int, int]], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length: at most `batch_size` rows and the positions budget."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batches: list[list[int]] = []
    for i in order:
        batch = batches[-1] if batches else None
        kept = max(lengths[i][1], *(lengths[j][1] for j in batch)) + 1 if batch else 0
        if batch and len(batch) < batch_size and (len(batch) + 1) * kept <= SCORED_POSITIONS_PER_BATCH:
            batch.append(i)
        else:
            batches.append([i])
    return batches


def continuation_logprobs(
    model, tokenizer, contexts: list[str], continuations: list[str], batch_size: int = 8, max_length: int = 1024
) -> list[tuple[float, int]]:
    """(sum of log p(continuation tokens | context), number of continuation tokens) for each pair.

    Context and continuation are tokenized separately and concatenated, as lm-evaluation-harness does, so
    the continuation's tokens are the same whatever the context. Rows are left-padded, so that every
    continuation ends at the last position and the model computes logits only for the last positions
    (`logits_to_keep`): a multiple-choice option of 20 tokens after a 60-token prompt costs 21 positions of the
    vocabulary-sized head, not 80. Rows of similar length are batched together.
    """
    sequences: list[list[int]] = []
    scored: list[int] = []  # continuation tokens that have a context (the first token of a sequence has none)
    for context, continuation in zip(contexts, continuations, strict=True):
        context_ids = tokenizer(context, add_special_tokens=False)["input_ids"]
        continuation_ids = tokenizer(continuation, add_special_tokens=False)["input_ids"]
        ids = (context_ids + continuation_ids)[-max_length:]
        sequences.append(ids)
        scored.append(min(len(continuation_ids), len(ids) - 1))
    results: list[tuple[float, int]] = [(0.0, 0)] * len(sequences)
    model.eval()
    for batch in _batches([(len(sequences[i]), scored[i]) for i in range(len(sequences))], batch_size):
        width = max(len(sequences[i]) for i in batch)
        kept = max(scored[i] for i in batch) + 1  # the last position predicts past the end: kept, never read
        input_ids = torch.full((len(batch), width), tokenizer.pad_token_id)
        attention = torch.zeros((len(batch), width), dtype=torch.long)
        for row, i in enumerate(batch):
            input_ids[row, width - len(sequences[i]) :] = torch.tensor(sequences[i])
            attention[row, width - len(sequences[i]) :] = 1
        positions = (attention.cumsum(-1) - 1).clamp(min=0)
        with torch.no_grad():
            logits = model(
                input_ids=input_ids, attention_mask=attention, position_ids=positions, logits_to_keep=kept
            ).logits
            for row, i in enumerate(batch):
                n = scored[i]
                row_logits = logits[row, kept - 1 - n : kept - 1].float()  # position t predicts token t + 1
                targets = input_ids[row, width - n :]
                picked = row_logits.gather(-1, targets[:, None])[:, 0] - torch.logsumexp(row_logits, dim=-1)
                results[i] = (float(picked.sum()), n)
    return results
