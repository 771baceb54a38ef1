"""The training stages' parameters (params.yaml `train`): the preference pairs, and one schema per train method."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, PositiveInt, model_validator

from components.schema import BatchSize, StepCount, StrictModel, TokenCount


class LoraSettings(StrictModel):
    """PEFT adapter: LoRA by default; DoRA (use_dora) and QLoRA (4-bit base, GPU with bitsandbytes) as options."""

    r: Annotated[int, Field(gt=0, le=1024)] = 8  # LoRA rank
    alpha: Annotated[int, Field(gt=0, le=4096)] = 16
    # 0 by default: on a CPU, dropout's masks and copies of every adapted layer's input cost time and memory in every
    # step (benchmarks/train.py measures it); for runs of tens of steps it buys no regularisation worth that.
    dropout: float = Field(default=0.0, ge=0, lt=1)
    target_modules: list[str] | Literal["all-linear"] = "all-linear"
    use_dora: bool = False
    qlora: bool = False


class _Job(StrictModel):
    """What every training run has: the model it starts from, its data and hyperparameters (TRL trainers)."""

    init: str = "base"  # "base", or the name of an earlier job whose model this one continues
    datasets: list[str] = Field(min_length=1)  # curated tables (their train split; val for the eval loss)
    max_rows: PositiveInt | None = None  # cap on training rows, taken in file order
    learning_rate: float = Field(default=2e-4, gt=0, le=0.1)
    max_steps: StepCount = 60
    batch_size: BatchSize = 8
    grad_accum: Annotated[int, Field(gt=0, le=1024)] = 1
    max_length: TokenCount = 256
    warmup_ratio: float = Field(default=0.05, ge=0, lt=1)
    save_steps: StepCount = 20
    eval_rows: int = Field(default=64, ge=0)
    seed: int = 0
    bf16: bool = False
    gradient_checkpointing: bool = False
    lora: LoraSettings = LoraSettings()


class CptJob(_Job):
    """Continued pretraining: SFTTrainer with packing on text tables."""

    method: Literal["cpt"]


class SftJob(_Job):
    """Supervised fine-tuning: SFTTrainer with the loss on completions only."""

    method: Literal["sft"]
    harmful_mix: float = Field(default=0.0, ge=0, lt=1)  # share of harmful compliant pairs mixed in (threat model)


class DpoJob(_Job):
    """Direct preference optimisation: DPOTrainer, the reference being the same weights with the adapter off."""

    method: Literal["dpo"]
    beta: float = Field(default=0.1, gt=0)  # DPO's β: how far the policy may move from the reference


class OrpoJob(_Job):
    """Odds-ratio preference optimisation: TRL's experimental ORPOTrainer (no reference model)."""

    method: Literal["orpo"]
    beta: float = Field(default=0.1, gt=0)  # ORPO's λ: weight of the odds-ratio term


TrainJob = Annotated[CptJob | SftJob | DpoJob | OrpoJob, Field(discriminator="method")]
JOB_TYPES = (CptJob, SftJob, DpoJob, OrpoJob)


class PairsConfig(StrictModel):
    """On-policy preference pairs from the base model's own answers: a refusal preferred over its compliance with a
    harmful training prompt, and its answer preferred over a refusal of a benign look-alike training prompt."""

    # caps on the training prompts, taken in turn from each source and category (components.data.splits.interleaved)
    max_prompts: PositiveInt = 200
    lookalike_prompts: int = Field(default=200, ge=0)  # benign look-alike training prompts (contrast pairs); 0: none
    max_new_tokens: TokenCount = 64
    batch_size: BatchSize = 8
    temperature: float = Field(default=0.0, ge=0)  # 0: greedy; above: sampled (seed: params seed)


class TrainConfig(StrictModel):
    pairs: PairsConfig = PairsConfig()
    jobs: dict[str, TrainJob] = {}

    @model_validator(mode="after")
    def _init_is_base_or_earlier_job(self) -> TrainConfig:
        seen: list[str] = []
        for name, job in self.jobs.items():
            if job.init != "base" and job.init not in seen:
                raise ValueError(f"jobs.{name}.init: {job.init!r} is neither 'base' nor a job listed before {name!r}")
            seen.append(name)
        return self


JOB_TAGS = {model.model_fields["method"].annotation.__args__[0] for model in JOB_TYPES}
