"""The registry of stages, in pipeline order: what each one reads, writes, and which params it depends on.

The same names are the stage names of dvc.yaml; `python -m flows stages` prints this table.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from components.config import Params
from components.model.base import build_base_model
from components.stage import StageResult


@dataclass(frozen=True)
class Stage:
    name: str
    summary: str
    reads: str
    writes: str
    param_keys: tuple[str, ...]
    run: Callable[[Params], StageResult]


STAGES: tuple[Stage, ...] = (
    Stage(
        name="base-model",
        summary="Turn the configured source into a Hugging Face model directory (fp32 safetensors, tokenizer, "
        "chat template, generation config); rebuilt only when the source or its params change.",
        reads="params base_model: the embedded SmolLM2 GGUF, a GGUF file, a model directory, a Hub id, or a random config",
        writes="<workspace>/<profile>/base_model/",
        param_keys=("base_model",),
        run=lambda params: build_base_model(params.base_model, params.run_dir / "base_model"),
    ),
)

BY_NAME = {stage.name: stage for stage in STAGES}


def describe() -> str:
    lines = []
    for stage in STAGES:
        lines += [f"  {stage.name}", f"      {stage.summary}", f"      reads:  {stage.reads}", f"      writes: {stage.writes}"]
    return "\n".join(lines)
