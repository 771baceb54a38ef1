"""Merge methods as pure functions over one tensor at a time: θ_base, the experts' θ_i, parameters in, merged θ out.

Every method works per tensor, so a merge streams: it never needs more than one tensor of each model in
memory. Notation: τ_i = θ_i − θ_base (task vector), w_i (weight), λ (scaling).
TIES matches mergekit's `ties` (per-tensor top-k trim, sign elected by the weighted sum, disjoint mean
over agreeing entries), so a recipe means the same here and there.
"""

from __future__ import annotations

import torch


def task_vectors(base: torch.Tensor, experts: list[torch.Tensor]) -> torch.Tensor:
    """τ_i = θ_i − θ_base, stacked: shape (n, *base.shape), in float32."""
    return torch.stack([e.float() - base.float() for e in experts])


def _broadcast(weights: list[float], like: torch.Tensor) -> torch.Tensor:
    return torch.tensor(weights, dtype=like.dtype).reshape(-1, *([1] * (like.dim() - 1)))


def task_arithmetic(base: torch.Tensor, experts: list[torch.Tensor], weights: list[float], lam: float = 1.0) -> torch.Tensor:
    """Task arithmetic (Ilharco et al., 2023): θ = θ_base + λ Σ_i w_i τ_i."""
    taus = task_vectors(base, experts)
    return base.float() + lam * (_broadcast(weights, taus) * taus).sum(dim=0)


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


def ties(base: torch.Tensor, experts: list[torch.Tensor], weights: list[float], densities: list[float],
         lam: float = 1.0, normalize: bool = True) -> torch.Tensor:
    """TIES-merging (Yadav et al., 2023): trim, elect sign, disjoint mean of w_i τ̂_i over entries agreeing with γ; × λ."""
    taus = task_vectors(base, experts)
    trimmed = torch.stack([magnitude_trim(t, d) for t, d in zip(taus, densities, strict=True)])
    w = _broadcast(weights, trimmed)
    weighted = trimmed * w
    agree = (torch.sign(weighted) == elect_sign(weighted)).to(weighted.dtype)
    merged = (weighted * agree).sum(dim=0)
    if normalize:
        divisor = (w * agree).sum(dim=0)
        merged = merged / torch.where(divisor == 0, torch.ones_like(divisor), divisor)
    return base.float() + lam * merged


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


def pcb(base: torch.Tensor, experts: list[torch.Tensor], ratio: float = 0.1, lam: float = 1.0,
        outlier: float = 1e-4) -> torch.Tensor:
    """PCB-merging: θ = θ_base + λ Σ_i β_i ⊙ τ̃_i / Σ_i β_i, per tensor (the official code flattens the whole model).

    Per tensor, the official outlier clip (quantiles 1e-4 and 1 − 1e-4) caps each task's largest |τ| at its
    second largest on tensors under 10,000 entries; on the few-thousand-entry norms of a 135M model that is
    one value in thousands.
    """
    taus = task_vectors(base, experts).reshape(len(experts), -1)
    clipped, beta = pcb_scores(taus, ratio, outlier)
    merged = (clipped * beta).sum(dim=0) / beta.sum(dim=0).clamp(min=1e-12)
    return base.float() + lam * merged.reshape(base.shape)


def lines_factor(depth: int, num_layers: int, alpha: float, beta: float) -> float:
    """LiNeS (Wang et al., 2025): λ^(ℓ) = α + β·ℓ/(L−1) for block ℓ of L; shallow layers keep less of the task vector."""
    return alpha + beta * depth / max(num_layers - 1, 1)
