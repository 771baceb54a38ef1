"""TIES-merging (Yadav et al., 2023, "TIES-Merging: Resolving Interference When Merging Models").

Matches mergekit's `ties` (per-tensor top-k trim, sign elected by the weighted sum, disjoint mean over agreeing
entries), so a recipe means the same here and there.
"""

from __future__ import annotations

from typing import Any

import torch

from components.merge.method import Knob, MergeMethod, TensorSlot
from components.merge.methods.scaling import LAMBDA, LINES, scale, with_lines
from components.merge.methods.task_arithmetic import INT8_MASK, WEIGHT, broadcast, task_vectors

DENSITY = Knob(
    "density",
    float,
    1.0,
    low=0,
    high=1,
    per_model=True,
    search=(0.1, 1.0),
    doc="share of each task vector kept by magnitude",
)
NORMALIZE = Knob("normalize", bool, True, doc="divide by the summed weights of the agreeing models")


def magnitude_trim(tau: torch.Tensor, density: float) -> torch.Tensor:
    """Keep the k = max(1, ⌊density·numel⌋) entries of largest |τ|, zero the rest (TIES step 1, as mergekit)."""
    if density >= 1:
        return tau
    if density <= 0 or tau.numel() == 0:
        return torch.zeros_like(tau)
    k = max(1, int(density * tau.numel()))
    magnitude = tau.abs().reshape(-1)
    # The k-th largest |τ| by selection (linear time) instead of mergekit's full sort; entries equal to it
    # (common among millions of float32 values) are kept lowest index first, as a stable descending sort
    # keeps them, so the result is the same as sorting.
    threshold = torch.kthvalue(magnitude, magnitude.numel() - k + 1).values
    mask = magnitude > threshold
    ties = (magnitude == threshold).nonzero().squeeze(1)[: k - int(mask.sum())]
    mask[ties] = True
    return tau * mask.reshape(tau.shape).to(tau.dtype)


def elect_sign(weighted: torch.Tensor) -> torch.Tensor:
    """γ = sign(Σ_i w_i τ̂_i), ties to +1 (TIES step 2, the 'sum' consensus)."""
    return torch.where(weighted.sum(dim=0) >= 0, 1.0, -1.0).to(weighted.dtype)


def ties(
    base: torch.Tensor,
    experts: list[torch.Tensor],
    weights: list[float],
    densities: list[float],
    lam: float = 1.0,
    normalize: bool = True,
) -> torch.Tensor:
    """TIES-merging (Yadav et al., 2023): trim, elect sign, disjoint mean of w_i τ̂_i over entries agreeing with γ; × λ."""
    taus = task_vectors(base, experts)
    trimmed = torch.stack([magnitude_trim(t, d) for t, d in zip(taus, densities, strict=True)])
    w = broadcast(weights, trimmed)
    weighted = trimmed * w
    agree = (torch.sign(weighted) == elect_sign(weighted)).to(weighted.dtype)
    merged = (weighted * agree).sum(dim=0)
    if normalize:
        divisor = (w * agree).sum(dim=0)
        merged = merged / torch.where(divisor == 0, torch.ones_like(divisor), divisor)
    return base.float() + lam * merged


def _merge(slot: TensorSlot, base, experts, per_model: list[dict[str, Any]], params: dict[str, Any]) -> torch.Tensor:
    return ties(
        base,
        experts,
        [m["weight"] for m in per_model],
        [m["density"] for m in per_model],
        scale(slot, params),
        params["normalize"],
    )


METHOD = MergeMethod(
    "ties",
    "trim to density, elect signs, disjoint mean; × λ",
    (WEIGHT, DENSITY, LAMBDA, NORMALIZE, INT8_MASK, LINES),
    _merge,
    prepare=with_lines(_merge),
    mergekit_knobs=("rescale",),  # L1 rescaling of the trimmed task vectors (DARE's); no part of TIES
)
