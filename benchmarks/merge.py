"""Merging on the profile's models: our streamed methods against mergekit's TIES and against merely reading
every input tensor and writing the output, with each run's peak memory (fresh process per measurement)."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from benchmarks.runner import Report, benchmark, measured
from components.config import Params
from components.merge.recipe import Recipe
from components.model.tensors import LazyModel, ShardWriter

EXPERTS = ("domain", "math", "safety")


def _recipe(params: Params, method: str, dtype: str = "float32", whole_model: bool = False) -> Recipe:
    per_model = {"ties": {"density": 0.5, "weight": 1.0}, "task_arithmetic": {"weight": 1.0}, "pcb": {}}[method]
    return Recipe(
        merge_method=method,
        base_model=str(params.ws.base_model),
        dtype=dtype,
        models=[{"model": str(params.ws.job_model(e)), "parameters": per_model} for e in EXPERTS],
        parameters={"pcb_ratio": 0.1, "whole_model": whole_model} if method == "pcb" else {},
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
    names = models[0].names()
    dtype = models[-1].get(names[0]).dtype  # the tensors written are the last model's
    writer = ShardWriter(out, [(n, models[0].shape(n)) for n in names], dtype)
    for name in names:
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
        ("read all inputs + write output", _read_and_write, _recipe(params, "ties")),
        ("ours: ties", _ours, _recipe(params, "ties")),
        ("mergekit: ties", _mergekit, _recipe(params, "ties")),
        ("ours: task_arithmetic", _ours, _recipe(params, "task_arithmetic")),
        ("mergekit: task_arithmetic", _mergekit, _recipe(params, "task_arithmetic")),
        ("ours: pcb", _ours, _recipe(params, "pcb")),
        ("ours: pcb, whole model", _ours, _recipe(params, "pcb", whole_model=True)),
    ]
    for label, target, recipe in runs:
        out = scratch / label.replace(" ", "_").replace(":", "").replace(",", "")
        seconds, peak_mb, _ = measured(target, recipe, out)
        report.seconds[label] = seconds
        report.notes[f"peak RSS, {label}"] = f"{peak_mb:.0f} MB"
        shutil.rmtree(out, ignore_errors=True)
    report.notes.update(_low_precision(params, scratch))
    size = sum(p.stat().st_size for p in (params.ws.base_model).glob("*.safetensors"))
    report.notes["inputs"] = f"base + {len(EXPERTS)} experts, {size / 1e6:.0f} MB each"
    return report


def _low_precision(params: Params, scratch: Path) -> dict[str, str]:
    """TIES in bfloat16: ours (float32, rounded once) and mergekit's (computed in bfloat16), each against mergekit's
    float64 result rounded to bfloat16: how many entries differ, and by how much."""
    outs = {"ours": scratch / "bf16_ours", "mergekit": scratch / "bf16_mergekit", "reference": scratch / "f64"}
    _ours(_recipe(params, "ties", "bfloat16"), outs["ours"])
    _mergekit(_recipe(params, "ties", "bfloat16"), outs["mergekit"])
    _mergekit(_recipe(params, "ties", "float64"), outs["reference"])
    models = {k: LazyModel(v) for k, v in outs.items()}
    counts = {"ours": [0, 0.0], "mergekit": [0, 0.0]}
    total = 0
    for name in models["reference"].names():
        reference = models["reference"].get(name).to(torch.bfloat16).float()
        total += reference.numel()
        for engine in counts:
            difference = (models[engine].get(name).float() - reference).abs()
            counts[engine][0] += int((difference > 0).sum())
            counts[engine][1] = max(counts[engine][1], float(difference.max()))
    for out in outs.values():
        shutil.rmtree(out, ignore_errors=True)
    return {
        f"bf16 TIES, {engine} vs float64 rounded to bf16": f"{n:,} of {total:,} entries differ, max {worst:.2g}"
        for engine, (n, worst) in counts.items()
    }
