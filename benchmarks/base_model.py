"""Base-model stage against the I/O floor: reading the source file and writing the same bytes as safetensors."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from benchmarks.runner import Report, benchmark
from components.config import Params
from components.model.base import build_base_model, embedded_gguf
from components.model.config import EmbeddedModel, GGUFModel


@benchmark("base_model")
def base_model(params: Params, scratch: Path) -> Report:
    report = Report("base_model", baseline="read source + write same bytes")
    cfg = params.base_model
    source = embedded_gguf(cfg) if isinstance(cfg, EmbeddedModel) else cfg.path if isinstance(cfg, GGUFModel) else None

    out = scratch / "base_model"
    with report.time("build (cold)"):
        result = build_base_model(cfg, out)
    with report.time("build again (cached)"):
        build_base_model(cfg, out)

    size = int(result.metrics["size_bytes"])
    with report.time("read source + write same bytes"):
        if source is not None:
            source.read_bytes()
        save_file({"blob": torch.empty(size // 4, dtype=torch.float32)}, str(scratch / "floor.safetensors"))
    report.notes["output"] = f"{size / 1e6:.0f} MB, {result.metrics['parameters'] / 1e6:.1f}M parameters"
    return report
