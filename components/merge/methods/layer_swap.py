"""Layer swapping (Bandarkar et al., 2024, "Layer Swapping for Zero-Shot Cross-Lingual Transfer in LLMs")."""

from __future__ import annotations

from typing import Any

import torch

from components.errors import InputError
from components.merge.method import Knob, MergeMethod, TensorSlot

NUM_LAYERS = Knob(
    "num_layers", int, low=1, search="num_layers", doc="N: the bottom and top N blocks come from the donor"
)
BLEND = Knob("blend", bool, False, doc="the block after the bottom N and the one before the top N: mean of both")


def layer_swap(slot: TensorSlot, receiver: torch.Tensor, donor: torch.Tensor, n: int, blend: bool) -> torch.Tensor:
    """θ^(ℓ) = donor's for the bottom and top n blocks, the receiver's elsewhere (and outside the blocks)."""
    layer, num_layers = slot.layer, slot.num_layers
    if layer is None:
        return receiver
    if layer < n or layer >= num_layers - n:
        return donor
    if blend and layer in (n, num_layers - n - 1):
        return (receiver.float() + donor.float()) / 2
    return receiver


def _merge(slot: TensorSlot, base, experts, per_model: list[dict[str, Any]], params: dict[str, Any]) -> torch.Tensor:
    receiver, donor = experts
    return layer_swap(slot, receiver, donor, params["num_layers"], params["blend"])


def _fits(params: dict[str, Any], num_layers: int) -> None:
    if 2 * params["num_layers"] > num_layers:
        raise InputError(
            f"layer_swap: parameters.num_layers = {params['num_layers']} swaps more than half "
            f"of the {num_layers} blocks at each end"
        )


METHOD = MergeMethod(
    "layer_swap",
    "two models, the receiver first: the donor's outer blocks in the receiver",
    (NUM_LAYERS, BLEND),
    _merge,
    needs_base=False,
    model_count=2,
    check_model=_fits,
)
