"""PCB-merging (Du et al., 2024, "Parameter Competition Balancing for Model Merging"), per tensor."""

from __future__ import annotations

from typing import Any

import torch

from components.merge.method import Knob, MergeMethod, TensorSlot
from components.merge.methods.scaling import LAMBDA, LINES, scale
from components.merge.methods.task_arithmetic import task_vectors

PCB_RATIO = Knob(
    "pcb_ratio",
    float,
    0.1,
    low=0,
    high=1,
    low_open=True,
    search="pcb_ratio",
    doc="share of each task's balanced scores kept",
)


def _minmax(x: torch.Tensor) -> torch.Tensor:
    """(x − min) / (max − min) along the last axis; a constant row becomes 0 (the official code would divide by 0)."""
    low, high = x.min(dim=-1, keepdim=True).values, x.max(dim=-1, keepdim=True).values
    span = high - low
    return torch.where(span > 0, (x - low) / torch.where(span > 0, span, torch.ones_like(span)), torch.zeros_like(x))


def _clip_quantiles(x: torch.Tensor, low_ratio: float, high_ratio: float) -> torch.Tensor:
    """Clamp each row to [its ⌊d·low⌋-th, its ⌊d·(1−high)⌋−1-th smallest value], as the PCB code's `clamp`."""
    d = x.shape[-1]
    # order statistics by selection (kthvalue is 1-based), not a full sort
    low = torch.kthvalue(x, int(d * low_ratio) + 1, dim=-1, keepdim=True).values
    high = torch.kthvalue(x, max(int(d * (1 - high_ratio)) - 1, 0) + 1, dim=-1, keepdim=True).values
    return torch.maximum(torch.minimum(x, high), low)


def pcb_scores(taus: torch.Tensor, ratio: float, outlier: float = 1e-4) -> tuple[torch.Tensor, torch.Tensor]:
    """PCB-merging's balancing (Du et al., 2024), on flattened task vectors of shape (n, d).

    Returns (clipped τ, rescale weights β): intra-balancing exp(n · minmax(|τ_i|)²), inter-balancing
    tanh(τ_i ⊙ Σ_j τ_j), their product; per task, scores below the (1 − ratio) quantile drop to 0 and the
    rest are min-max rescaled, as in the official code.
    """
    n = taus.shape[0]
    magnitude = _clip_quantiles(taus.abs(), outlier, outlier)
    clipped = torch.sign(taus) * magnitude
    intra = torch.exp(n * _minmax(magnitude) ** 2)
    inter = torch.tanh(taus * taus.sum(dim=0, keepdim=True))
    scores = intra * inter
    return clipped, _minmax(_clip_quantiles(scores, 1 - ratio, 0.0))


def pcb(
    base: torch.Tensor, experts: list[torch.Tensor], ratio: float = 0.1, lam: float = 1.0, outlier: float = 1e-4
) -> torch.Tensor:
    """PCB-merging: θ = θ_base + λ Σ_i β_i ⊙ τ̃_i / Σ_i β_i, per tensor (the official code flattens the whole model).

    Per tensor, the official outlier clip (quantiles 1e-4 and 1 − 1e-4) caps each task's largest |τ| at its
    second largest on tensors under 10,000 entries; on the few-thousand-entry norms of a 135M model that is
    one value in thousands.
    """
    taus = task_vectors(base, experts).reshape(len(experts), -1)
    clipped, beta = pcb_scores(taus, ratio, outlier)
    merged = (clipped * beta).sum(dim=0) / beta.sum(dim=0).clamp(min=1e-12)
    return base.float() + lam * merged.reshape(base.shape)


def _merge(slot: TensorSlot, base, experts, per_model: list[dict[str, Any]], params: dict[str, Any]) -> torch.Tensor:
    return pcb(base, experts, params["pcb_ratio"], scale(slot, params))


METHOD = MergeMethod(
    "pcb", "intra- and inter-balanced task vectors, top pcb_ratio kept; × λ", (LAMBDA, PCB_RATIO, LINES), _merge
)
