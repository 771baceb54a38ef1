"""Answer one chat prompt with a model directory: the quickest check that a model still talks."""

from __future__ import annotations

from pathlib import Path

from components.model.device import load_model
from components.model.directory import check_model_dir
from components.model.generate import generate_answers


def chat(model_dir: Path, prompt: str, max_new_tokens: int = 64) -> str:
    """Greedy answer of the model in `model_dir` to one user message, formatted with its chat template."""
    check_model_dir(model_dir)
    model, tokenizer = load_model(model_dir)
    return generate_answers(model, tokenizer, [prompt], max_new_tokens, batch_size=1)[0]
