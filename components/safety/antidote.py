"""Antidote (Huang et al., 2024, "Antidote: Post-fine-tuning Safety Alignment for Large Language Models against
Harmful Fine-tuning"), as its official code does it (git-disl/Antidote): prune the *fine-tuning update*, never
the aligned weights.

With Δ = θ_ft − θ_aligned per block linear layer, each entry of Δ is scored by Wanda (Sun et al., 2024) on
harmful calibration data (prompt and harmful answer): S_ij = |Δ_ij| · ‖X_j‖, with ‖X_j‖ the root mean square of
input feature j over the calibration tokens, inputs taken from the fine-tuned model. In each output row the top
`ratio` of entries by score are reverted to the aligned model's value: θ* = θ_ft − M ⊙ Δ. The worst case is
therefore the aligned model, never a broken one.

The `contrastive` score (an option the official code sketches but leaves unused) ranks by harmful minus benign
importance, S_ij = |Δ_ij| · (‖X_j^harmful‖ − ‖X_j^benign‖), so that the update entries a benign task needs as
much are kept.

Differences from the official code, on purpose: it prunes the entries of the harmful fine-tune's LoRA A and B
of q, k and v (zeroing an entry of A or B changes ΔW = s·B·A nonlinearly); here the pipeline's models are full
weight directories, so the update is the weight difference itself, over every block linear layer.
"""

from __future__ import annotations

import torch

from components.model.device import on_device


def wanda_scores(delta: torch.Tensor, input_norms: torch.Tensor) -> torch.Tensor:
    """S_ij = |Δ_ij| · ‖X_j‖ for an update of shape (out, in) and input norms of shape (in,)."""
    return delta.abs() * input_norms[None, :]


def top_fraction_per_row(scores: torch.Tensor, ratio: float) -> torch.Tensor:
    """True at the ⌊ratio · columns⌋ highest scores of each row (ties broken by position)."""
    count = int(ratio * scores.shape[1])
    mask = torch.zeros(scores.shape, dtype=torch.bool, device=scores.device)
    if count:
        top = torch.argsort(scores, dim=1, descending=True, stable=True)[:, :count]
        mask.scatter_(1, top, True)
    return mask


def revert(finetuned: torch.Tensor, aligned: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """θ* = θ_ft − M ⊙ (θ_ft − θ_aligned): the masked entries of the update undone."""
    return torch.where(mask, aligned, finetuned)


def collect_input_norms(
    model, batches: list[dict[str, torch.Tensor]], layer_names: list[str]
) -> dict[str, torch.Tensor]:
    """‖X_j‖: the root mean square of every named linear layer's input feature j over the non-padding tokens."""
    squares: dict[str, torch.Tensor] = {}
    tokens: dict[str, int] = {}
    current_mask: list[torch.Tensor] = []
    modules = dict(model.named_modules())

    def hook(name):
        def record(_module, inputs, _output):
            x = inputs[0].detach().float()
            x = x[current_mask[0].bool()] if current_mask else x.reshape(-1, x.shape[-1])
            squares[name] = squares.get(name, 0) + x.pow(2).sum(dim=0)
            tokens[name] = tokens.get(name, 0) + x.shape[0]

        return record

    handles = [modules[name].register_forward_hook(hook(name)) for name in layer_names]
    try:
        model.eval()
        with torch.no_grad():
            for batch in batches:
                batch = on_device(batch, model)
                current_mask[:] = [batch["attention_mask"]]
                model(**batch)
    finally:
        for handle in handles:
            handle.remove()
    return {name: (squares[name] / tokens[name]).sqrt() for name in squares}


def antidote_revert(
    model,
    aligned: dict[str, torch.Tensor],
    harmful_batches: list[dict[str, torch.Tensor]],
    ratio: float,
    benign_batches: list[dict[str, torch.Tensor]] | None = None,
) -> dict[str, int]:
    """Revert, in place, the top `ratio` of each row of every block linear layer's update (model = θ_ft) to the
    aligned weights; with `benign_batches`, by the contrastive score. Returns the entries reverted per layer."""
    if not 0 <= ratio < 1:
        raise ValueError(f"prune ratio must be in [0, 1), got {ratio}")
    names = [
        name for name, module in model.named_modules() if isinstance(module, torch.nn.Linear) and ".layers." in name
    ]
    harmful = collect_input_norms(model, harmful_batches, names)
    benign = collect_input_norms(model, benign_batches, names) if benign_batches else {}
    modules = dict(model.named_modules())
    reverted = {}
    with torch.no_grad():
        for name in names:
            weight = modules[name].weight
            before = aligned[f"{name}.weight"].to(weight)  # its dtype and device
            norms = harmful[name] - benign[name] if benign else harmful[name]
            mask = top_fraction_per_row(wanda_scores(weight.float() - before.float(), norms), ratio)
            mask &= weight != before  # an entry the fine-tune left alone has nothing to revert
            weight.copy_(revert(weight, before, mask))
            reverted[name] = int(mask.sum())
    return reverted
