"""The registry of stages, in pipeline order: what each one reads, writes, and which params it depends on.

The same names are the stage names of dvc.yaml; `python -m flows stages` prints this table.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from components.config import Params
from components.data.curate import curate
from components.data.sources import build_sources
from components.data.validate import validate
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
    Stage(
        name="sources",
        summary="Bring every raw table in as JSONL with licence and provenance: Python docs corpus and docstring Q/A, "
        "generated math, HarmBench and Do-Not-Answer with refusal targets, benign look-alikes, the user's own tables.",
        reads="params data.sources and data.user (the user's JSONL / CSV / Parquet files)",
        writes="<workspace>/<profile>/data/raw/{<dataset>.jsonl, manifest.json}",
        param_keys=("data",),
        run=lambda params: build_sources(params.data, params.run_dir / "data" / "raw"),
    ),
    Stage(
        name="curate",
        summary="Normalise, filter by length and quality, remove exact and near duplicates and harmful content, "
        "split train/val/test by group, drop eval rows that near-duplicate train rows; report every removal.",
        reads="<workspace>/<profile>/data/raw/, params data.curate (and base_model/ if the confidence filter is on)",
        writes="<workspace>/<profile>/data/curated/{<dataset>/{train,val,test}.jsonl, report.json, report.md}",
        param_keys=("data",),
        run=lambda params: curate(params.run_dir / "data" / "raw", params.data.curate, params.seed,
                                  params.run_dir / "data" / "curated", params.run_dir / "base_model"),
    ),
    Stage(
        name="validate",
        summary="Great Expectations suites on every curated table (schema, nulls, uniqueness, lengths, role order, "
        "math answers, disjoint splits); a failed expectation stops the run with a report of the rows at fault.",
        reads="<workspace>/<profile>/data/curated/",
        writes="<workspace>/<profile>/data/validation/{report.json, report.md}",
        param_keys=("data",),
        run=lambda params: validate(params.run_dir / "data" / "curated", params.data.curate,
                                    params.run_dir / "data" / "validation"),
    ),
)

BY_NAME = {stage.name: stage for stage in STAGES}


def describe() -> str:
    lines = []
    for stage in STAGES:
        lines += [f"  {stage.name}", f"      {stage.summary}", f"      reads:  {stage.reads}", f"      writes: {stage.writes}"]
    return "\n".join(lines)
