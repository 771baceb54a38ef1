"""Batched chat generation: one answer per prompt, greedy or sampled with a fixed seed.

Written here rather than calling `model.generate` for two savings that it does not make (measured in
docs/measurements.md, "Training and evaluation throughput"):
- the chat template's opening (SmolLM2's default system message: about 24 of a prompt's 40-60 tokens) is the
  same in every row; it is run through the model once and its keys and values copied to every row;
- a row that has ended is dropped from the batch (with its cache rows) instead of decoding padding to the end;
  a caller that reads only part of an answer (the refusal judge reads its opening) can end a row once that part
  is written (`until`);
- on a CPU, each step's attention (one new token per row) runs as two batched products
  (components/model/attention.py) instead of torch's flash-attention kernel, which is slow for a single query.
A row's tokens, positions and attention are those `model.generate` gives it with left padding, so greedy answers
are the same (tests/test_evaluate.py compares the two).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from transformers import StaticCache

from components.model.attention import decoding_attention

# Drop ended rows once they are this share of the batch: each drop copies the cache, about one step's cost.
DROP_SHARE = 0.125


def balanced_batches(order: list[int], batch_size: int) -> list[list[int]]:
    """`order` cut into the fewest batches of at most `batch_size`, their sizes within one of each other: 150 prompts
    at 64 go as 50 + 50 + 50, not 64 + 64 + 22 (a small batch decodes at a fraction of a large one's rate)."""
    count = -(-len(order) // batch_size)
    return [order[i * len(order) // count : (i + 1) * len(order) // count] for i in range(count)]


def shared_prefix(rows: list[list[int]]) -> int:
    """How many leading tokens every row has in common, leaving each row at least one token of its own."""
    shortest = min(len(row) for row in rows)
    length = 0
    while length < shortest - 1 and all(row[length] == rows[0][length] for row in rows):
        length += 1
    return length


def stop_tokens(model) -> list[int]:
    eos = model.generation_config.eos_token_id
    return [] if eos is None else list(eos) if isinstance(eos, list | tuple) else [eos]


def decode_batch(
    model,
    prefix: list[int],
    suffixes: list[list[int]],
    max_new_tokens: int,
    pad_token_id: int,
    temperature: float = 0.0,
    generator: torch.Generator | None = None,
    until: Callable[[list[int]], bool] | None = None,
) -> list[list[int]]:
    """The new tokens of each row `prefix + suffix`, up to its first stop token (excluded), or up to the first
    token after which `until(the row's new tokens)` holds (included).

    Cache columns: the prefix, then the suffixes left-padded to the longest, then the new tokens."""
    device, rows = model.device, len(suffixes)
    start, width = len(prefix), max(len(suffix) for suffix in suffixes)
    cache = StaticCache(config=model.config, max_cache_len=start + width + max_new_tokens)
    if start:
        prompt = torch.tensor([prefix], device=device)
        model(input_ids=prompt, past_key_values=cache, cache_position=torch.arange(start, device=device))
        cache.reorder_cache(torch.zeros(rows, dtype=torch.long, device=device))  # one copy per row
    ids = torch.full((rows, width), pad_token_id, dtype=torch.long)
    attention = torch.ones((rows, start + width + max_new_tokens), dtype=torch.long)
    positions = torch.ones((rows, width), dtype=torch.long)
    for row, suffix in enumerate(suffixes):
        pad = width - len(suffix)
        ids[row, pad:] = torch.tensor(suffix)
        attention[row, start : start + pad] = 0
        positions[row, pad:] = torch.arange(start, start + len(suffix))
    lengths = torch.tensor([start + len(suffix) for suffix in suffixes], device=device)
    ids, attention, positions = ids.to(device), attention.to(device), positions.to(device)
    logits = model(
        input_ids=ids,
        attention_mask=attention,
        position_ids=positions,
        past_key_values=cache,
        cache_position=torch.arange(start, start + width, device=device),
        logits_to_keep=1,
    ).logits
    stops = torch.tensor(stop_tokens(model), dtype=torch.long, device=device)
    tokens: list[list[int]] = [[] for _ in suffixes]
    row_of = torch.arange(rows, device=device)  # the suffix each batch row answers
    ended = torch.zeros(rows, dtype=torch.bool, device=device)
    for step in range(max_new_tokens):
        last = logits[:, -1, :].float()
        if temperature > 0:
            probabilities = torch.softmax(last / temperature, dim=-1).cpu()  # drawn on the CPU generator
            token = torch.multinomial(probabilities, 1, generator=generator).squeeze(1).to(device)
        else:
            token = last.argmax(dim=-1)
        stopped = torch.isin(token, stops)
        going = (~ended & ~stopped).tolist()
        for index, (row, new_token) in enumerate(zip(row_of.tolist(), token.tolist(), strict=True)):
            if going[index]:
                tokens[row].append(new_token)
                if until is not None and until(tokens[row]):
                    stopped[index] = True
        ended |= stopped
        if step == max_new_tokens - 1 or bool(ended.all()):
            break
        if int(ended.sum()) >= max(1.0, DROP_SHARE * len(row_of)):
            going = (~ended).nonzero().squeeze(1)
            cache.reorder_cache(going)
            row_of, token, attention, lengths, ended = (t[going] for t in (row_of, token, attention, lengths, ended))
        logits = model(
            input_ids=token[:, None],
            attention_mask=attention,
            position_ids=(lengths + step)[:, None],
            past_key_values=cache,
            cache_position=torch.tensor([start + width + step], device=device),
        ).logits
    return tokens


def generate_answers(
    model,
    tokenizer,
    prompts: list[str],
    max_new_tokens: int = 64,
    batch_size: int = 8,
    temperature: float = 0.0,
    seed: int = 0,
    until: Callable[[str], bool] | None = None,
) -> list[str]:
    """Answer to each prompt as a single user message, formatted with the model's chat template.

    temperature 0 is greedy decoding; above 0, sampling from a generator seeded with `seed`. `until`: an answer
    ends as soon as it holds of the answer so far (as returned: decoded, stripped), which is then the answer.
    """
    rows = [
        tokenizer(
            tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False),
            add_special_tokens=False,
        )["input_ids"]
        for p in prompts
    ]
    if not rows:
        return []
    shared = shared_prefix(rows)
    # Prompts of similar length share a batch (less padding to compute); answers come back in the prompts' order.
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
    answers: list[str] = [""] * len(rows)
    generator = torch.Generator().manual_seed(seed)

    def answer_of(ids: list[int]) -> str:
        return tokenizer.decode(ids, skip_special_tokens=True).strip()

    model.eval()
    with torch.no_grad(), decoding_attention(model):
        for batch in balanced_batches(order, batch_size):
            new = decode_batch(
                model,
                rows[0][:shared],
                [rows[i][shared:] for i in batch],
                max_new_tokens,
                tokenizer.pad_token_id,
                temperature,
                generator,
                None if until is None else lambda ids: until(answer_of(ids)),
            )
            for i, ids in zip(batch, new, strict=True):
                answers[i] = answer_of(ids)
    return answers
