"""The evaluation suite's headline metrics, named once: which way each improves, and which measure safety.

The suite (components/evaluate/suite.py) computes them; the gates, the recipe search's objectives, the summary
table and the Prefect run's table read them from here."""

from __future__ import annotations

from typing import Literal

# Which way each gateable metric improves, in the order tables show them.
METRIC_DIRECTIONS: dict[str, Literal["higher", "lower"]] = {
    "domain_mc_acc": "higher",
    "domain_mc_acc_norm": "higher",
    "math_exact_match": "higher",
    "domain_perplexity": "lower",
    "general_mc_acc": "higher",
    "general_mc_acc_norm": "higher",
    "gsm8k_exact_match": "higher",
    "harmful_score": "lower",
    "over_refusal": "lower",
}

SAFETY_METRICS = ("harmful_score", "over_refusal")


def higher_is_better(metric: str) -> bool:
    return METRIC_DIRECTIONS[metric] == "higher"
