"""Merging on the profile's models: our streamed methods against mergekit's TIES and against merely reading
every input tensor and writing the output, with each run's peak memory (fresh process per measurement)."""

from __future__ import annotations

import shutil
from pathlib import Path

from benchmarks.runner import Report, benchmark, measured
from components.config import Params
from components.merge.recipe import Recipe
from components.merge.tensors import LazyModel, ShardWriter

EXPERTS = ("domain", "math", "safety")


def _recipe(params: Params, method: str) -> Recipe:
    per_model = {"ties": {"density": 0.5, "weight": 1.0}, "task_arithmetic": {"weight": 1.0}, "pcb": {}}[method]
    return Recipe(
        merge_method=method,
        base_model=str(params.ws.base_model),
        dtype="float32",
        models=[{"model": str(params.ws.job_model(e)), "parameters": per_model} for e in EXPERTS],
        parameters={"pcb_ratio": 0.1} if method == "pcb" else {},
    )


def _ours(recipe: Recipe, out: Path) -> None:
    """The whole engine path, as the pipeline runs it: pre-merge checks (which read every tensor once), merge, card."""
    from components.merge.engine import run_recipe

    run_recipe(recipe, out)


def _mergekit(recipe: Recipe, out: Path) -> None:
    from components.merge.engine import _mergekit as run

    out.mkdir()
    run(recipe, out)


def _read_and_write(recipe: Recipe, out: Path) -> None:
    """The floor: read each tensor of the base and every expert, write one tensor per name."""
    out.mkdir()
    models = [LazyModel(Path(recipe.base_model))] + [LazyModel(Path(m.model)) for m in recipe.models]
    writer = ShardWriter(out)
    for name in models[0].names():
        tensors = [m.get(name) for m in models]
        writer.add(name, tensors[-1])
    writer.close()


@benchmark("merge")
def merge(params: Params, scratch: Path) -> Report:
    missing = [e for e in EXPERTS if not (params.ws.job_model(e)).is_dir()]
    if missing:
        raise SystemExit(f"merge benchmark: train {missing} first (python -m flows run --profile {params.profile})")
    report = Report("merge", baseline="read all inputs + write output")
    runs = [
        ("read all inputs + write output", _read_and_write, "ties"),
        ("ours: ties", _ours, "ties"),
        ("mergekit: ties", _mergekit, "ties"),
        ("ours: task_arithmetic", _ours, "task_arithmetic"),
        ("ours: pcb", _ours, "pcb"),
    ]
    for label, target, method in runs:
        out = scratch / label.replace(" ", "_").replace(":", "")
        seconds, peak_mb, _ = measured(target, _recipe(params, method), out)
        report.seconds[label] = seconds
        report.notes[f"peak RSS, {label}"] = f"{peak_mb:.0f} MB"
        shutil.rmtree(out, ignore_errors=True)
    size = sum(p.stat().st_size for p in (params.ws.base_model).glob("*.safetensors"))
    report.notes["inputs"] = f"base + {len(EXPERTS)} experts, {size / 1e6:.0f} MB each"
    return report
