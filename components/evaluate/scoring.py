"""Batched log-likelihood of continuations given contexts: what multiple choice and perplexity are computed from."""

from __future__ import annotations

import torch

# The logits of at most this many positions per forward pass (× vocabulary × 4 bytes: 400 MB for SmolLM2's
# 49,152 tokens): long sequences (perplexity chunks) go a few rows at a time, short ones many.
SCORED_POSITIONS_PER_BATCH = 2048


def budget_batches(order: list[int], positions: list[int], batch_size: int) -> list[list[int]]:
    """`order` cut into consecutive batches of at most `batch_size` rows whose rows × their widest `positions` stay
    within the logits budget (a row wider than the budget goes alone)."""
    batches: list[list[int]] = []
    for i in order:
        batch = batches[-1] if batches else None
        if (
            batch
            and len(batch) < batch_size
            and (len(batch) + 1) * max(positions[i], *(positions[j] for j in batch)) <= SCORED_POSITIONS_PER_BATCH
        ):
            batch.append(i)
        else:
            batches.append([i])
    return batches


def batches_by_length(lengths: list[tuple[int, int]], batch_size: int) -> list[list[int]]:
    """Indices of (sequence length, scored positions) grouped into batches of similar length: at most `batch_size`
    rows and the positions budget (the scored positions and the one after them, see continuation_logprobs)."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    return budget_batches(order, [scored + 1 for _, scored in lengths], batch_size)


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
    for batch in batches_by_length([(len(sequences[i]), scored[i]) for i in range(len(sequences))], batch_size):
        width = max(len(sequences[i]) for i in batch)
        kept = max(scored[i] for i in batch) + 1  # the last position predicts past the end: kept, never read
        input_ids = torch.full((len(batch), width), tokenizer.pad_token_id)
        attention = torch.zeros((len(batch), width), dtype=torch.long)
        for row, i in enumerate(batch):
            input_ids[row, width - len(sequences[i]) :] = torch.tensor(sequences[i])
            attention[row, width - len(sequences[i]) :] = 1
        input_ids, attention = input_ids.to(model.device), attention.to(model.device)
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


def options_logprobs(
    model, tokenizer, contexts: list[str], options: list[list[str]], batch_size: int = 8
) -> list[list[tuple[float, int]]]:
    """For each context, (sum of log p(option tokens | context), number of option tokens) of each of its options.

    The same numbers as `continuation_logprobs` on every (context, option) pair, but each context runs once: its
    key/value cache is repeated for its options, which then run as a batch after it. Multiple-choice prompts are
    most of each pair's tokens (the chat template and question before a short answer), so this does about a
    third of the work. Every context has the same number of options.
    """
    choices = {len(o) for o in options}
    if len(choices) != 1:
        raise ValueError(f"options_logprobs: every context needs the same number of options, found {sorted(choices)}")
    (k,) = choices
    context_ids = [tokenizer(c, add_special_tokens=False)["input_ids"] for c in contexts]
    option_ids = [[tokenizer(o, add_special_tokens=False)["input_ids"] for o in opts] for opts in options]
    results: list[list[tuple[float, int]]] = [[] for _ in contexts]
    model.eval()
    # contexts with options of similar length together (the options' padding), at most batch_size // k of them and
    # their k options' positions within the logits budget
    widths = [k * max(map(len, option_ids[i])) for i in range(len(contexts))]
    order = sorted(range(len(contexts)), key=lambda i: (widths[i], len(context_ids[i])))
    for batch in budget_batches(order, widths, max(1, batch_size // k)):
        width = max(len(context_ids[i]) for i in batch)
        ids = torch.full((len(batch), width), tokenizer.pad_token_id)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, i in enumerate(batch):
            ids[row, width - len(context_ids[i]) :] = torch.tensor(context_ids[i])
            mask[row, width - len(context_ids[i]) :] = 1
        ids, mask = ids.to(model.device), mask.to(model.device)
        with torch.no_grad():
            prefix = model(
                input_ids=ids,
                attention_mask=mask,
                position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
                use_cache=True,
                logits_to_keep=1,
            )
            first = torch.log_softmax(prefix.logits[:, -1].float(), dim=-1).repeat_interleave(k, dim=0)
            cache = prefix.past_key_values
            cache.batch_repeat_interleave(k)
            answers = [option_ids[i][j] for i in batch for j in range(k)]
            answer_width = max(len(a) for a in answers)
            answer = torch.full((len(answers), answer_width), tokenizer.pad_token_id)
            answer_mask = torch.zeros((len(answers), answer_width), dtype=torch.long)
            for row, a in enumerate(answers):
                answer[row, : len(a)] = torch.tensor(a)
                answer_mask[row, : len(a)] = 1
            answer, answer_mask = answer.to(model.device), answer_mask.to(model.device)
            lengths = mask.sum(-1).repeat_interleave(k)
            logits = model(
                input_ids=answer,
                attention_mask=torch.cat([mask.repeat_interleave(k, dim=0), answer_mask], dim=-1),
                position_ids=lengths[:, None] + torch.arange(answer_width, device=model.device),
                past_key_values=cache,
            ).logits
        for row, a in enumerate(answers):
            n = len(a)
            rest = logits[row, : n - 1].float()  # position t of the answer predicts its token t + 1
            picked = (
                first[row, a[0]] + (rest.gather(-1, answer[row, 1:n, None])[:, 0] - torch.logsumexp(rest, dim=-1)).sum()
            )
            results[batch[row // k]].append((float(picked), n))
    return results
