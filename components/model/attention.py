"""Attention for greedy decoding's steps on a CPU: one new token per row over a static key/value cache.

transformers' `sdpa` attention reaches torch's CPU flash-attention kernel, which is slow for a single query per
row: the same arithmetic written as two batched products and a softmax takes 0.9 ms a layer against its 2.4 ms
(150 rows over 80 cache columns in bfloat16), and a whole decoding step 18% less time in bfloat16 and in float32
(docs/measurements.md "Evaluation in bfloat16"). Written here because the other paths on offer measured slower
still (sdpa's math backend, transformers' eager attention, `torch.compile`); everything with more than one query
per row (prompts, training) stays with `sdpa`.
"""

from __future__ import annotations

import contextlib

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

DECODE_ATTENTION = "posttrain_decode"


def single_query_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None, scaling: float
) -> torch.Tensor:
    """softmax(q Kᵀ · scaling + mask) V (Vaswani et al. 2017) for one query per row and head, query head h reading
    key/value head h // (H / H_kv) (grouped-query attention, Ainslie et al. 2023); scores in float32.

    query (B, H, 1, d); key, value (B, H_kv, L, d); mask (B, 1, 1, L), True where a query may attend; → (B, H, 1, d).
    """
    rows, heads, _, width = query.shape
    grouped = query.reshape(rows, key.shape[1], heads // key.shape[1], width)  # (B, H_kv, H / H_kv, d)
    scores = torch.matmul(grouped, key.transpose(-1, -2)).float() * scaling
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return torch.matmul(torch.softmax(scores, dim=-1).to(value.dtype), value).reshape(rows, heads, 1, width)


def decode_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """transformers' attention-function interface: `single_query_attention` for one query per row under a boolean
    mask shared by the heads, `sdpa` for anything else. Returns (B, 1, H, d), as `sdpa` does."""
    shared_mask = attention_mask is None or (attention_mask.dtype == torch.bool and attention_mask.shape[1] == 1)
    if query.shape[2] != 1 or not shared_mask or dropout:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout, scaling, **kwargs)
    scale = query.shape[-1] ** -0.5 if scaling is None else scaling
    return single_query_attention(query, key, value, attention_mask, scale).transpose(1, 2), None


AttentionInterface.register(DECODE_ATTENTION, decode_attention)
AttentionMaskInterface.register(DECODE_ATTENTION, sdpa_mask)  # the same boolean masks as `sdpa` builds


@contextlib.contextmanager
def decoding_attention(model):
    """Inside the block a CPU model that uses `sdpa` attends with `decode_attention`; afterwards as it was."""
    previous = model.config._attn_implementation
    if previous != "sdpa" or model.device.type != "cpu":
        yield
        return
    model.set_attn_implementation(DECODE_ATTENTION)
    try:
        yield
    finally:
        model.set_attn_implementation(previous)
