"""Task arithmetic (Ilharco et al., 2023, "Editing Models with Task Arithmetic")."""

from __future__ import annotations

from typing import Any

import torch

from components.merge.method import Knob, MergeMethod, TensorSlot
from components.merge.methods.scaling import LAMBDA, LINES, scale

WEIGHT = Knob("weight", float, 1.0, per_model=True, doc="w_i: the model's share of the sum")


def task_vectors(base: torch.Tensor, experts: list[torch.Tensor]) -> torch.Tensor:
    """τ_i = θ_i − θ_base, stacked: shape (n, *base.shape), in float32."""
    return torch.stack([e.float() - base.float() for e in experts])


def broadcast(weights: list[float], like: torch.Tensor) -> torch.Tensor:
    """Per-model scalars shaped to multiply a stack of task vectors."""
    return torch.tensor(weights, dtype=like.dtype).reshape(-1, *([1] * (like.dim() - 1)))


def task_arithmetic(
    base: torch.Tensor, experts: list[torch.Tensor], weights: list[float], lam: float = 1.0
) -> torch.Tensor:
    """Task arithmetic (Ilharco et al., 2023): θ = θ_base + λ Σ_i w_i τ_i."""
    taus = task_vectors(base, experts)
    return base.float() + lam * (broadcast(weights, taus) * taus).sum(dim=0)


def _merge(slot: TensorSlot, base, experts, per_model: list[dict[str, Any]], params: dict[str, Any]) -> torch.Tensor:
    return task_arithmetic(base, experts, [m["weight"] for m in per_model], scale(slot, params))


METHOD = MergeMethod("task_arithmetic", "θ_base + λ Σ w_i τ_i", (WEIGHT, LAMBDA, LINES), _merge)
