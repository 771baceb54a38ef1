"""Where the stages that run a model outside a trainer (evaluation, pairs, chat, the probe judge, confidence
filtering, realign, prune) put it: the CUDA GPU when there is one, else the CPU. Training places itself
(accelerate). `CUDA_VISIBLE_DEVICES=` (empty) keeps everything on the CPU."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


def compute_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def native_bfloat16() -> bool:
    """Whether bfloat16 matrix products run natively here: a GPU, or a CPU with AVX-512 BF16 or AMX (elsewhere
    torch emulates them, slower than float32)."""
    if compute_device().type == "cuda":
        return True
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def load_model(model_dir: Path, dtype: str = "auto"):
    """(model on `compute_device()`, tokenizer) of a model directory, without touching the network; `dtype` is
    what its weights and activations are computed in ("auto": the checkpoint's own)."""
    if dtype == "bfloat16" and not native_bfloat16():
        logging.getLogger("posttrain.model").warning(
            "%s: computing in bfloat16 on a CPU without AVX-512 BF16 or AMX, where torch emulates it (slower than "
            "float32); set the dtype to float32",
            model_dir,
        )
    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True, dtype=dtype).to(compute_device())
    return model, tokenizer


def load_weights(model_dir: Path) -> dict[str, torch.Tensor]:
    """The state dict of a model directory, on `compute_device()` (a reference model beside the one being changed)."""
    return AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True).to(compute_device()).state_dict()


def on_device(batch: Mapping[str, torch.Tensor], model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A batch of model inputs moved to where the model's weights are (a no-op on the CPU); any torch module."""
    where = next(model.parameters()).device
    return {key: value.to(where) for key, value in batch.items()}
