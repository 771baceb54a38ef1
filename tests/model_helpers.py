"""Small models and merges the tests build: fine-tuned stand-ins, recipes over them, their tensors."""

import json
import shutil
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from components.merge.recipe import Recipe
from components.model.tensors import LazyModel


def fine_tune(base: Path, out: Path, seed: int, scale: float = 0.002) -> Path:
    """A stand-in for a fine-tuned expert: the base weights plus small seeded noise."""
    shutil.copytree(base, out)
    model = AutoModelForCausalLM.from_pretrained(base)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(scale * torch.randn(parameter.shape, generator=generator))
    model.save_pretrained(out)
    return out


def recipe(
    models: dict[str, Path], method: str, entries: list[tuple[str, dict]], parameters: dict, base=True
) -> Recipe:
    return Recipe(
        merge_method=method,
        base_model=str(models["base"]) if base else None,
        dtype="float32",
        models=[{"model": str(models[name]), "parameters": p} for name, p in entries],
        parameters=parameters,
    )


def tensors(path: Path) -> dict[str, torch.Tensor]:
    lazy = LazyModel(path)
    return {name: lazy.get(name) for name in lazy.names()}


def realign_inputs(tmp_path, tiny_base):
    """(aligned, fine-tuned, refusal demonstrations): two noisy copies of the tiny model and four refusals."""
    aligned, finetuned = fine_tune(tiny_base, tmp_path / "aligned", 1), fine_tune(tiny_base, tmp_path / "ft", 2)
    data = tmp_path / "harmful.jsonl"
    data.write_text(
        "".join(
            json.dumps({"prompt": f"Do harm {i}", "completion": "I can't help with that."}) + "\n" for i in range(4)
        )
    )
    return aligned, finetuned, data
