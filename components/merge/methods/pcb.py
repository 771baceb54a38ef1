"""PCB-merging (Du et al., 2024, "Parameter Competition Balancing for Model Merging"): per tensor, or over the
whole flattened model as the paper and its official code do (`whole_model: true`, two statistics passes first)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch

from components.errors import InputError
from components.merge.method import Knob, MergeMethod, TensorSlot, TensorStream
from components.merge.methods.scaling import LAMBDA, LINES, scale, with_lines
from components.merge.methods.task_arithmetic import task_vectors

PCB_RATIO = Knob(
    "pcb_ratio",
    float,
    0.1,
    low=0,
    high=1,
    low_open=True,
    search=(0.05, 0.5),
    doc="share of each task's balanced scores kept",
)
WHOLE_MODEL = Knob(
    "whole_model",
    bool,
    False,
    doc="quantiles and min-max over the whole flattened model (the paper); false: over each tensor (one pass)",
)
OUTLIER = 1e-4  # the official code's clip of each task's |τ| at quantiles 1e-4 and 1 − 1e-4

Bounds = tuple[torch.Tensor, torch.Tensor]  # per task (shape (n, 1)): the low and high value a row is clamped to


def quantile_bounds(x: torch.Tensor, low_ratio: float, high_ratio: float) -> Bounds:
    """Each row's ⌊d·low⌋-th and ⌊d·(1−high)⌋−1-th smallest value (0-based), the bounds of the PCB code's `clamp`."""
    d = x.shape[-1]
    # order statistics by selection (kthvalue is 1-based), not a full sort; row by row, one copy at a time
    low = torch.stack([torch.kthvalue(row, int(d * low_ratio) + 1).values for row in x])
    high = torch.stack([torch.kthvalue(row, max(int(d * (1 - high_ratio)) - 1, 0) + 1).values for row in x])
    return low[:, None], high[:, None]


def _clamped_minmax(x: torch.Tensor, bounds: Bounds) -> torch.Tensor:
    """minmax(clamp(x, low, high)) = (clamp(x) − low) / (high − low) with the bounds' values attained in x; a
    zero span gives 0 (the official code would divide by 0)."""
    low, high = bounds
    span = high - low
    return torch.where(span > 0, (x.clamp(low, high) - low) / torch.where(span > 0, span, torch.ones_like(span)), 0.0)


def balance(taus: torch.Tensor, magnitude: Bounds) -> tuple[torch.Tensor, torch.Tensor]:
    """(clipped τ, PCB score) of task vectors (n, d): intra-balancing exp(n · minmax(clip|τ_i|)²) times
    inter-balancing tanh(τ_i ⊙ Σ_j τ_j), with |τ| clipped to the `magnitude` bounds."""
    n = taus.shape[0]
    clipped = torch.sign(taus) * taus.abs().clamp(*magnitude)
    intra = torch.exp(n * _clamped_minmax(taus.abs(), magnitude) ** 2)
    return clipped, intra * torch.tanh(taus * taus.sum(dim=0, keepdim=True))


def pcb_scores(taus: torch.Tensor, ratio: float, outlier: float = OUTLIER) -> tuple[torch.Tensor, torch.Tensor]:
    """PCB-merging's balancing (Du et al., 2024), on flattened task vectors of shape (n, d).

    Returns (clipped τ, rescale weights β): the scores of `balance`; per task, scores below the (1 − ratio)
    quantile drop to 0 and the rest are min-max rescaled, as in the official code.
    """
    clipped, scores = balance(taus, quantile_bounds(taus.abs(), outlier, outlier))
    return clipped, _clamped_minmax(scores, quantile_bounds(scores, 1 - ratio, 0.0))


def merged_update(clipped: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """Σ_i β_i ⊙ τ̃_i / Σ_i β_i."""
    return (clipped * beta).sum(dim=0) / beta.sum(dim=0).clamp(min=1e-12)


def pcb(
    base: torch.Tensor, experts: list[torch.Tensor], ratio: float = 0.1, lam: float = 1.0, outlier: float = OUTLIER
) -> torch.Tensor:
    """PCB-merging: θ = θ_base + λ Σ_i β_i ⊙ τ̃_i / Σ_i β_i, with the quantiles of this tensor alone.

    Per tensor, the official outlier clip (quantiles 1e-4 and 1 − 1e-4) caps each task's largest |τ| at its
    second largest on tensors under 10,000 entries; on the few-thousand-entry norms of a 135M model that is
    one value in thousands.
    """
    taus = task_vectors(base, experts).reshape(len(experts), -1)
    return base.float() + lam * merged_update(*pcb_scores(taus, ratio, outlier)).reshape(base.shape)


def whole_model_bounds(
    task_vector_stream: Callable[[], Iterator[torch.Tensor]], size: int, n: int, ratio: float, outlier: float = OUTLIER
) -> tuple[Bounds, Bounds]:
    """The paper's bounds over the whole model: (|τ| outlier clip, score keep-threshold and max), each per task.

    `task_vector_stream()` yields every tensor's task vectors, flattened to (n, numel), in one order each call;
    `size` is the model's entry count. One (n, size) float32 buffer holds |τ|, then the scores (2 × 538 MB for two
    experts of a 135M model).
    """
    buffer = torch.empty(n, size)

    def fill(values: Callable[[torch.Tensor], torch.Tensor]) -> None:
        at = 0
        for taus in task_vector_stream():
            buffer[:, at : at + taus.shape[1]] = values(taus)
            at += taus.shape[1]

    fill(torch.abs)
    magnitude = quantile_bounds(buffer, outlier, outlier)
    fill(lambda taus: balance(taus, magnitude)[1])
    return magnitude, quantile_bounds(buffer, 1 - ratio, 0.0)


def _prepare(stream: TensorStream, params: dict[str, Any]) -> dict[str, Any]:
    """Whole-model PCB's two statistics passes; nothing for the per-tensor form."""
    if not params["whole_model"]:
        return {}

    def task_vector_stream() -> Iterator[torch.Tensor]:
        for _, base, experts in stream.read():
            yield task_vectors(base, experts).reshape(len(experts), -1)

    ratio = params["pcb_ratio"]
    return {"bounds": whole_model_bounds(task_vector_stream, stream.size, stream.models, ratio), "bounds_ratio": ratio}


def _merge(slot: TensorSlot, base, experts, per_model: list[dict[str, Any]], params: dict[str, Any]) -> torch.Tensor:
    if not params["whole_model"]:
        return pcb(base, experts, params["pcb_ratio"], scale(slot, params))
    if params["pcb_ratio"] != params["bounds_ratio"]:  # a gradient or filtered value: one threshold cannot hold it
        raise InputError(
            f"parameters.pcb_ratio: with whole_model: true it is one value for the whole model, but it is "
            f"{params['pcb_ratio']} at tensor {slot.name} and {params['bounds_ratio']} outside the blocks"
        )
    magnitude, score = params["bounds"]
    clipped, scores = balance(task_vectors(base, experts).reshape(len(experts), -1), magnitude)
    update = merged_update(clipped, _clamped_minmax(scores, score))
    return base.float() + scale(slot, params) * update.reshape(base.shape)


METHOD = MergeMethod(
    "pcb",
    "intra- and inter-balanced task vectors, top pcb_ratio kept; × λ",
    (LAMBDA, PCB_RATIO, WHOLE_MODEL, LINES),
    _merge,
    prepare=with_lines(_merge, _prepare),
)
