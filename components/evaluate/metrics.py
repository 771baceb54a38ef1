"""Metric functions: pure, over numbers and strings, each checked by hand in the tests."""

from __future__ import annotations

import math
import re

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
