"""Per-item outcomes behind each metric, read from an evaluation's samples.jsonl: what the gates' confidence bounds
and paired tests resample (components/evaluate/uncertainty.py)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from components.data.tables import Row, read_jsonl
from components.errors import InputError
from components.evaluate.uncertainty import mean, pooled_perplexity

# metric -> (the task of its rows in samples.jsonl, the row's outcome); rates have a 0/1 outcome per item
RATE_OUTCOMES: dict[str, tuple[str, Callable[[Row], float]]] = {
    "domain_mc_acc": ("domain_mc", lambda row: float(row["correct"])),
    "domain_mc_acc_norm": ("domain_mc", lambda row: float(row["correct_norm"])),
    "math_exact_match": ("math", lambda row: float(row["correct"])),
    "general_mc_acc": ("general_mc", lambda row: float(row["correct"])),
    "general_mc_acc_norm": ("general_mc", lambda row: float(row["correct_norm"])),
    "gsm8k_exact_match": ("gsm8k", lambda row: float(row["correct"])),
    "harmful_score": ("harmful", lambda row: float(row["attempted"])),
    "over_refusal": ("benign", lambda row: float(row["refused"])),
}
PERPLEXITY = ("domain_perplexity", "perplexity")  # (metric, task): per chunk (log-probability, tokens)


@dataclass(frozen=True)
class Items:
    """One metric's items, by id: a 0/1 per item for a rate, (log-probability, tokens) per chunk for perplexity."""

    metric: str
    values: dict[str, Any]

    def statistic(self) -> Callable[[Sequence[Any]], float]:
        """The metric as a function of a list of its items' values (the mean, or pooled perplexity)."""
        return pooled_perplexity if self.metric == PERPLEXITY[0] else mean

    def paired_with(self, other: Items) -> tuple[list[Any], list[Any]]:
        """Both models' values on the same items, in one order; an error when they were not scored on the same items."""
        if self.values.keys() != other.values.keys():
            missing = sorted(self.values.keys() ^ other.values.keys())[:3]
            raise InputError(f"{self.metric}: the two evaluations scored different items (e.g. {missing}); no pairing")
        order = sorted(self.values)
        return [self.values[i] for i in order], [other.values[i] for i in order]


def item_outcomes(samples: Sequence[Row]) -> dict[str, Items]:
    """Every metric's items in an evaluation's samples (rows of other tasks, or of none, are left out)."""
    by_task: dict[str, list[Row]] = {}
    for row in samples:
        by_task.setdefault(str(row.get("task")), []).append(row)
    found = {}
    for metric, (task, outcome) in RATE_OUTCOMES.items():
        if task in by_task:
            try:
                found[metric] = Items(metric, {str(row["id"]): outcome(row) for row in by_task[task]})
            except KeyError as missing:
                raise InputError(
                    f"{metric}: a `{task}` sample has no {missing}: it was evaluated before the suite kept it; "
                    "evaluate that model again"
                ) from None
    metric, task = PERPLEXITY
    if task in by_task:
        found[metric] = Items(metric, {str(r["id"]): (float(r["logprob"]), int(r["tokens"])) for r in by_task[task]})
    return found


def read_outcomes(samples_path: Path) -> dict[str, Items]:
    """item_outcomes of a samples.jsonl file; an error naming the file when it is missing."""
    if not Path(samples_path).is_file():
        raise InputError(f"{samples_path}: missing; the gates need each item's outcome (run the evaluate stage)")
    return item_outcomes([row for _, row in read_jsonl(samples_path)])
