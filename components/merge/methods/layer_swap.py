"""Layer swapping (Bandarkar et al., 2024, "Layer Swapping for Zero-Shot Cross-Lingual Transfer in Large Language
Models"): the receiver (the paper's math expert) with its bottom and top blocks replaced by the donor's (the
language expert's), buffered by transition zones of weighted averages."""

from __future__ import annotations

from typing import Any

import torch

from components.errors import InputError
from components.merge.method import Knob, MergeMethod, TensorSlot

NUM_LAYERS = Knob("num_layers", int, low=0, search=(1, 4), doc="N: the bottom and top N blocks come from the donor")
BOTTOM = Knob("bottom_layers", int, None, low=0, doc="blocks swapped at the bottom, when not N")
TOP = Knob("top_layers", int, None, low=0, doc="blocks swapped at the top, when not N")
TRANSITION = Knob(
    "transition",
    int,
    0,
    low=0,
    doc="T: blocks after the bottom zone and before the top zone averaged, the donor's share 1 − i/(T+1)",
)


def layer_swap_share(layer: int, num_layers: int, bottom: int, top: int, transition: int) -> float:
    """The donor's weight at block `layer`: 1 in the swapped zones, 1 − i/(T+1) at the i-th block of a transition
    zone (i = 1 next to the swapped zone), 0 elsewhere."""
    from_bottom = layer - bottom + 1  # 1 for the first block above the bottom zone
    from_top = (num_layers - top) - layer  # 1 for the last block below the top zone
    if from_bottom <= 0 or from_top <= 0:
        return 1.0
    nearest = min(from_bottom if bottom else transition + 1, from_top if top else transition + 1)
    return max(0.0, 1 - nearest / (transition + 1))


def layer_swap(
    slot: TensorSlot, receiver: torch.Tensor, donor: torch.Tensor, bottom: int, top: int, transition: int
) -> torch.Tensor:
    """θ^(ℓ) = s_ℓ θ_donor^(ℓ) + (1 − s_ℓ) θ_receiver^(ℓ), s_ℓ = `layer_swap_share`; outside the blocks the receiver's."""
    if slot.layer is None:
        return receiver
    share = layer_swap_share(slot.layer, slot.num_layers, bottom, top, transition)
    if share in (0.0, 1.0):
        return donor if share else receiver
    return share * donor.float() + (1 - share) * receiver.float()


def zones(params: dict[str, Any]) -> tuple[int, int, int]:
    """(bottom, top, transition) of the recipe's parameters."""
    n = params["num_layers"]
    bottom = n if params["bottom_layers"] is None else params["bottom_layers"]
    top = n if params["top_layers"] is None else params["top_layers"]
    return bottom, top, params["transition"]


def _merge(slot: TensorSlot, base, experts, per_model: list[dict[str, Any]], params: dict[str, Any]) -> torch.Tensor:
    receiver, donor = experts
    return layer_swap(slot, receiver, donor, *zones(params))


def _fits(params: dict[str, Any], num_layers: int) -> None:
    bottom, top, transition = zones(params)
    needed = bottom + top + transition * ((bottom > 0) + (top > 0))
    if needed > num_layers:
        raise InputError(
            f"layer_swap: parameters: {bottom} bottom and {top} top swapped blocks with their transition zones of "
            f"{transition} need {needed} blocks; the model has {num_layers}"
        )


METHOD = MergeMethod(
    "layer_swap",
    "two models, the receiver first: the donor's outer blocks in the receiver",
    (NUM_LAYERS, BOTTOM, TOP, TRANSITION),
    _merge,
    needs_base=False,
    model_count=2,
    check_model=_fits,
)
