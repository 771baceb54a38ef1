"""The safety stages' parameters (params.yaml `safety`): SOMF/RESTA realignment and Antidote pruning."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, PositiveInt

from components.schema import BatchSize, StepCount, StrictModel, TokenCount


class PruneConfig(StrictModel):
    """Antidote: revert to the aligned model the `ratio` share of each row of `model`'s update that matters most
    for harmful answers (components/safety/antidote.py)."""

    model: str | None = None  # a pipeline model (a train job, merge-<name>) to prune; None: no prune stage
    aligned: str = "safety"  # the aligned model whose weights the reverted entries take back
    ratio: float = Field(default=0.1, ge=0, lt=1)  # share of each row of the update reverted
    max_relative_delta: float = Field(default=0.5, gt=0)  # refuse a model this far from the aligned one
    score: Literal["harmful", "contrastive"] = "harmful"  # contrastive: harmful minus domain Q/A importance
    calibration_rows: PositiveInt = 64
    max_length: TokenCount = 256
    batch_size: BatchSize = 8


class RealignConfig(StrictModel):
    """SOMF: fuse `model` with the initially aligned model through a safety mask (components/safety/somf.py)."""

    model: str | None = None  # the fine-tuned or merged model to realign (pipeline name); None: no realign stage
    aligned: str = "safety"  # the initially aligned model
    # refusal_mask: a sigmoid mask on refusal targets; concrete_dpo: the official code's concrete mask and DPO on
    # the preference pairs (refusal over compliance, and the look-alikes' contrast pairs); resta: no mask, the
    # aligned model's safety vector (aligned − base) added to the model, times `scale` (RESTA, training-free)
    method: Literal["refusal_mask", "concrete_dpo", "resta"] = "refusal_mask"
    steps: StepCount = 20
    lr: float = Field(default=0.2, gt=0, le=10)  # Adam moves each mask logit by about lr per step
    init_logit: float = Field(
        default=-2.0, ge=-20, le=20
    )  # σ(−2) ≈ 0.12: the mask starts nearly empty; a logit must pass 0 to enter it (concrete_dpo: 0)
    sparsity: float = Field(default=1.0, ge=0)  # λ of the mask's sparsity term (refusal_mask)
    temperature: float = Field(default=0.5, gt=0)  # of the concrete mask (concrete_dpo)
    beta: float = Field(default=0.1, gt=0)  # DPO's β (concrete_dpo)
    rescale: bool = True  # concrete_dpo: the kept update divided by mean(m), as the official code; false: not
    scale: float = Field(default=1.0, gt=0, le=10)  # λ of the safety vector (resta)
    safety_rows: PositiveInt = 64
    # refusal_mask: curated tables (prompt -> completion) whose train rows the realigned model must keep answering;
    # each step adds one batch of them to the loss, so the mask leaves the weights those answers need
    retain: list[str] = []
    retain_rows: PositiveInt = 64  # per table
    batch_size: BatchSize = 8
    max_length: TokenCount = 256
    max_relative_delta: float = Field(default=0.5, gt=0)


class SafetyConfig(StrictModel):
    realign: RealignConfig = RealignConfig()
    prune: PruneConfig = PruneConfig()
