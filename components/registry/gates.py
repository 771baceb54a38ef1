"""Evaluation gates: absolute floors and ceilings, bounds relative to another candidate of the same run (the base
model, the merge a safety stage started from), and no regression against the current champion, each held by a
one-sided confidence bound rather than a point value; promotion needs a gain beyond noise on the same items.

Pure functions over metric dicts and per-item outcomes (what the evaluate stage writes per candidate:
metrics.json, samples.jsonl); the registry module feeds them the champion's and the referenced candidates'. A gate
on a metric the evaluation did not compute is an error, not a pass.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from components.errors import InputError
from components.evaluate.metric_names import higher_is_better
from components.evaluate.outcomes import PERPLEXITY, Items
from components.evaluate.uncertainty import bootstrap_bound, mcnemar_exact, paired_difference_bound, wilson_bound
from components.registry.config import GateSpec, RelativeBound


@dataclass(frozen=True)
class Evidence:
    """A candidate's metrics and the per-item outcomes behind them; `items` None: its metrics only (a champion
    registered without its samples), which the gates can compare with but not resample."""

    metrics: dict[str, float]
    items: dict[str, Items] | None = None


@dataclass(frozen=True)
class GateResult:
    metric: str
    rule: str  # "min", "max", "relative" or "no_regression"
    threshold: float  # the bound the value was held to (no_regression: champion ± tolerance; relative: below)
    value: float  # the candidate's point value
    champion: float | None
    passed: bool
    basis: str = ""  # relative: how the bound was set, e.g. "0.5 × merge-ties (0.93) + 0"
    bound: float | None = None  # what was held to the threshold: the candidate's one-sided confidence bound
    test: str = ""  # how `bound` was had, e.g. "Wilson 95% upper bound, 31/150"


@dataclass(frozen=True)
class Improvement:
    """A gated metric on which the candidate beats the champion beyond noise on the same items."""

    margin: float  # the point margin, in the metric's better direction
    test: str  # e.g. "exact McNemar, 14 items better, 3 worse, p = 0.013"


def confidence_bound(metric: str, items: Items, confidence: float, upper: bool) -> tuple[float, str]:
    """The candidate's one-sided bound on `metric` at `confidence` and how it was had: Wilson's for a rate, the
    percentile bootstrap over chunks for perplexity."""
    values = list(items.values.values())
    side = "upper" if upper else "lower"
    if metric == PERPLEXITY[0]:
        bound = bootstrap_bound(values, items.statistic(), confidence, upper)
        return bound, f"bootstrap {confidence:.0%} {side} bound, {len(values)} chunks"
    hits = round(sum(values))
    return wilson_bound(
        hits, len(values), confidence, upper
    ), f"Wilson {confidence:.0%} {side} bound, {hits}/{len(values)}"


def items_of(evidence: Evidence, metric: str) -> Items:
    if evidence.items is None or metric not in evidence.items:
        raise InputError(
            f"gate on {metric}: no per-item outcomes in the candidate's samples.jsonl; run the evaluate stage again"
        )
    return evidence.items[metric]


def check_gates(
    candidate: Evidence,
    champion: Evidence | None,
    gates: dict[str, GateSpec],
    references: dict[str, dict[str, float]] | None = None,
    confidence: float = 0.95,
) -> list[GateResult]:
    """Every gate of `gates` on `candidate`, each holding only when the candidate's one-sided confidence bound at
    `confidence` holds (not its point value). No-regression gates pass when there is no champion yet, and otherwise
    hold the paired bound of the difference on the same items (non-inferiority by `tolerance`); relative gates read
    the point values of the candidates they name in `references`."""
    metrics = candidate.metrics
    missing = sorted(metric for metric in gates if metric not in metrics)
    if missing:
        raise InputError(
            f"gates on {missing}: the evaluation did not compute them (computed: {', '.join(sorted(metrics))})"
        )
    results = []
    for metric, spec in gates.items():
        value, items = metrics[metric], items_of(candidate, metric)
        theirs = champion.metrics.get(metric) if champion else None
        floor = higher_is_better(metric)
        if spec.min is not None:
            bound, how = confidence_bound(metric, items, confidence, upper=False)
            results.append(GateResult(metric, "min", spec.min, value, theirs, bound >= spec.min, "", bound, how))
        if spec.max is not None:
            bound, how = confidence_bound(metric, items, confidence, upper=True)
            results.append(GateResult(metric, "max", spec.max, value, theirs, bound <= spec.max, "", bound, how))
        if spec.relative is not None:
            threshold, basis = relative_threshold(metric, spec.relative, references or {})
            bound, how = confidence_bound(metric, items, confidence, upper=not floor)
            passed = bound >= threshold if floor else bound <= threshold
            results.append(GateResult(metric, "relative", threshold, value, theirs, passed, basis, bound, how))
        if spec.tolerance is not None:
            if champion is None or theirs is None:
                results.append(GateResult(metric, "no_regression", float("nan"), value, None, True))
                continue
            threshold = theirs - spec.tolerance if floor else theirs + spec.tolerance
            if champion.items is not None and metric in champion.items:
                mine, its = items.paired_with(champion.items[metric])
                difference = paired_difference_bound(mine, its, items.statistic(), confidence, upper=not floor)
                bound = theirs + difference
                how = f"paired bootstrap {confidence:.0%} {'lower' if floor else 'upper'} bound, {len(mine)} items"
            else:
                bound, how = confidence_bound(metric, items, confidence, upper=not floor)
                how += "; unpaired (the champion's items are not at hand)"
            passed = bound >= threshold if floor else bound <= threshold
            results.append(GateResult(metric, "no_regression", threshold, value, theirs, passed, "", bound, how))
    return results


def relative_threshold(metric: str, bound: RelativeBound, references: dict[str, dict[str, float]]) -> tuple[float, str]:
    """`times` × the referenced candidate's value + `plus`, and how it was set: a ceiling where lower is better,
    else a floor."""
    if metric not in references.get(bound.of, {}):
        raise InputError(f"gate on {metric}: relative to {bound.of!r}, whose {metric} was not evaluated in this run")
    reference = references[bound.of][metric]
    basis = f"{bound.times:g} × {bound.of} ({reference:.4g}) {'+' if bound.plus >= 0 else '−'} {abs(bound.plus):g}"
    return bound.times * reference + bound.plus, basis


def all_passed(results: list[GateResult]) -> bool:
    return all(result.passed for result in results)


def improvements(
    candidate: Evidence, champion: Evidence | None, gates: dict[str, GateSpec], confidence: float = 0.95
) -> dict[str, Improvement]:
    """The gated metrics (those with a no-regression tolerance) on which the candidate beats the champion beyond
    noise on the same items: for a rate, the exact McNemar test on the items only one of them gets right (or
    refuses...) at level 1 − `confidence`, the candidate ahead; for perplexity, the paired bootstrap bound of the
    gain above 0. Without the champion's items, the point margin must exceed the tolerance (stated as unpaired).
    With no champion, nothing is compared."""
    if champion is None:
        return {}
    better = {}
    for metric, spec in gates.items():
        if spec.tolerance is None or metric not in champion.metrics:
            continue
        floor = higher_is_better(metric)
        margin = candidate.metrics[metric] - champion.metrics[metric]
        margin = margin if floor else -margin
        if champion.items is None or metric not in champion.items:
            if margin > spec.tolerance:
                better[metric] = Improvement(margin, f"unpaired: the margin exceeds the tolerance {spec.tolerance:g}")
            continue
        mine, its = items_of(candidate, metric).paired_with(champion.items[metric])
        if metric == PERPLEXITY[0]:
            statistic = items_of(candidate, metric).statistic()
            gain = -paired_difference_bound(mine, its, statistic, confidence, upper=True)  # lower bound of its − mine
            if gain > 0:
                better[metric] = Improvement(
                    margin, f"paired bootstrap {confidence:.0%} lower bound of the gain {gain:.4g}"
                )
            continue
        ahead = sum((a > b) if floor else (a < b) for a, b in zip(mine, its, strict=True))
        behind = sum((a < b) if floor else (a > b) for a, b in zip(mine, its, strict=True))
        p_value = mcnemar_exact(ahead, behind)
        if ahead > behind and p_value < 1 - confidence:
            better[metric] = Improvement(
                margin, f"exact McNemar, {ahead} items better, {behind} worse, p = {p_value:.3g}"
            )
    return better


def promotion(
    results: list[GateResult], better: dict[str, Improvement], champion_version: str | None
) -> tuple[bool, str]:
    """Whether the candidate should become champion, and why: every gate passed, and either there is no champion
    yet or the candidate is better than it beyond noise on at least one gated metric."""
    if not all_passed(results):
        failed = ", ".join(f"{r.metric} ({r.rule})" for r in results if not r.passed)
        return False, f"not promoted: gates failed ({failed})"
    if champion_version is None:
        return True, "promoted: every gate passed and there is no champion yet"
    if not better:
        return False, (
            f"not promoted: every gate passed, but no gated metric is better than champion v{champion_version}'s "
            "beyond noise on the same items (a candidate within the noise is not an improvement)"
        )
    margins = ", ".join(f"{metric} by {gain.margin:.4g} ({gain.test})" for metric, gain in better.items())
    return True, f"promoted: every gate passed and it beats champion v{champion_version} on {margins}"


def report_json(
    candidate: str,
    results: list[GateResult],
    champion_version: str | None,
    weights_sha256: str | None = None,
    better: dict[str, Improvement] | None = None,
    champion_source: str = "",
    confidence: float = 0.95,
) -> str:
    """The verdict as the register stage and the registry read it, bound to the weights it judged;
    `champion_source`: where the champion's metrics came from."""
    promote, why = promotion(results, better or {}, champion_version)
    return (
        json.dumps(
            {
                "candidate": candidate,
                "weights_sha256": weights_sha256,
                "passed": all_passed(results),
                "champion_version": champion_version,
                "champion_metrics": champion_source,
                "confidence": confidence,
                "better_than_champion": {metric: asdict(gain) for metric, gain in (better or {}).items()},
                "promote": promote,
                "promotion": why,
                "gates": [asdict(result) for result in results],
            },
            indent=2,
        )
        + "\n"
    )


def report_markdown(
    candidate: str,
    results: list[GateResult],
    champion_version: str | None,
    better: dict[str, Improvement] | None = None,
    champion_source: str = "",
    confidence: float = 0.95,
) -> str:
    verdict = (
        "PASSED: every gate holds"
        if all_passed(results)
        else "FAILED: " + ", ".join(f"{r.metric} ({r.rule})" for r in results if not r.passed)
    )
    against = f"champion version {champion_version}" if champion_version else "no champion yet"
    if champion_version and champion_source:
        against += f": {champion_source}"
    lines = [
        f"# Gate report: {candidate}",
        "",
        f"**{verdict}** (compared with {against})",
        "",
        promotion(results, better or {}, champion_version)[1].capitalize() + ".",
        "",
        f"Each gate holds the candidate's one-sided {confidence:.0%} confidence bound (the `held` column) to the "
        "threshold, not its point value; no-regression holds the paired bound on the same items as the champion.",
        "",
        "| metric | rule | threshold | candidate | held | how | champion | result |",
        "| --- | --- | ---: | ---: | ---: | --- | ---: | --- |",
    ]
    for r in results:
        floor = r.rule == "min" or (r.rule != "max" and higher_is_better(r.metric))
        bound = (
            "n/a (no champion)"
            if r.rule == "no_regression" and r.champion is None
            else f"{'≥' if floor else '≤'} {r.threshold:.4g}" + (f" ({r.basis})" if r.basis else "")
        )
        champion = "" if r.champion is None else f"{r.champion:.4g}"
        held = "" if r.bound is None else f"{r.bound:.4g}"
        lines.append(
            f"| {r.metric} | {r.rule} | {bound} | {r.value:.4g} | {held} | {r.test} | {champion} | "
            f"{'pass' if r.passed else 'FAIL'} |"
        )
    return "\n".join(lines) + "\n"
