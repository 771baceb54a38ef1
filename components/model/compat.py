"""Whether models can be combined weight by weight: the same architecture, tensors, shapes and tokenizer, and close
enough to one another to share a base. Merging, realignment and pruning all ask this before they combine weights."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from components.errors import InputError
from components.hashing import file_sha256
from components.model.tensors import LazyModel

ARCHITECTURE_KEYS = (
    "model_type",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "intermediate_size",
    "vocab_size",
)


def read_config(path: Path) -> dict:
    return json.loads((path / "config.json").read_text())


class Drift:
    """How far each model's weights lie from the reference's, ‖θ − θ_ref‖ / ‖θ_ref‖, summed tensor by tensor."""

    def __init__(self, reference: Path, others: list[Path], limit: float):
        self.reference, self.others, self.limit = reference, others, limit
        self.squared_delta, self.squared_ref = [0.0] * len(others), 0.0

    def add(self, reference: torch.Tensor, others: list[torch.Tensor]) -> None:
        ref = reference.float()
        self.squared_ref += float(ref.pow(2).sum())
        for i, tensor in enumerate(others):
            self.squared_delta[i] += float((tensor.float() - ref).pow(2).sum())

    def check(self) -> None:
        """InputError naming the first model farther than the limit: not fine-tuned from the same base."""
        for path, squared in zip(self.others, self.squared_delta, strict=True):
            relative = math.sqrt(squared / max(self.squared_ref, 1e-30))
            if relative > self.limit:
                raise InputError(
                    f"{path}: its weights differ from {self.reference} by {relative:.2f} of their norm "
                    f"(limit {self.limit}); it does not look fine-tuned from the same base"
                )


def check_compatible(reference: Path, others: list[Path], max_relative_delta: float, read_weights: bool = True) -> None:
    """Same architecture, tensors, shapes and tokenizer as `reference`, and close enough to it to share its base
    (that last check reads every tensor; `read_weights=False` leaves it to a caller that reads them anyway)."""
    ref_config, ref = read_config(reference), LazyModel(reference)
    ref_names = ref.names()
    for path in others:
        config = read_config(path)
        for key in ARCHITECTURE_KEYS:
            if config.get(key) != ref_config.get(key):
                raise InputError(
                    f"{path}: config.json {key} = {config.get(key)!r}, but {reference} has "
                    f"{ref_config.get(key)!r}: not the same architecture"
                )
        model = LazyModel(path)
        missing = [n for n in ref_names if n not in model.files] or [n for n in model.names() if n not in ref.files]
        if missing:
            raise InputError(f"{path}: tensor {missing[0]!r} is in one model and not the other ({reference})")
        for name in ref_names:
            if model.shape(name) != ref.shape(name):
                raise InputError(
                    f"{path}: tensor {name!r} has shape {model.shape(name)}, {reference} has {ref.shape(name)}"
                )
        for folder in (reference, path):
            if not (folder / "tokenizer.json").is_file():
                raise InputError(
                    f"{folder / 'tokenizer.json'}: missing; the merge compares the models' tokenizers "
                    "by it (save the tokenizer with a fast tokenizer's tokenizer.json)"
                )
        if file_sha256(path / "tokenizer.json") != file_sha256(reference / "tokenizer.json"):
            raise InputError(
                f"{path / 'tokenizer.json'}: differs from {reference / 'tokenizer.json'}; "
                f"merged models must share one tokenizer and vocabulary"
            )
        if read_weights:
            drift = Drift(reference, [path], max_relative_delta)
            for name in ref_names:
                drift.add(ref.get(name), [model.get(name)])
            drift.check()
