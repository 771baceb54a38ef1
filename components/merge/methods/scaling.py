"""The scaling every task-vector method shares: λ for the whole model, or LiNeS's λ per block."""

from __future__ import annotations

from typing import Any

from components.merge.method import Knob, TensorSlot

LAMBDA = Knob(
    "lambda", float, 1.0, low=0, low_open=True, search="merge_lambda", doc="scaling of the merged task vector"
)
LINES = Knob(
    "lines", dict, None, fields=("alpha", "beta"), doc="LiNeS: replaces lambda by alpha + beta·ℓ/(L−1) for block ℓ"
)


def lines_factor(layer: int, num_layers: int, alpha: float, beta: float) -> float:
    """LiNeS (Wang et al., 2025): λ^(ℓ) = α + β·ℓ/(L−1) for block ℓ of L; shallow layers keep less of the task vector."""
    return alpha + beta * layer / max(num_layers - 1, 1)


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
