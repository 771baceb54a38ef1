"""Antidote (Huang et al., 2024, "Antidote: Post-fine-tuning Safety Alignment for Large Language Models against
Harmful Fine-tuning"): after fine-tuning, score each weight's importance for producing harmful answers on a
small harmful set, and set the highest-scoring fraction to zero, in one shot.

The score is Wanda's (Sun et al., 2024): S_ij = |W_ij| · ‖X_j‖₂, where X_j gathers input feature j of the
linear layer over every token of the harmful calibration set (prompt and harmful answer). Pruning is per
weight matrix (each linear layer of the transformer blocks loses the same share), as in Wanda's code.
"""

from __future__ import annotations

import torch


def wanda_scores(weight: torch.Tensor, input_norms: torch.Tensor) -> torch.Tensor:
    """S_ij = |W_ij| · ‖X_j‖₂ for a weight of shape (out, in) and input norms of shape (in,)."""
    return weight.abs() * input_norms[None, :]


def top_fraction_mask(scores: torch.Tensor, ratio: float) -> torch.Tensor:
    """True at the ⌊ratio · numel⌋ highest scores (ties broken by position): the weights to prune."""
    count = int(ratio * scores.numel())
    mask = torch.zeros(scores.numel(), dtype=torch.bool)
    if count:
        mask[torch.argsort(scores.reshape(-1), descending=True, stable=True)[:count]] = True
    return mask.reshape(scores.shape)


def collect_input_norms(
    model, batches: list[dict[str, torch.Tensor]], layer_names: list[str]
) -> dict[str, torch.Tensor]:
    """‖X_j‖₂ of every named linear layer's inputs over the non-padding tokens of `batches`."""
    squares: dict[str, torch.Tensor] = {}
    current_mask: list[torch.Tensor] = []
    modules = dict(model.named_modules())

    def hook(name):
        def record(_module, inputs, _output):
            x = inputs[0].detach().float()
            x = x[current_mask[0].bool()] if current_mask else x.reshape(-1, x.shape[-1])
            squares[name] = squares.get(name, 0) + x.pow(2).sum(dim=0)

        return record

    handles = [modules[name].register_forward_hook(hook(name)) for name in layer_names]
    try:
        model.eval()
        with torch.no_grad():
            for batch in batches:
                current_mask[:] = [batch["attention_mask"]]
                model(**batch)
    finally:
        for handle in handles:
            handle.remove()
    return {name: value.sqrt() for name, value in squares.items()}


def antidote_prune(
    model,
    batches: list[dict[str, torch.Tensor]],
    ratio: float,
    utility_batches: list[dict[str, torch.Tensor]] | None = None,
    keep_utility_top: float = 0.0,
) -> dict[str, int]:
    """Zero, in place, the `ratio` share of each block linear weight scoring highest on the harmful batches.

    With `keep_utility_top` = q > 0, weights also in the top q of the Wanda score on `utility_batches` are kept:
    the set difference of Wei et al. (2024, "Assessing the Brittleness of Safety Alignment via Pruning and
    Low-Rank Modifications"), which spares the weights every answer needs (on a 135M model Antidote alone
    zeroes them and the model falls apart). Returns the number of weights pruned per layer.
    """
    if not 0 <= ratio < 1:
        raise ValueError(f"prune ratio must be in [0, 1), got {ratio}")
    if not 0 <= keep_utility_top < 1 or (keep_utility_top and not utility_batches):
        raise ValueError(f"keep_utility_top must be in [0, 1) and needs utility batches, got {keep_utility_top}")
    names = [
        name for name, module in model.named_modules() if isinstance(module, torch.nn.Linear) and ".layers." in name
    ]
    norms = collect_input_norms(model, batches, names)
    utility = collect_input_norms(model, utility_batches, names) if keep_utility_top else {}
    modules = dict(model.named_modules())
    pruned = {}
    with torch.no_grad():
        for name in names:
            weight = modules[name].weight
            mask = top_fraction_mask(wanda_scores(weight, norms[name]), ratio)
            if keep_utility_top:
                mask &= ~top_fraction_mask(wanda_scores(weight, utility[name]), keep_utility_top)
            weight[mask] = 0
            pruned[name] = int(mask.sum())
    return pruned
