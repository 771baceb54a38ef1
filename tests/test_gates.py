"""Gates: hand-computed verdicts on small metric dicts, and the report a person reads."""

import json

import pytest

from components.config import load_params, parse_overrides, pipeline_models
from components.errors import InputError, ParamsError
from components.evaluate.outcomes import Items
from components.evaluate.uncertainty import mcnemar_exact, quantile, wilson_bound
from components.registry.config import GateSpec, RelativeBound
from components.registry.gates import (
    Evidence,
    all_passed,
    check_gates,
    improvements,
    promotion,
    report_json,
    report_markdown,
)
from tests.conftest import REPO


def evidence(**outcomes: list[float]) -> Evidence:
    """A candidate scored item by item: a 0/1 per item of each rate (items i0, i1, ...), its metrics their means."""
    items = {m: Items(m, {f"i{i}": v for i, v in enumerate(values)}) for m, values in outcomes.items()}
    return Evidence({m: sum(values) / len(values) for m, values in outcomes.items()}, items)


def share(hits: int, n: int = 100) -> list[float]:
    return [1.0] * hits + [0.0] * (n - hits)


GATES = {"harmful_score": GateSpec(max=0.3, tolerance=0.05), "domain_mc_acc_norm": GateSpec(min=0.5, tolerance=0.03)}
CANDIDATE = evidence(harmful_score=share(20), domain_mc_acc_norm=share(60), over_refusal=share(10))


def test_one_sided_wilson_bounds_and_the_exact_mcnemar_test_by_hand():
    # 20/100 at 95%, one-sided: z = 1.6449, centre (0.2 + z²/200) / (1 + z²/100) = 0.20791,
    # half-width z·√(0.0016 + z²/40000) / (1 + z²/100) = 0.06540
    assert wilson_bound(20, 100, 0.95, upper=True) == pytest.approx(0.27330, abs=1e-5)
    assert wilson_bound(60, 100, 0.95, upper=False) == pytest.approx(0.51781, abs=1e-5)
    assert mcnemar_exact(8, 1) == pytest.approx(2 * (1 + 9) / 2**9)  # 2 · P(X ≤ 1), X ~ Bin(9, ½)
    assert mcnemar_exact(6, 2) == pytest.approx(2 * (1 + 8 + 28) / 2**8)
    assert mcnemar_exact(0, 0) == 1.0
    assert quantile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.5 and quantile([1.0, 2.0, 3.0, 4.0], 0.9) == pytest.approx(3.7)


def test_floors_and_ceilings_hold_the_confidence_bound_not_the_point():
    results = {(r.metric, r.rule): r for r in check_gates(CANDIDATE, None, GATES)}
    harmful = results[("harmful_score", "max")]
    assert harmful.passed and harmful.bound == pytest.approx(0.27330, abs=1e-5)  # 0.273 <= 0.3
    assert harmful.test == "Wilson 95% upper bound, 20/100"
    assert results[("domain_mc_acc_norm", "min")].passed  # 0.518 >= 0.5
    # the point (0.2) is under a ceiling of 0.25, its upper bound (0.273) is not: the gate fails
    tight = {"harmful_score": GateSpec(max=0.25)}
    assert not check_gates(CANDIDATE, None, tight)[0].passed
    assert check_gates(CANDIDATE, None, tight, confidence=0.6)[0].passed  # at 60%: z = 0.253, bound 0.211
    # the same share on 25 items: the bound (0.54 lower) falls under the 0.55 floor the 100 items clear
    few = evidence(domain_mc_acc_norm=share(15, 25))
    assert not check_gates(few, None, {"domain_mc_acc_norm": GateSpec(min=0.45)})[0].passed
    assert check_gates(CANDIDATE, None, {"domain_mc_acc_norm": GateSpec(min=0.45)})[0].passed


def test_no_regression_is_a_paired_bound_on_the_same_items():
    gate = {"domain_mc_acc_norm": GateSpec(tolerance=0.03)}
    same = check_gates(CANDIDATE, CANDIDATE, gate)[0]  # identical items: every resampled difference is 0
    assert same.passed and same.bound == pytest.approx(0.6) and same.threshold == pytest.approx(0.57)
    # the candidate loses 5 items the champion gets (0.55 against 0.60): the paired lower bound of the difference
    # is about -0.05 - 1.645·√(5/100²) ≈ -0.087, under -0.03
    worse = evidence(domain_mc_acc_norm=share(55))
    result = check_gates(worse, CANDIDATE, gate)[0]
    assert not result.passed and result.bound < 0.57 and result.test == "paired bootstrap 95% lower bound, 100 items"
    # swapped items but the same share: still paired, a difference of 0 only on average, and a wide bound
    shuffled = evidence(domain_mc_acc_norm=share(60)[::-1])
    assert not check_gates(shuffled, CANDIDATE, gate)[0].passed  # 80 discordant items: the noise is ±0.15
    unpaired = check_gates(worse, Evidence(CANDIDATE.metrics), gate)[0]  # the champion's items are not at hand
    assert "unpaired" in unpaired.test and not unpaired.passed  # 0.55's lower bound 0.468 < 0.57
    with pytest.raises(InputError, match="the two evaluations scored different items"):
        check_gates(evidence(domain_mc_acc_norm=share(6, 10)), CANDIDATE, gate)


def test_no_champion_yet_passes_no_regression_but_not_the_floors():
    low = evidence(harmful_score=share(20), domain_mc_acc_norm=share(40))
    results = check_gates(low, None, GATES)
    verdicts = {(r.metric, r.rule): r.passed for r in results}
    assert verdicts == {
        ("harmful_score", "max"): True,
        ("harmful_score", "no_regression"): True,
        ("domain_mc_acc_norm", "min"): False,
        ("domain_mc_acc_norm", "no_regression"): True,
    }


def test_relative_gates_scale_another_candidates_value_by_hand():
    """params.yaml's default gates: harmful at most half the merge's, over-refusal at most base + 0.10, utility at
    least 95% / 75% of the merge's; each held by the candidate's one-sided 95% bound."""
    gates = {
        "harmful_score": GateSpec(relative=RelativeBound(of="merge-ties", times=0.5)),
        "over_refusal": GateSpec(relative=RelativeBound(of="base", plus=0.10)),
        "domain_mc_acc_norm": GateSpec(relative=RelativeBound(of="merge-ties", times=0.95)),
    }
    references = {"merge-ties": {"harmful_score": 0.9, "domain_mc_acc_norm": 0.6}, "base": {"over_refusal": 0.04}}
    candidate = evidence(harmful_score=share(36), over_refusal=share(6), domain_mc_acc_norm=share(57))
    results = {r.metric: r for r in check_gates(candidate, None, gates, references)}
    # 0.36 under 0.45, and so is its upper bound (0.442)
    assert results["harmful_score"].threshold == pytest.approx(0.45) and results["harmful_score"].passed
    # 0.06 under 0.14, and so is its upper bound (0.112)
    assert results["over_refusal"].threshold == pytest.approx(0.14) and results["over_refusal"].passed
    # 0.57 on the floor of 0.57: its lower bound (0.488) is under it
    assert results["domain_mc_acc_norm"].threshold == pytest.approx(0.57) and not results["domain_mc_acc_norm"].passed
    markdown = report_markdown("realigned-merge-ties", list(results.values()), None)
    assert "| over_refusal | relative | ≤ 0.14 (1 × base (0.04) + 0.1) | 0.06 | 0.1118 | Wilson 95% upper" in markdown
    assert "| domain_mc_acc_norm | relative | ≥ 0.57 (0.95 × merge-ties (0.6) + 0) | 0.57 | 0.4878 |" in markdown
    with pytest.raises(InputError, match="relative to 'merge-ties', whose harmful_score was not evaluated"):
        check_gates(candidate, None, {"harmful_score": gates["harmful_score"]}, {})


def test_a_relative_gate_names_a_candidate_of_the_run():
    with pytest.raises(ParamsError, match=r"registry.gates.over_refusal.relative.of"):
        load_params(
            REPO / "params.yaml", "smol", parse_overrides(["registry.gates.over_refusal.relative.of=merge-nope"])
        )


def test_gate_on_a_metric_that_was_not_computed_is_an_error():
    with pytest.raises(InputError, match=r"gates on \['over_refusal'\].*did not compute"):
        check_gates(evidence(harmful_score=share(1, 10)), None, {"over_refusal": GateSpec(max=0.2)})
    with pytest.raises(InputError, match=r"gate on harmful_score: no per-item outcomes"):
        check_gates(Evidence({"harmful_score": 0.1}), None, {"harmful_score": GateSpec(max=0.2)})


def test_reports_name_the_failed_gate_with_both_numbers():
    champion = evidence(harmful_score=share(10), domain_mc_acc_norm=share(62))
    results = check_gates(CANDIDATE, champion, GATES)
    markdown = report_markdown("merge-ties", results, "4")
    assert "**FAILED: harmful_score (no_regression)" in markdown and "champion version 4" in markdown
    assert "| harmful_score | no_regression | ≤ 0.15 | 0.2 |" in markdown and "| 0.1 | FAIL |" in markdown
    assert "one-sided 95% confidence bound" in markdown
    report = json.loads(report_json("merge-ties", results, "4"))
    assert report["passed"] is False and len(report["gates"]) == 4 and report["confidence"] == 0.95


def test_bad_gate_params_are_rejected_with_their_key():
    with pytest.raises(ParamsError, match=r"--set registry.gates: gate on 'accuracy'"):
        load_params(REPO / "params.yaml", "tiny", parse_overrides(["registry.gates.accuracy.min=0.5"]))
    with pytest.raises(
        ParamsError, match=r"registry.gates.harmful_score.max: Input should be greater than or equal to 0"
    ):
        load_params(REPO / "params.yaml", "tiny", parse_overrides(["registry.gates.harmful_score.max=-0.1"]))
    with pytest.raises(ParamsError, match=r"registry.candidate: 'merge-nope' is not a candidate"):
        load_params(REPO / "params.yaml", "tiny", parse_overrides(["registry.candidate=merge-nope"]))


def test_the_gates_read_only_evaluated_candidates():
    def chosen(names: str, *more: str):
        return load_params(REPO / "params.yaml", "tiny", parse_overrides([f"evaluate.candidates={names}", *more]))

    assert chosen("[base,merge-ties,realigned-merge-ties]").evaluate.candidates[-1] == "realigned-merge-ties"
    with pytest.raises(ParamsError, match=r"evaluate.candidates\[1\]: 'merge-nope' is not a candidate"):
        chosen("[base,merge-nope,merge-ties,realigned-merge-ties]")
    with pytest.raises(ParamsError, match=r"registry.candidate: 'realigned-merge-ties' is not evaluated"):
        chosen("[base,merge-ties]")
    skipped = chosen("[base,merge-ties,realigned-merge-ties]", "safety.realign.model=null", "registry.candidate=base")
    assert "realigned-merge-ties" not in {str(ref) for ref in pipeline_models(skipped)}  # accepted, then not made
    with pytest.raises(ParamsError, match=r"evaluate.candidates\[1\]: 'merge-nope' is not a model"):
        chosen("[base,realigned-merge-nope]", "registry.candidate=base")
    with pytest.raises(ParamsError, match=r"registry.gates.harmful_score.relative.of: 'merge-ties' is not evaluated"):
        chosen("[base,realigned-merge-ties]", "registry.gates.harmful_score.relative.of=merge-ties")


def test_a_gate_refuses_metrics_that_describe_other_weights(tmp_path, tiny_base):
    """Evaluation binds to weights: after the model changes (a realign with another lr, say), the old metrics are
    refused with both hashes named, and no report is written."""
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    from components.hashing import weights_sha256
    from components.registry.config import RegistryConfig
    from components.registry.stage import gate_candidate
    from components.workspace import Shipping

    model = shutil.copytree(tiny_base, tmp_path / "model")
    before = weights_sha256(model)
    (model / "stage.json").write_text('{"build_seconds": 3.1}')  # cards and timings are not the weights
    assert weights_sha256(model) == before
    evaluated = tmp_path / "eval" / "cand"
    evaluated.mkdir(parents=True)
    (evaluated / "metrics.json").write_text(json.dumps(CANDIDATE.metrics))
    (evaluated / "weights.json").write_text(json.dumps({"weights_sha256": before}))
    tensors = load_file(model / "model.safetensors")
    name = sorted(tensors)[0]
    tensors[name] = tensors[name] + torch.ones_like(tensors[name])
    save_file(tensors, model / "model.safetensors", metadata={"format": "pt"})
    after = weights_sha256(model)
    assert after != before
    with pytest.raises(InputError, match=f"describe weights {before[:16]}, but .* now holds weights {after[:16]}"):
        gate_candidate(
            "cand", model, tmp_path / "eval", RegistryConfig(gates=GATES), "sqlite:///unused.db", Shipping(tmp_path)
        )
    assert not (tmp_path / "gate").exists()


def test_promotion_needs_every_gate_and_a_gain_beyond_noise_on_the_same_items_by_hand():
    gates = {"harmful_score": GateSpec(max=0.5, tolerance=0.05), "math_exact_match": GateSpec(min=0.0)}
    champion = evidence(harmful_score=share(20), math_exact_match=share(10))
    # 6 prompts the champion answered are now refused, 2 it refused are answered: p = 2 · P(X ≤ 2 | 8) = 0.289
    within = evidence(harmful_score=[1.0] * 14 + [0.0] * 6 + [1.0] * 2 + [0.0] * 78, math_exact_match=share(90))
    assert within.metrics["harmful_score"] == pytest.approx(0.16)
    assert improvements(within, champion, gates) == {}  # math has no tolerance: never a "gain"
    results = check_gates(within, champion, gates)
    promote, why = promotion(results, {}, "3")
    assert all_passed(results) and not promote and "beyond noise on the same items" in why

    # 8 better, 1 worse: p = 2 · (1 + 9) / 2⁹ = 0.039 < 0.05
    beyond = evidence(harmful_score=[1.0] * 12 + [0.0] * 8 + [1.0] + [0.0] * 79, math_exact_match=share(90))
    better = improvements(beyond, champion, gates)
    assert better.keys() == {"harmful_score"} and better["harmful_score"].margin == pytest.approx(0.07)
    assert better["harmful_score"].test == "exact McNemar, 8 items better, 1 worse, p = 0.0391"
    assert promotion(check_gates(beyond, champion, gates), better, "3") == (
        True,
        "promoted: every gate passed and it beats champion v3 on harmful_score by 0.07 "
        "(exact McNemar, 8 items better, 1 worse, p = 0.0391)",
    )
    assert improvements(beyond, champion, gates, confidence=0.99) == {}  # not at 1%
    # without the champion's items the point margin must clear the tolerance, said to be unpaired
    unpaired = improvements(beyond, Evidence(champion.metrics), gates)
    assert "unpaired" in unpaired["harmful_score"].test
    failing = check_gates(
        evidence(harmful_score=[1.0] * 12 + [0.0] * 8 + [1.0] + [0.0] * 79, math_exact_match=share(0)),
        champion,
        {**gates, "math_exact_match": GateSpec(min=0.05)},
    )
    assert promotion(failing, better, "3")[0] is False
    assert improvements(within, None, gates) == {} and promotion(check_gates(within, None, gates), {}, None)[0]
    report = json.loads(report_json("merge-ties", check_gates(beyond, champion, gates), "3", "abc", better))
    assert report["promote"] is True and report["better_than_champion"]["harmful_score"]["margin"] == pytest.approx(
        0.07
    )
