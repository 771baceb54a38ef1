"""The scaling every task-vector method shares: λ for the whole model, or LiNeS's λ per block."""

from __future__ import annotations

from typing import Any

from components.merge.method import Knob, MergeTensor, Prepare, TensorSlot, TensorStream

LAMBDA = Knob("lambda", float, 1.0, low=0, low_open=True, search=(0.5, 1.5), doc="scaling of the merged task vector")
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


def auto_alpha(merge: MergeTensor, stream: TensorStream, prepared: dict[str, Any]) -> float:
    """LiNeS's multi-task α for `alpha: auto`: a pass over every tensor merges it with λ = 1 and no LiNeS, and sums
    the L1 norms of Σ_t τ_t and of the merged task vector. `prepared`: the method's own whole-model values."""
    summed_l1 = merged_l1 = 0.0
    for slot, theta, tensors in stream.read():
        per_model, params = stream.at(slot)
        theta = theta.float()
        plain = merge(slot, theta, tensors, per_model, {**params, **prepared, "lines": None, "lambda": 1.0})
        summed_l1 += float(sum(t.float() - theta for t in tensors).abs().sum())
        merged_l1 += float((plain - theta).abs().sum())
    return multi_task_alpha(summed_l1, merged_l1, stream.models)


def with_lines(merge: MergeTensor, prepare: Prepare | None = None) -> Prepare:
    """A task-vector method's whole-model pass: its own `prepare`, then LiNeS's α when the recipe says `alpha: auto`
    (the `lines` it returns replaces the recipe's at every tensor; a dict knob holds one value for the whole model)."""

    def prepared(stream: TensorStream, params: dict[str, Any]) -> dict[str, Any]:
        values = prepare(stream, params) if prepare is not None else {}
        if wants_auto_alpha(params):
            values = {**values, "lines": {**params["lines"], "alpha": auto_alpha(merge, stream, values)}}
        return values

    return prepared


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
