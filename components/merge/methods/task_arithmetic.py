"""Task arithmetic (Ilharco et al., 2023, "Editing Models with Task Arithmetic")."""

from __future__ import annotations

from typing import Any

import torch

from components.merge.method import Knob, MergeMethod, TensorSlot
from components.merge.methods.scaling import LAMBDA, LINES, scale, with_lines

WEIGHT = Knob("weight", float, 1.0, per_model=True, doc="w_i: the model's share of the sum")
# mergekit's memory option (its sign mask held as int8): our engine computes in float32 and keeps no such mask, so
# the knob is accepted and changes nothing
INT8_MASK = Knob("int8_mask", bool, False, doc="mergekit's int8 mask; no effect on the result")
SUM_NORMALIZE = Knob("normalize", bool, False, doc="divide the weighted sum by Σ w_i (mergekit's task_arithmetic)")


def task_vectors(base: torch.Tensor, experts: list[torch.Tensor]) -> torch.Tensor:
    """τ_i = θ_i − θ_base, stacked: shape (n, *base.shape), in float32."""
    return torch.stack([e.float() - base.float() for e in experts])


def broadcast(weights: list[float], like: torch.Tensor) -> torch.Tensor:
    """Per-model scalars shaped to multiply a stack of task vectors."""
    return torch.tensor(weights, dtype=like.dtype).reshape(-1, *([1] * (like.dim() - 1)))


def task_arithmetic(
    base: torch.Tensor, experts: list[torch.Tensor], weights: list[float], lam: float = 1.0, normalize: bool = False
) -> torch.Tensor:
    """Task arithmetic (Ilharco et al., 2023): θ = θ_base + λ Σ_i w_i τ_i (normalized: ÷ Σ_i w_i, as mergekit)."""
    taus = task_vectors(base, experts)
    total = sum(weights)
    divisor = total if normalize and abs(total) >= 1e-8 else 1.0
    return base.float() + lam * (broadcast(weights, taus) * taus).sum(dim=0) / divisor


def _merge(slot: TensorSlot, base, experts, per_model: list[dict[str, Any]], params: dict[str, Any]) -> torch.Tensor:
    weights = [m["weight"] for m in per_model]
    return task_arithmetic(base, experts, weights, scale(slot, params), params["normalize"])


METHOD = MergeMethod(
    "task_arithmetic",
    "θ_base + λ Σ w_i τ_i",
    (WEIGHT, LAMBDA, SUM_NORMALIZE, INT8_MASK, LINES),
    _merge,
    prepare=with_lines(_merge),
)
