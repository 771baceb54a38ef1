"""A causal LM's cross-entropy with the LM head run only where a label is, a slice of positions at a time.

The loss −Σ log p(y_{t+1} | h_t) needs the logits of the positions that have a next-token label. A model's own
loss computes the full-vocabulary logits of every position (49,152 floats each on SmolLM2) and keeps them, their
log-softmax and their gradient until backward: on a batch of 4 × 256 tokens that is about 200 MB each, the largest
tensors of a LoRA step, and in SFT with a completion-only loss most of those positions (prompt, padding) carry no
label at all. `next_token_loss` runs the model's decoder, then the head over the labelled positions only,
`chunk_rows` at a time, and forms each chunk's gradient with respect to the hidden states in the forward pass, with
the same torch kernels the full computation uses, so no full-vocabulary tensor outlives its chunk and nothing is
computed twice. Where the head is frozen (LoRA, SOMF's mask) the gradient reaching the model is the model's own
loss's, bit for bit (tests/test_loss.py).

Written here rather than taken from a library: Liger-Kernel's fused linear cross-entropy is the same idea in Triton
(GPU only); TRL's chunked LM head recomputes each tile's logits in the backward pass and adds logging statistics
(35% of a step on a CPU, components/train/job.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Model types whose causal-LM forward is exactly logits = lm_head(decoder(...).last_hidden_state) with the loss
# `ForCausalLMLoss` (no logit scaling or soft-capping): read in transformers' modeling files.
PLAIN_HEAD_MODEL_TYPES = frozenset({"llama", "mistral", "qwen2", "qwen3"})

CHUNK_ROWS = 256  # positions per slice of the head: 256 × 49,152 float32 logits are 50 MB


class _HeadCrossEntropy(torch.autograd.Function):
    """Σ over rows of −log softmax(h_i Wᵀ)[y_i], times `scale`; the gradient for h is formed in forward."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, scale, chunk_rows):
        grad_hidden = torch.zeros_like(hidden)
        total = hidden.new_zeros((), dtype=torch.float32)
        # slices of equal size: a product of only a few rows may take another kernel than the full product (a
        # matrix-vector one for a single row), whose rounding differs
        for rows in torch.arange(len(hidden), device=hidden.device).tensor_split(-(-len(hidden) // chunk_rows)):
            with torch.enable_grad():
                h = hidden[rows].detach().requires_grad_()
                loss = F.cross_entropy(F.linear(h, weight).float(), targets[rows], reduction="sum")
                (grad_hidden[rows],) = torch.autograd.grad(loss, h, grad_outputs=scale)
            total += loss.detach()
        ctx.save_for_backward(grad_hidden)
        return total * scale

    @staticmethod
    def backward(ctx, grad_output):
        (grad_hidden,) = ctx.saved_tensors
        return grad_hidden * grad_output, None, None, None, None


def head_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    num_items_in_batch: torch.Tensor | int | None = None,
    chunk_rows: int = CHUNK_ROWS,
) -> torch.Tensor:
    """Causal-LM loss −Σ_t log softmax(W h_t)[y_{t+1}] over the labelled (≠ −100) next tokens, divided by their count
    (or by `num_items_in_batch`, as transformers' `ForCausalLMLoss` does under gradient accumulation).

    `hidden` (batch, positions, d) are the decoder's final hidden states, `weight` (vocab, d) the frozen head,
    `labels` (batch, positions) unshifted. The value equals the model's own loss up to the order of a float sum;
    the gradient for `hidden` equals it exactly (the same kernels, row by row; `backward()` on the loss)."""
    targets = F.pad(labels, (0, 1), value=-100)[..., 1:].reshape(-1)
    labelled = (targets != -100).nonzero().squeeze(1)
    if len(labelled) == 0:  # as the model's loss: 0/0 (mean) or 0/n (sum)
        return hidden.sum() * 0 + (torch.tensor(float("nan")) if num_items_in_batch is None else 0.0)
    one = torch.ones((), dtype=torch.float32, device=hidden.device)
    # the gradient a scalar loss / n sends to the sum (autograd's DivBackward, or nll_loss's mean): 1 / n in float32
    scale = one / (num_items_in_batch if num_items_in_batch is not None else len(labelled))
    flat = hidden.reshape(-1, hidden.shape[-1])
    return _HeadCrossEntropy.apply(flat[labelled], weight.detach(), targets[labelled], scale, chunk_rows)


def plain_head(model) -> torch.nn.Linear | None:
    """The model's LM head where `next_token_loss` may stand in for its own loss, else None: a plain transformers
    causal LM (possibly inside a PEFT wrapper) whose head is a bias-free linear layer that is not being trained."""
    config = getattr(model, "config", None)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if getattr(config, "model_type", None) not in PLAIN_HEAD_MODEL_TYPES or type(head) is not torch.nn.Linear:
        return None
    return head if head.bias is None and not head.weight.requires_grad else None


def next_token_loss(model, batch: dict[str, torch.Tensor], num_items_in_batch=None) -> torch.Tensor:
    """`model(**batch).loss` (a causal LM with `labels` in `batch`), with the head over labelled positions only
    (`head_cross_entropy`) where `plain_head` allows; otherwise the model's own loss."""
    head = plain_head(model)
    if head is None:
        extra = {} if num_items_in_batch is None else {"num_items_in_batch": num_items_in_batch}
        return model(**batch, **extra).loss
    inputs = {key: value for key, value in batch.items() if key != "labels"}
    hidden = model.get_decoder()(**inputs, use_cache=False).last_hidden_state
    return head_cross_entropy(hidden, head.weight, batch["labels"], num_items_in_batch)
