"""Batched chat generation: left-padded, one answer per prompt; greedy, or sampled with a fixed seed."""

from __future__ import annotations

import torch


def balanced_batches(order: list[int], batch_size: int) -> list[list[int]]:
    """`order` cut into the fewest batches of at most `batch_size`, their sizes within one of each other: 150 prompts
    at 64 go as 50 + 50 + 50, not 64 + 64 + 22 (a small batch decodes at a fraction of a large one's rate)."""
    count = -(-len(order) // batch_size)
    return [order[i * len(order) // count : (i + 1) * len(order) // count] for i in range(count)]


def generate_answers(
    model,
    tokenizer,
    prompts: list[str],
    max_new_tokens: int = 64,
    batch_size: int = 8,
    temperature: float = 0.0,
    seed: int = 0,
) -> list[str]:
    """Answer to each prompt as a single user message, formatted with the model's chat template.

    temperature 0 is greedy decoding; above 0, sampling from a generator seeded with `seed`.
    """
    texts = [
        tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False)
        for p in prompts
    ]
    # Prompts of similar length share a batch (less padding to compute); answers come back in the prompts' order.
    order = sorted(range(len(texts)), key=lambda i: len(tokenizer(texts[i], add_special_tokens=False)["input_ids"]))
    answers: list[str] = [""] * len(texts)
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # so every row's answer starts right after its own prompt
    try:
        model.eval()
        torch.manual_seed(seed)
        sampling = dict(do_sample=True, temperature=temperature, top_k=0) if temperature > 0 else dict(do_sample=False)
        for batch in balanced_batches(order, batch_size):
            inputs = tokenizer(
                [texts[i] for i in batch], return_tensors="pt", padding=True, add_special_tokens=False
            ).to(model.device)
            with torch.no_grad():
                output = model.generate(
                    **inputs,
                    max_new_tokens=max_new_tokens,
                    pad_token_id=tokenizer.pad_token_id,
                    cache_implementation="static",  # keys and values written in place, not concatenated each step
                    disable_compile=True,  # a static cache would have transformers compile the model on a GPU
                    **sampling,
                )
            new = output[:, inputs["input_ids"].shape[1] :]
            for i, answer in zip(batch, tokenizer.batch_decode(new, skip_special_tokens=True), strict=True):
                answers[i] = answer.strip()
    finally:
        tokenizer.padding_side = side
    return answers
