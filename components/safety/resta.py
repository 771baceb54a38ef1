"""RESTA (Bhardwaj et al., 2024, "Language Models are Homer Simpson! Safety Re-Alignment of Fine-tuned Language
Models through Task Arithmetic", arXiv 2402.11746): add the safety vector back to a fine-tuned model.

The safety vector is what alignment added to its base, τ_safe = θ_aligned − θ_base; the re-aligned model is
θ* = θ_ft + λ·τ_safe. It needs no data and no training, which makes it the training-free third method beside SOMF
(a learned mask) and Antidote (a pruned update). The paper's optional DARE step on the fine-tuning delta is left out.
"""

from __future__ import annotations

import torch


def restore_safety(
    finetuned: torch.Tensor, aligned: torch.Tensor, base: torch.Tensor, scale: float = 1.0
) -> torch.Tensor:
    """RESTA: θ* = θ_ft + λ·(θ_aligned − θ_base)."""
    return finetuned + scale * (aligned - base)
