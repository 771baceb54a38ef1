"""SOMF (Yi et al., 2024, "A safety realignment framework via subspace-oriented model fusion for large language
models"): find the safety-related subspace of a fine-tuned model's weights with a mask learned on safety data,
then fuse: θ* = M ⊙ θ_aligned + (1 − M) ⊙ θ_ft. Coordinates in the mask come back from the initially
aligned model; the rest keep the fine-tuned (or merged) knowledge.

The mask is learned as in the paper, by gradient descent on a relaxed mask: with M = σ(s),
θ(s) = θ_ft + σ(s) ⊙ (θ_aligned − θ_ft) is trained to minimise the safety loss (the refusal targets of
harmful prompts) plus λ · mean(σ(s)), a sparsity term that keeps the mask to the coordinates safety needs;
M = [σ(s) > ½] at the end. Only coordinates where θ_aligned ≠ θ_ft can matter, so only those tensors get
mask logits. Several fine-tuned models fused at once: merge them first (any merge method), then realign.
"""

from __future__ import annotations

import torch
from torch.func import functional_call


def fuse(aligned: torch.Tensor, finetuned: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """SOMF fusion: θ* = M ⊙ θ_aligned + (1 − M) ⊙ θ_ft."""
    return torch.where(mask, aligned, finetuned)


def learn_safety_mask(
    model,
    aligned: dict[str, torch.Tensor],
    finetuned: dict[str, torch.Tensor],
    batches: list[dict[str, torch.Tensor]],
    steps: int,
    lr: float = 0.1,
    sparsity: float = 1.0,
    init_logit: float = -3.0,
) -> dict[str, torch.Tensor]:
    """Boolean mask per differing tensor: True where the safety loss needs the aligned model's value.

    `model` must hold θ_ft: tensors that do not differ are read from it as they are (tied embeddings stay
    tied). `batches` carry the model's keyword inputs (for a causal LM: input_ids, attention_mask, and labels
    that are -100 outside the refusal tokens).
    """
    # named_parameters lists a tied tensor (embeddings / LM head) once
    names = [n for n, _ in model.named_parameters() if not torch.equal(aligned[n], finetuned[n])]
    if not names:
        return {}
    deltas = {n: (aligned[n] - finetuned[n]).float() for n in names}
    logits = {n: torch.full(deltas[n].shape, init_logit, requires_grad=True) for n in names}
    optimizer = torch.optim.Adam(logits.values(), lr=lr)
    total = sum(d.numel() for d in deltas.values())
    model.eval()
    for step in range(steps):
        batch = batches[step % len(batches)]
        params = {n: finetuned[n].float() + torch.sigmoid(logits[n]) * deltas[n] for n in names}
        loss = functional_call(model, params, args=(), kwargs=batch).loss
        density = sum(torch.sigmoid(s).sum() for s in logits.values()) / total
        optimizer.zero_grad()
        (loss + sparsity * density).backward()
        optimizer.step()
    return {n: torch.sigmoid(logits[n]).detach() > 0.5 for n in names}
