"""How sure a metric is: one-sided confidence bounds, and paired comparisons of two models on the same items.

Pure functions over per-item outcomes (a 0/1 per item for a rate; (log-probability, tokens) per chunk for
perplexity). Rates get Wilson's score bound (Wilson, 1927); perplexity, a ratio of sums, the percentile bootstrap
over items (Efron & Tibshirani, 1993); two models on the same items get the exact McNemar test on the discordant
items (McNemar, 1947) and a paired percentile bootstrap of the difference. The bootstrap is seeded: the same
items give the same bounds.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from statistics import NormalDist
from typing import TypeVar

Item = TypeVar("Item")


def z_of(confidence: float) -> float:
    """The standard normal quantile a one-sided bound at `confidence` uses (1.645 at 0.95)."""
    return NormalDist().inv_cdf(confidence)


def wilson_bound(successes: int, n: int, confidence: float, upper: bool) -> float:
    """One-sided Wilson score bound of a proportion: (p̂ + z²/2n ± z·√(p̂(1−p̂)/n + z²/4n²)) / (1 + z²/n), z = Φ⁻¹(c)."""
    if n == 0:
        return 1.0 if upper else 0.0
    z, p = z_of(confidence), successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return min(1.0, centre + half) if upper else max(0.0, centre - half)


def quantile(sorted_values: Sequence[float], q: float) -> float:
    """The q-quantile of sorted values, linear between order statistics (numpy's default)."""
    position = q * (len(sorted_values) - 1)
    low = math.floor(position)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (position - low)


def bootstrap(
    items: Sequence[Item], statistic: Callable[[Sequence[Item]], float], resamples: int, seed: int
) -> list[float]:
    """The statistic on `resamples` resamples of the items with replacement, sorted."""
    rng = random.Random(seed)
    n = len(items)
    return sorted(statistic([items[rng.randrange(n)] for _ in range(n)]) for _ in range(resamples))


def bootstrap_bound(
    items: Sequence[Item],
    statistic: Callable[[Sequence[Item]], float],
    confidence: float,
    upper: bool,
    resamples: int = 2000,
    seed: int = 0,
) -> float:
    """One-sided percentile-bootstrap bound: the c- (upper) or (1−c)-quantile of the resampled statistic."""
    return quantile(bootstrap(items, statistic, resamples, seed), confidence if upper else 1 - confidence)


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value on b items only the first model got and c only the second did:
    2 · P(X ≤ min(b, c)) for X ~ Binomial(b + c, ½), at most 1."""
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(b, c) + 1)) / 2**n
    return min(1.0, 2 * tail)


def paired_difference_bound(
    first: Sequence[Item],
    second: Sequence[Item],
    statistic: Callable[[Sequence[Item]], float],
    confidence: float,
    upper: bool,
) -> float:
    """One-sided paired-bootstrap bound of statistic(first) − statistic(second), resampling items (the i-th of each
    is the same item)."""
    if len(first) != len(second):
        raise ValueError(f"paired items: {len(first)} against {len(second)}")

    def difference(sample: Sequence[tuple[Item, Item]]) -> float:
        return statistic([a for a, _ in sample]) - statistic([b for _, b in sample])

    return bootstrap_bound(list(zip(first, second, strict=True)), difference, confidence, upper)


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def pooled_perplexity(chunks: Sequence[tuple[float, int]]) -> float:
    """exp(−Σ log p / Σ tokens) over (log-probability, tokens) chunks: the suite's perplexity of a set of chunks."""
    return math.exp(-sum(lp for lp, _ in chunks) / sum(n for _, n in chunks))
