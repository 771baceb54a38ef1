"""One training job with a TRL trainer and a PEFT adapter; resumable; hands on a full model directory.

cpt: SFTTrainer on plain text with packing (causal LM loss on every token).
sft: SFTTrainer on conversational prompt/completion rows, loss on the completion only.
dpo: DPOTrainer on prompt/chosen/rejected; the reference model is the same weights with the adapter off.
orpo: TRL's ORPOTrainer (trl.experimental) on the same preference rows, no reference model.

Checkpoints go to <work_dir>/checkpoints every `save_steps`; a job started again with the same inputs
resumes from the last checkpoint (same step count, optimizer and scheduler state) instead of step 0.
When training ends the adapter is merged into the weights and written, with the tokenizer and chat
template, as a normal model directory: the next stage never needs to know about adapters.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path

import torch
from accelerate import PartialState
from datasets import Dataset
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoTokenizer, PrinterCallback, TrainerCallback, TrainerState

from components import progress, resources
from components.atomic import atomic_dir
from components.errors import InputError
from components.model.directory import check_model_dir
from components.model.loss import next_token_loss
from components.stage import StageCache, StageResult
from components.train.config import TrainJob
from components.train.data import harmful_mix_table, job_rows, job_tables
from components.workspace import Workspace

JOB_STATE = "job.json"
STEP_LOG = logging.getLogger("posttrain.train")


def check_lora_targets(job_name: str, job: TrainJob, model) -> None:
    if job.lora.target_modules == "all-linear":
        return
    names = {name.rsplit(".", 1)[-1] for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)}
    missing = [target for target in job.lora.target_modules if target not in names]
    if missing:
        raise InputError(
            f"train.jobs.{job_name}.lora.target_modules: {missing} match no linear layer of the model "
            f"(it has: {', '.join(sorted(names))})"
        )


def lora_config(job: TrainJob) -> LoraConfig:
    return LoraConfig(
        r=job.lora.r,
        lora_alpha=job.lora.alpha,
        lora_dropout=job.lora.dropout,
        target_modules=job.lora.target_modules,
        use_dora=job.lora.use_dora,
        task_type="CAUSAL_LM",
    )


class ReportProgress(TrainerCallback):
    """Steps done over max steps, to whoever listens (components.progress): the Prefect UI shows it live.

    Each step's numbers (loss, learning rate, ...) go to the `posttrain.train` logger, in place of the
    Trainer's own printing of them: the command line sends that logger to the run's log file unless -v."""

    def on_step_end(self, args, state, control, **kwargs):
        progress.report("train", state.global_step / state.max_steps if state.max_steps else 0.0)

    def on_log(self, args, state, control, logs=None, **kwargs):
        STEP_LOG.info("step %d: %s", state.global_step, json.dumps(logs, default=str))


def sft_trainer_class() -> type:
    """TRL's SFTTrainer; on a CPU, one whose loss runs the LM head over the labelled positions only.

    TRL computes the SFT loss through a fused, chunked LM head that never holds the full logits: on a GPU it
    saves memory, on a CPU it recomputes the head's tiles in the backward pass and adds entropy and top-1
    statistics for logging, 35% of a step on SmolLM2-135M (benchmarks/train.py). The CPU variant computes the head
    only where a label is, a slice at a time, with each slice's gradient formed in the forward pass
    (`components.model.loss`): the gradient is the model's own loss's bit for bit, without its full-vocabulary
    logits (which cost memory, and time on the prompt and padding positions that have no label). The logged
    entropy and mean_token_accuracy are what it gives up. A model wrapped for distributed training, or one whose
    head is trained, gets the model's own loss.
    """
    from transformers import Trainer
    from trl import SFTTrainer

    if torch.cuda.is_available():
        return SFTTrainer

    class LabelledHeadSFTTrainer(SFTTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if return_outputs or self.accelerator.unwrap_model(model) is not model:
                return Trainer.compute_loss(self, model, inputs, return_outputs, num_items_in_batch)
            return next_token_loss(model, inputs, num_items_in_batch if self.model_accepts_loss_kwargs else None)

    return LabelledHeadSFTTrainer


def trainer_for(
    job: TrainJob, model, tokenizer, train: Dataset, evaluation: Dataset | None, output_dir: Path, report_to: list[str]
):
    """The TRL trainer and config pair for the job's method, with the settings every method shares."""
    common = dict(
        output_dir=str(output_dir),
        max_steps=job.max_steps,
        per_device_train_batch_size=job.batch_size,
        per_device_eval_batch_size=job.batch_size,
        gradient_accumulation_steps=job.grad_accum,
        learning_rate=job.learning_rate,
        warmup_steps=int(job.warmup_ratio * job.max_steps),
        logging_steps=1,
        save_strategy="steps",
        save_steps=job.save_steps,
        save_total_limit=2,
        report_to=report_to,
        seed=job.seed,
        data_seed=job.seed,
        bf16=job.bf16,
        gradient_checkpointing=job.gradient_checkpointing,
        use_cpu=not torch.cuda.is_available(),
        disable_tqdm=True,
        include_num_input_tokens_seen=True,
        max_length=job.max_length,
    )
    trainer_args = dict(
        model=model,
        train_dataset=train,
        eval_dataset=evaluation,
        processing_class=tokenizer,
        peft_config=lora_config(job),
        callbacks=[ReportProgress()],
    )
    if job.method in ("cpt", "sft"):
        from trl import SFTConfig

        # cpt packs documents into full rows of max_length ("wrapped", as pretraining does). TRL's default
        # ("bfd") flattens the whole batch into one padding-free sequence, which only FlashAttention runs at
        # the cost of its parts; with SDPA it attends over batch × max_length positions, a step's largest part.
        extra = (
            dict(packing=True, packing_strategy="wrapped", dataset_text_field="text")
            if job.method == "cpt"
            else dict(completion_only_loss=True)
        )
        trainer = sft_trainer_class()(args=SFTConfig(**common, **extra), **trainer_args)
    elif job.method == "dpo":
        from trl import DPOConfig, DPOTrainer

        trainer = DPOTrainer(args=DPOConfig(**common, beta=job.beta), **trainer_args)
    else:
        from trl.experimental.orpo import ORPOConfig, ORPOTrainer

        trainer = ORPOTrainer(args=ORPOConfig(**common, beta=job.beta, remove_unused_columns=False), **trainer_args)
    trainer.remove_callback(PrinterCallback)  # ReportProgress logs each step instead of printing it
    return trainer


def _step(checkpoint: Path | None) -> int:
    return int(checkpoint.name.split("-")[1]) if checkpoint else 0


def checkpoint_is_complete(checkpoint: Path) -> bool:
    """Whether the Trainer finished writing `checkpoint`: trainer_state.json is its last file, and a kill during
    that write leaves it empty or cut short (the Trainer writes it in place), so it must also parse."""
    try:
        return isinstance(json.loads((checkpoint / "trainer_state.json").read_text()), dict)
    except (OSError, ValueError):
        return False


def last_checkpoint(checkpoints: Path) -> Path | None:
    """The newest complete checkpoint; a checkpoint the kill interrupted is removed."""
    complete = []
    for checkpoint in checkpoints.glob("checkpoint-*"):
        if checkpoint_is_complete(checkpoint):
            complete.append(checkpoint)
        else:
            shutil.rmtree(checkpoint, ignore_errors=True)  # every process of a distributed run may get here
    return max(complete, key=_step, default=None)


def _mean_step_loss(history: list[dict], fallback: float) -> float:
    losses = [entry["loss"] for entry in history if "loss" in entry]
    return float(sum(losses) / len(losses)) if losses else fallback


def run_job(
    job_name: str,
    job: TrainJob,
    init_dir: Path,
    ws: Workspace,
    out_dir: Path,
    work_dir: Path,
    report_to: list[str] | None = None,
) -> StageResult:
    """Train `job` from the model in `init_dir` on the workspace's tables; write the merged model to `out_dir`."""
    check_model_dir(init_dir)
    tables = job_tables(job_name, job, ws)
    if job.lora.qlora and not torch.cuda.is_available():
        raise InputError(f"train.jobs.{job_name}.lora.qlora: QLoRA needs a CUDA GPU (bitsandbytes 4-bit)")
    cache = StageCache(
        f"train-{job_name}",
        out_dir,
        __name__,
        job,
        {
            "init": init_dir,
            **{name: folder for name, _, folder in tables},
            "harmful": harmful_mix_table(job, ws),
        },
    )
    key = cache.key
    if (done := cache.result({"model": Path(out_dir)})) is not None:
        return done

    train_rows = job_rows(job_name, job, ws, "train")
    eval_rows = job_rows(job_name, job, ws, "val")[: job.eval_rows] if job.eval_rows else []
    tokenizer = AutoTokenizer.from_pretrained(init_dir, local_files_only=True)
    if job.method != "cpt" and not tokenizer.chat_template:
        raise InputError(f"{init_dir}: the tokenizer has no chat template, which {job.method} on chat data needs")
    model = AutoModelForCausalLM.from_pretrained(
        init_dir, local_files_only=True, dtype=torch.bfloat16 if job.bf16 else torch.float32
    )
    check_lora_targets(job_name, job, model)

    # Under torchrun / accelerate launch every process runs this function (data parallel, gloo on CPU, NCCL on
    # GPU); only the main process touches the work folder and writes outputs, the others wait for it.
    processes = PartialState(cpu=not torch.cuda.is_available())
    work_dir, checkpoints = Path(work_dir), Path(work_dir) / "checkpoints"
    state_file = work_dir / JOB_STATE
    if processes.is_main_process and (not state_file.is_file() or json.loads(state_file.read_text()).get("key") != key):
        shutil.rmtree(work_dir, ignore_errors=True)  # checkpoints of other inputs must not be resumed
        work_dir.mkdir(parents=True)
        state_file.write_text(json.dumps({"key": key, "job": job_name}) + "\n")
    processes.wait_for_everyone()
    resume = last_checkpoint(checkpoints)
    # read now: checkpoint rotation may delete this checkpoint while training goes on
    tokens_before = (
        json.loads((resume / "trainer_state.json").read_text()).get("num_input_tokens_seen", 0) if resume else 0
    )

    trainer = trainer_for(
        job,
        model,
        tokenizer,
        Dataset.from_list(train_rows),
        Dataset.from_list(eval_rows) if eval_rows else None,
        checkpoints,
        report_to or [],
    )
    start = time.perf_counter()
    if resume is not None and _step(resume) >= job.max_steps:
        # training was complete when the run ended (before the model was written): the Trainer, resumed there,
        # would take one step more than max_steps (it checks the limit after a step), so the state is loaded instead
        trainer._load_from_checkpoint(str(resume))
        trainer.state = TrainerState.load_from_json(str(resume / "trainer_state.json"))
        resumed_loss = float("nan")
    else:
        resumed_loss = float(trainer.train(resume_from_checkpoint=str(resume) if resume else None).training_loss)
    seconds = time.perf_counter() - start
    metrics = {
        # the mean over every step (logging_steps=1), including those before a resume; the Trainer's own
        # training_loss covers only the steps this process ran
        "train_loss": _mean_step_loss(trainer.state.log_history, resumed_loss),
        "final_loss": float(next(e["loss"] for e in reversed(trainer.state.log_history) if "loss" in e)),
        "steps": float(trainer.state.global_step),
        "resumed_from_step": float(_step(resume)),
        "train_rows": float(len(train_rows)),
        "samples_per_second": (trainer.state.global_step - _step(resume))
        * job.batch_size
        * processes.num_processes
        * job.grad_accum
        / seconds,
        "peak_rss_mb": resources.peak_rss_mb(),
    }
    if trainer.state.num_input_tokens_seen:  # counted by the SFT and DPO trainers, not by ORPO's
        metrics["tokens_per_second"] = float(trainer.state.num_input_tokens_seen - tokens_before) / seconds
    if eval_rows:
        metrics["eval_loss"] = float(trainer.evaluate()["eval_loss"])

    metrics["processes"] = float(processes.num_processes)
    if not processes.is_main_process:
        processes.wait_for_everyone()
        return StageResult(outputs={"model": Path(out_dir)}, metrics=metrics)
    trainer.model.save_pretrained(work_dir / "adapter")
    (work_dir / "log_history.json").write_text(json.dumps(trainer.state.log_history, indent=1))
    merged = trainer.model.merge_and_unload()
    with atomic_dir(Path(out_dir)) as tmp:
        merged.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        cache.write_card(tmp, metrics, job=job.model_dump(mode="json"), init=str(init_dir), datasets=job.datasets)
    processes.wait_for_everyone()
    return StageResult(
        outputs={"model": Path(out_dir), "adapter": work_dir / "adapter"},
        metrics=metrics,
        artifacts=(work_dir / "log_history.json", work_dir / "adapter"),
    )
