"""Metric functions: pure, over numbers and strings, each checked by hand in the tests."""

from __future__ import annotations

import math
import re
from collections.abc import Hashable, Sequence

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (Wilson, 1927): robust for small n and p near 0 or 1."""
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return (max(0.0, centre - half), min(1.0, centre + half))


def final_number(text: str) -> str | None:
    """The answer a math solution commits to: the number after `####` if present, else the last number."""
    marked = text.split("####")
    candidates = _NUMBER.findall(marked[1] if len(marked) > 1 else text)
    if not candidates:
        return None
    value = (candidates[0] if len(marked) > 1 else candidates[-1]).replace(",", "")
    return value[:-2] if value.endswith(".0") else value


def perplexity(total_logprob: float, tokens: int) -> float:
    """exp(-(1/N) sum log p): the perplexity of N tokens with summed log-probability `total_logprob`."""
    return math.exp(-total_logprob / tokens)


def cohen_kappa(first: Sequence[Hashable], second: Sequence[Hashable]) -> float:
    """κ = (p_o − p_e) / (1 − p_e) (Cohen, 1960): two readers' agreement p_o beyond the p_e = Σ_k p_k^(1) p_k^(2) their
    label frequencies give by chance; 1 when they agree on every item and chance alone would not (0/0 is 1)."""
    n = len(first)
    if n == 0 or n != len(second):
        raise ValueError(f"cohen_kappa: two readings of the same items are needed, got {len(first)} and {len(second)}")
    observed = sum(a == b for a, b in zip(first, second, strict=True)) / n
    chance = sum(list(first).count(k) * list(second).count(k) for k in set(first) | set(second)) / (n * n)
    return 1.0 if chance == 1 else (observed - chance) / (1 - chance)
