"""Evaluation gates: absolute floors and ceilings, bounds relative to another candidate of the same run (the base
model, the merge a safety stage started from), and no regression against the current champion.

Pure functions over metric dicts (what the evaluate stage writes per candidate); the registry module feeds
them the champion's and the referenced candidates' numbers. A gate on a metric the evaluation did not compute is
an error, not a pass.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from components.errors import InputError
from components.evaluate.metric_names import higher_is_better
from components.registry.config import GateSpec, RelativeBound


@dataclass(frozen=True)
class GateResult:
    metric: str
    rule: str  # "min", "max", "relative" or "no_regression"
    threshold: float  # the bound the value was held to (no_regression: champion ± tolerance; relative: below)
    value: float
    champion: float | None
    passed: bool
    basis: str = ""  # relative: how the bound was set, e.g. "0.5 × merge-ties (0.93) + 0"


def check_gates(
    candidate: dict[str, float],
    champion: dict[str, float] | None,
    gates: dict[str, GateSpec],
    references: dict[str, dict[str, float]] | None = None,
) -> list[GateResult]:
    """Every gate of `gates` on `candidate`; no-regression gates pass when there is no champion yet; relative gates
    read the metrics of the candidates they name in `references`."""
    missing = sorted(metric for metric in gates if metric not in candidate)
    if missing:
        raise InputError(
            f"gates on {missing}: the evaluation did not compute them (computed: {', '.join(sorted(candidate))})"
        )
    results = []
    for metric, spec in gates.items():
        value = candidate[metric]
        theirs = champion.get(metric) if champion else None
        if spec.min is not None:
            results.append(GateResult(metric, "min", spec.min, value, theirs, value >= spec.min))
        if spec.max is not None:
            results.append(GateResult(metric, "max", spec.max, value, theirs, value <= spec.max))
        if spec.relative is not None:
            results.append(relative_gate(metric, value, theirs, spec.relative, references or {}))
        if spec.tolerance is not None:
            if theirs is None:
                results.append(GateResult(metric, "no_regression", float("nan"), value, None, True))
            elif higher_is_better(metric):
                bound = theirs - spec.tolerance
                results.append(GateResult(metric, "no_regression", bound, value, theirs, value >= bound))
            else:
                bound = theirs + spec.tolerance
                results.append(GateResult(metric, "no_regression", bound, value, theirs, value <= bound))
    return results


def relative_gate(
    metric: str, value: float, champion: float | None, bound: RelativeBound, references: dict[str, dict[str, float]]
) -> GateResult:
    """The bound `times` × the referenced candidate's value + `plus`: a ceiling where lower is better, else a floor."""
    if metric not in references.get(bound.of, {}):
        raise InputError(f"gate on {metric}: relative to {bound.of!r}, whose {metric} was not evaluated in this run")
    reference = references[bound.of][metric]
    threshold = bound.times * reference + bound.plus
    passed = value >= threshold if higher_is_better(metric) else value <= threshold
    basis = f"{bound.times:g} × {bound.of} ({reference:.4g}) {'+' if bound.plus >= 0 else '−'} {abs(bound.plus):g}"
    return GateResult(metric, "relative", threshold, value, champion, passed, basis)


def all_passed(results: list[GateResult]) -> bool:
    return all(result.passed for result in results)


def improvements(
    candidate: dict[str, float], champion: dict[str, float] | None, gates: dict[str, GateSpec]
) -> dict[str, float]:
    """The gated metrics on which the candidate beats the champion by more than the gate's tolerance (the noise
    band), with the margin in the metric's better direction. Metrics gated without a tolerance have no noise
    band to beat and are left out; with no champion, nothing is compared."""
    if champion is None:
        return {}
    better = {}
    for metric, spec in gates.items():
        if spec.tolerance is None or metric not in champion:
            continue
        margin = candidate[metric] - champion[metric]
        margin = margin if higher_is_better(metric) else -margin
        if margin > spec.tolerance:
            better[metric] = margin
    return better


def promotion(results: list[GateResult], better: dict[str, float], champion_version: str | None) -> tuple[bool, str]:
    """Whether the candidate should become champion, and why: every gate passed, and either there is no champion
    yet or the candidate is better than it on at least one gated metric beyond that metric's tolerance."""
    if not all_passed(results):
        failed = ", ".join(f"{r.metric} ({r.rule})" for r in results if not r.passed)
        return False, f"not promoted: gates failed ({failed})"
    if champion_version is None:
        return True, "promoted: every gate passed and there is no champion yet"
    if not better:
        return False, (
            f"not promoted: every gate passed, but no gated metric is better than champion v{champion_version}'s "
            "by more than its tolerance (a candidate within the noise band is not an improvement)"
        )
    margins = ", ".join(f"{metric} by {margin:.4g}" for metric, margin in better.items())
    return True, f"promoted: every gate passed and it beats champion v{champion_version} on {margins}"


def report_json(
    candidate: str,
    results: list[GateResult],
    champion_version: str | None,
    weights_sha256: str | None = None,
    better: dict[str, float] | None = None,
    champion_source: str = "",
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
                "better_than_champion": better or {},
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
    better: dict[str, float] | None = None,
    champion_source: str = "",
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
        "| metric | rule | bound | candidate | champion | result |",
        "| --- | --- | ---: | ---: | ---: | --- |",
    ]
    for r in results:
        floor = r.rule == "min" or (r.rule != "max" and higher_is_better(r.metric))
        bound = (
            "n/a (no champion)"
            if r.rule == "no_regression" and r.champion is None
            else f"{'≥' if floor else '≤'} {r.threshold:.4g}" + (f" ({r.basis})" if r.basis else "")
        )
        champion = "" if r.champion is None else f"{r.champion:.4g}"
        lines.append(
            f"| {r.metric} | {r.rule} | {bound} | {r.value:.4g} | {champion} | {'pass' if r.passed else 'FAIL'} |"
        )
    return "\n".join(lines) + "\n"
