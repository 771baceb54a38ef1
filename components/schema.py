"""What every parameter schema shares: strict models (an unknown key is an error, a value cannot be ±inf or NaN),
paths relative to params.yaml's folder, and bounds where a value past them can only be a typo."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationInfo

Dtype = Literal["float32", "bfloat16", "float16"]


def _resolve_path(value: Path, info: ValidationInfo) -> Path:
    base_dir = (info.context or {}).get("base_dir", Path.cwd())
    return (Path(base_dir) / value.expanduser()).resolve()


def _must_exist(value: Path) -> Path:
    if not value.exists():
        raise ValueError(f"{value} does not exist")
    return value


# A path relative to params.yaml's folder; `ExistingPath` must also exist when the params are loaded.
RelPath = Annotated[Path, AfterValidator(_resolve_path)]
ExistingPath = Annotated[Path, AfterValidator(_resolve_path), AfterValidator(_must_exist)]


# Bounds where a value past them can only be a typo (1e12 steps, a batch of a billion): refused at load, named.
BatchSize = Annotated[int, Field(gt=0, le=4096)]
StepCount = Annotated[int, Field(gt=0, le=1_000_000)]
TokenCount = Annotated[int, Field(gt=0, le=131_072)]


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
