"""Training throughput of each TRL trainer on the profile's base model, against a plain PyTorch baseline.

The baseline is the same work without any trainer: forward, backward and an AdamW step of a LoRA-wrapped
model on batches of the same shape (batch size × max length tokens), so the ratio shows what the trainers'
data handling, logging and checkpointing add. Each measurement runs in a fresh process.
"""

from __future__ import annotations

from pathlib import Path

from benchmarks.runner import Report, benchmark, measured
from components.config import Params, TrainJob

STEPS = 6
METHODS = {"cpt": "domain_corpus", "sft": "math", "dpo": "refusal_pairs", "orpo": "refusal_pairs"}


def _trainer_run(params: Params, method: str, dataset: str, out: Path) -> float:
    from components.train.job import run_job

    job = params.train.jobs["math"].model_copy(
        update={"method": method, "datasets": [dataset], "max_steps": STEPS, "save_steps": STEPS, "eval_rows": 0}
    )
    result = run_job("math", job, params.ws.base_model, params.ws, out / "model", out / "work")
    return result.metrics["samples_per_second"]


def _plain_torch(model_dir: Path, job: TrainJob, steps: int) -> float:
    import time

    import torch
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from components.train.job import lora_config

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(model_dir), lora_config(job))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=job.learning_rate)
    ids = torch.randint(0, model.config.vocab_size, (job.batch_size, 128))
    start = time.perf_counter()
    for _ in range(steps):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return steps * job.batch_size / (time.perf_counter() - start)


@benchmark("train")
def train(params: Params, scratch: Path) -> Report:
    if not (params.ws.pairs).is_dir():
        raise SystemExit(
            f"train benchmark: run the data and pairs stages first (python -m flows run --profile {params.profile})"
        )
    report = Report("train", baseline="plain torch LoRA step, 128-token rows")
    job = params.train.jobs["math"]
    seconds, peak, rate = measured(_plain_torch, params.ws.base_model, job, STEPS)
    report.seconds[report.baseline] = seconds
    report.notes[f"{report.baseline}: rows/s"] = f"{rate:.2f}; peak RSS {peak:.0f} MB"
    for method, datasets in METHODS.items():
        seconds, peak, rate = measured(_trainer_run, params, method, datasets, scratch / method)
        report.seconds[f"{method}: {STEPS} steps with TRL"] = seconds
        report.notes[f"{method}: rows/s"] = f"{rate:.2f}; peak RSS {peak:.0f} MB"
    report.notes["note"] = (
        f"{STEPS} steps each, batch {job.batch_size}; trainer times include tokenizing the "
        "dataset and loading the model, the baseline's do not"
    )
    return report
