"""The scaling every task-vector method shares: λ for the whole model, or LiNeS's λ per block."""

from __future__ import annotations

from typing import Any

from components.merge.method import Knob, TensorSlot

LAMBDA = Knob(
    "lambda", float, 1.0, low=0, low_open=True, search="merge_lambda", doc="scaling of the merged task vector"
)
LINES = Knob(
    "lines",
    dict,
    None,
    fields=("alpha", "beta"),
    auto_fields=("alpha",),
    doc="LiNeS: replaces lambda by alpha + beta·ℓ/(L−1) for block ℓ; alpha: auto derives it from the task vectors",
)


def lines_factor(layer: int, num_layers: int, alpha: float, beta: float) -> float:
    """LiNeS (Wang et al., 2025): λ^(ℓ) = α + β·ℓ/(L−1) for block ℓ of L; shallow layers keep less of the task vector."""
    return alpha + beta * layer / max(num_layers - 1, 1)


def multi_task_alpha(summed_l1: float, merged_l1: float, tasks: int) -> float:
    """LiNeS's multi-task α (its official code, wang-kee/LiNeS): α = ‖Σ_t τ_t‖₁ / (T · ‖τ_merged‖₁), the merged
    task vector τ_merged computed with λ = 1; 1/T when nothing moved."""
    return summed_l1 / (tasks * merged_l1) if merged_l1 > 0 else 1 / tasks


def wants_auto_alpha(params: dict[str, Any]) -> bool:
    return (params.get("lines") or {}).get("alpha") == "auto"


def scale(slot: TensorSlot, params: dict[str, Any]) -> float:
    """λ of this tensor: LiNeS's per-block value when `lines` is set, else the recipe's lambda. LiNeS scales every
    tensor outside the transformer blocks (embeddings, final norm, an untied head) by α, as its official code does
    (wang-kee/LiNeS)."""
    lines = params.get("lines")
    if lines is None:
        return params["lambda"]
    if slot.layer is None:
        return lines["alpha"]
    return lines_factor(slot.layer, slot.num_layers, lines["alpha"], lines["beta"])
