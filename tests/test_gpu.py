"""On a CUDA machine: the stages that run a model outside a trainer put it on the GPU (components/model/device.py)
and compute what the CPU computes; a LoRA job trains in bf16 with gradient checkpointing, as the gpu profile does.
Skipped where there is no GPU (CI); run on one with `pytest tests/test_gpu.py`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

import components.model.device as device
from components.config import load_params, parse_overrides
from components.evaluate.config import EvaluateConfig
from components.safety.config import PruneConfig, RealignConfig
from tests.conftest import REPO
from tests.model_helpers import fine_tune, realign_inputs

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def on_gpu_and_cpu(monkeypatch, run):
    """`run()` with models on the GPU, then on the CPU; the GPU run must have allocated at least a model's worth."""
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    on_gpu = run()
    peak = torch.cuda.max_memory_allocated()
    with monkeypatch.context() as patch:
        patch.setattr(device, "compute_device", lambda: torch.device("cpu"))
        on_cpu = run()
    return on_gpu, on_cpu, peak


def model_bytes(path: Path) -> int:
    return sum(t.numel() * t.element_size() for t in AutoModelForCausalLM.from_pretrained(path).state_dict().values())


def test_evaluation_runs_on_the_gpu_with_the_cpus_numbers(tiny_base: Path, curated: Path, monkeypatch):
    from components.evaluate.suite import evaluate_model

    cfg = EvaluateConfig(math_new_tokens=4, safety_new_tokens=4, batch_size=4)
    (gpu, gpu_samples), (cpu, cpu_samples), peak = on_gpu_and_cpu(
        monkeypatch, lambda: evaluate_model(tiny_base, curated, cfg)
    )
    assert peak >= model_bytes(tiny_base)
    assert gpu.keys() == cpu.keys()
    assert gpu["domain_perplexity"] == pytest.approx(cpu["domain_perplexity"], rel=1e-4)
    assert len(gpu_samples) == len(cpu_samples)


def test_realign_runs_on_the_gpu_and_learns_the_cpus_mask(tmp_path: Path, tiny_base: Path, monkeypatch):
    from components.safety.realign import realign_model

    aligned, finetuned, data = realign_inputs(tmp_path, tiny_base)
    cfg = RealignConfig(model="ft", steps=10, lr=0.5, sparsity=0.0, batch_size=2)
    runs = iter(("gpu", "cpu"))
    gpu, cpu, peak = on_gpu_and_cpu(
        monkeypatch, lambda: realign_model(aligned, finetuned, data, cfg, tmp_path / next(runs)).metrics
    )
    assert peak >= 2 * model_bytes(tiny_base)  # the fine-tuned model and the aligned weights
    assert gpu["masked_weights"] > 0
    # Adam's sign-like steps can flip a coordinate whose gradient is a rounding error from zero
    assert gpu["masked_weights"] == pytest.approx(cpu["masked_weights"], rel=0.01)


def test_prune_runs_on_the_gpu_and_reverts_what_the_cpu_reverts(tmp_path: Path, tiny_base: Path, monkeypatch):
    from components.safety.prune import prune_model

    aligned, finetuned = fine_tune(tiny_base, tmp_path / "aligned", 1), fine_tune(tiny_base, tmp_path / "ft", 2)
    calibration = tmp_path / "harmful.jsonl"
    calibration.write_text(
        "".join(json.dumps({"prompt": f"Harm {i}", "completion": f"Sure, step {i}..."}) + "\n" for i in range(4))
    )
    runs = iter(("gpu", "cpu"))
    cfg = PruneConfig(ratio=0.25, batch_size=2)
    gpu, cpu, peak = on_gpu_and_cpu(
        monkeypatch, lambda: prune_model(finetuned, aligned, calibration, cfg, tmp_path / next(runs)).metrics
    )
    assert peak >= 2 * model_bytes(tiny_base)
    assert gpu["reverted_weights"] == cpu["reverted_weights"] > 0
    on_gpu, on_cpu = (AutoModelForCausalLM.from_pretrained(tmp_path / run).state_dict() for run in ("gpu", "cpu"))
    same = sum(int((on_gpu[n] == on_cpu[n]).sum()) for n in on_gpu)
    assert same >= 0.999 * sum(t.numel() for t in on_gpu.values()), "the same entries reverted"


def test_a_lora_job_trains_on_the_gpu_in_bf16_with_gradient_checkpointing(tmp_path: Path, tiny_base: Path):
    from datasets import Dataset

    from components.train.job import trainer_for

    job = load_params(
        REPO / "params.yaml",
        "tiny",
        parse_overrides(["train.jobs.math.bf16=true", "train.jobs.math.gradient_checkpointing=true"]),
    ).train.jobs["math"]
    model, tokenizer = device.load_model(tiny_base)
    rows = [{"prompt": f"What is {i} + {i}?", "completion": f"{2 * i}"} for i in range(8)]
    trainer = trainer_for(job, model.to(torch.bfloat16), tokenizer, Dataset.from_list(rows), None, tmp_path, [])
    result = trainer.train()
    assert trainer.args.bf16 and trainer.args.gradient_checkpointing
    assert next(trainer.model.parameters()).device.type == "cuda"
    assert trainer.state.global_step == job.max_steps and torch.isfinite(torch.tensor(result.training_loss))
