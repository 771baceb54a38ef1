"""Training throughput of each train job's TRL trainer on the profile's base model, against plain PyTorch.

The baseline is the same work without any trainer: forward, backward and an AdamW step of the same
LoRA-wrapped model on random rows of the job's shape (batch size × max length), so the ratio of throughputs
shows what the trainer's data handling, loss and logging add (the target: at least 0.8). For DPO the baseline
is a plain DPO step: the policy on both answers of each pair, the reference (adapter off) without gradients.
Each measurement runs in a fresh process; a job's tokens are those the trainer counted (padding included).
"""

from __future__ import annotations

from pathlib import Path

from benchmarks.runner import Report, benchmark, measured
from components.config import Params
from components.train.config import TrainJob

STEPS = 6


def _trainer_run(params: Params, name: str, out: Path) -> float:
    from components.train.job import run_job

    job = params.train.jobs[name].model_copy(update={"max_steps": STEPS, "save_steps": STEPS, "eval_rows": 0})
    result = run_job(name, job, params.ws.base_model, params.ws, out / "model", out / "work")
    return result.metrics["tokens_per_second"]


def _plain_torch(model_dir: Path, job: TrainJob, steps: int) -> float:
    """Tokens per second of plain LoRA steps on random rows of the job's shape; DPO's step as DPO computes it."""
    import time

    import torch
    import torch.nn.functional as F
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from components.train.job import lora_config

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(model_dir), lora_config(job))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=job.learning_rate)
    rows = 2 * job.batch_size if job.method == "dpo" else job.batch_size  # a pair is a chosen and a rejected row
    ids = torch.randint(0, model.config.vocab_size, (rows, job.max_length))

    def sequence_logps() -> torch.Tensor:
        logps = torch.log_softmax(model(input_ids=ids).logits[:, :-1], dim=-1)
        return logps.gather(-1, ids[:, 1:, None])[..., 0].sum(-1)

    def loss() -> torch.Tensor:
        if job.method != "dpo":
            return model(input_ids=ids, labels=ids).loss
        with torch.no_grad(), model.disable_adapter():
            reference = sequence_logps()
        chosen, rejected = (sequence_logps() - reference).chunk(2)
        return -F.logsigmoid(job.beta * (chosen - rejected)).mean()

    def step() -> None:
        loss().backward()
        optimizer.step()
        optimizer.zero_grad()

    step()  # the first step allocates; the trainer's figure includes its own first step
    start = time.perf_counter()
    for _ in range(steps - 1):
        step()
    return (steps - 1) * ids.numel() / (time.perf_counter() - start)


@benchmark("train")
def train(params: Params, scratch: Path) -> Report:
    if not params.ws.pairs.is_dir():
        raise SystemExit(
            f"train benchmark: run the data and pairs stages first (python -m flows run --profile {params.profile})"
        )
    report = Report("train", baseline="")
    for name, job in params.train.jobs.items():
        plain = f"{name}: plain torch, 1k tokens"
        report.baseline = report.baseline or plain
        _, peak, plain_rate = measured(_plain_torch, params.ws.base_model, job, STEPS)
        report.seconds[plain] = 1000 / plain_rate
        _, trainer_peak, rate = measured(_trainer_run, params, name, scratch / name)
        report.seconds[f"{name}: {job.method} with TRL, 1k tokens"] = 1000 / rate
        report.notes[f"{name}: throughput, TRL / plain torch"] = (
            f"{rate / plain_rate:.2f} ({rate:.0f} vs {plain_rate:.0f} tokens/s; "
            f"peak RSS {trainer_peak:.0f} vs {peak:.0f} MB; batch {job.batch_size} x {job.max_length})"
        )
    report.notes["note"] = f"{STEPS} steps each; the trainer's time includes its first step, the baseline's does not"
    return report
