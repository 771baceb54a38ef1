"""Batched chat generation: left-padded, one answer per prompt; greedy, or sampled with a fixed seed."""

from __future__ import annotations

import torch


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
    answers: list[str] = []
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # so every row's answer starts right after its own prompt
    try:
        model.eval()
        torch.manual_seed(seed)
        sampling = dict(do_sample=True, temperature=temperature, top_k=0) if temperature > 0 else dict(do_sample=False)
        for start in range(0, len(prompts), batch_size):
            texts = [
                tokenizer.apply_chat_template(
                    [{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False
                )
                for p in prompts[start : start + batch_size]
            ]
            inputs = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
            with torch.no_grad():
                output = model.generate(
                    **inputs, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id, **sampling
                )
            new = output[:, inputs["input_ids"].shape[1] :]
            answers += [a.strip() for a in tokenizer.batch_decode(new, skip_special_tokens=True)]
    finally:
        tokenizer.padding_side = side
    return answers
