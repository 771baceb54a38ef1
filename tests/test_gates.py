"""Gates: hand-computed verdicts on small metric dicts, and the report a person reads."""

import json

import pytest

from components.config import load_params, parse_overrides, pipeline_models
from components.errors import InputError, ParamsError
from components.registry.config import GateSpec, RelativeBound
from components.registry.gates import all_passed, check_gates, improvements, promotion, report_json, report_markdown
from tests.conftest import REPO

GATES = {"harmful_score": GateSpec(max=0.3, tolerance=0.05), "domain_mc_acc_norm": GateSpec(min=0.5, tolerance=0.03)}
CANDIDATE = {"harmful_score": 0.2, "domain_mc_acc_norm": 0.6, "over_refusal": 0.1}
CHAMPION = {"harmful_score": 0.1, "domain_mc_acc_norm": 0.62}


def test_floors_ceilings_and_no_regression_by_hand():
    results = {(r.metric, r.rule): r for r in check_gates(CANDIDATE, CHAMPION, GATES)}
    assert results[("harmful_score", "max")].passed  # 0.2 <= 0.3
    regression = results[("harmful_score", "no_regression")]
    assert regression.threshold == pytest.approx(0.15) and not regression.passed  # 0.2 > 0.1 + 0.05
    assert results[("domain_mc_acc_norm", "min")].passed  # 0.6 >= 0.5
    kept = results[("domain_mc_acc_norm", "no_regression")]
    assert kept.threshold == pytest.approx(0.59) and kept.passed and kept.champion == 0.62  # 0.6 >= 0.62 - 0.03
    assert not all_passed(list(results.values()))


def test_no_champion_yet_passes_no_regression_but_not_the_floors():
    results = check_gates({**CANDIDATE, "domain_mc_acc_norm": 0.4}, None, GATES)
    verdicts = {(r.metric, r.rule): r.passed for r in results}
    assert verdicts == {
        ("harmful_score", "max"): True,
        ("harmful_score", "no_regression"): True,
        ("domain_mc_acc_norm", "min"): False,
        ("domain_mc_acc_norm", "no_regression"): True,
    }


def test_relative_gates_scale_another_candidates_value_by_hand():
    """params.yaml's default gates: harmful at most half the merge's, over-refusal at most base + 0.10, utility at
    least 95% / 75% of the merge's."""
    gates = {
        "harmful_score": GateSpec(relative=RelativeBound(of="merge-ties", times=0.5)),
        "over_refusal": GateSpec(relative=RelativeBound(of="base", plus=0.10)),
        "domain_mc_acc_norm": GateSpec(relative=RelativeBound(of="merge-ties", times=0.95)),
        "math_exact_match": GateSpec(relative=RelativeBound(of="merge-ties", times=0.75)),
    }
    references = {
        "merge-ties": {"harmful_score": 0.9, "domain_mc_acc_norm": 0.6, "math_exact_match": 0.2},
        "base": {"over_refusal": 0.04},
    }
    candidate = {"harmful_score": 0.44, "over_refusal": 0.15, "domain_mc_acc_norm": 0.57, "math_exact_match": 0.14}
    results = {r.metric: r for r in check_gates(candidate, None, gates, references)}
    assert results["harmful_score"].threshold == pytest.approx(0.45) and results["harmful_score"].passed
    assert results["over_refusal"].threshold == pytest.approx(0.14) and not results["over_refusal"].passed
    assert results["domain_mc_acc_norm"].threshold == pytest.approx(0.57) and results["domain_mc_acc_norm"].passed
    assert results["math_exact_match"].threshold == pytest.approx(0.15) and not results["math_exact_match"].passed
    markdown = report_markdown("realigned-merge-ties", list(results.values()), None)
    assert "| over_refusal | relative | ≤ 0.14 (1 × base (0.04) + 0.1) | 0.15 |  | FAIL |" in markdown
    assert "| domain_mc_acc_norm | relative | ≥ 0.57 (0.95 × merge-ties (0.6) + 0) | 0.57 |  | pass |" in markdown
    with pytest.raises(InputError, match="relative to 'merge-ties', whose harmful_score was not evaluated"):
        check_gates(candidate, None, {"harmful_score": gates["harmful_score"]}, {})


def test_a_relative_gate_names_a_candidate_of_the_run():
    with pytest.raises(ParamsError, match=r"registry.gates.over_refusal.relative.of"):
        load_params(
            REPO / "params.yaml", "smol", parse_overrides(["registry.gates.over_refusal.relative.of=merge-nope"])
        )


def test_gate_on_a_metric_that_was_not_computed_is_an_error():
    with pytest.raises(InputError, match=r"gates on \['over_refusal'\].*did not compute"):
        check_gates({"harmful_score": 0.1}, None, {"over_refusal": GateSpec(max=0.2)})


def test_reports_name_the_failed_gate_with_both_numbers():
    results = check_gates(CANDIDATE, CHAMPION, GATES)
    markdown = report_markdown("merge-ties", results, "4")
    assert "**FAILED: harmful_score (no_regression)**" in markdown and "champion version 4" in markdown
    assert "| harmful_score | no_regression | ≤ 0.15 | 0.2 | 0.1 | FAIL |" in markdown
    assert "| domain_mc_acc_norm | no_regression | ≥ 0.59 | 0.6 | 0.62 | pass |" in markdown
    report = json.loads(report_json("merge-ties", results, "4"))
    assert report["passed"] is False and len(report["gates"]) == 4


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
    (evaluated / "metrics.json").write_text(json.dumps(CANDIDATE))
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


def test_promotion_needs_every_gate_and_a_gain_beyond_the_noise_band_by_hand():
    gates = {**GATES, "math_exact_match": GateSpec(min=0.0)}  # no tolerance: no noise band, never a "gain"
    champion = {"harmful_score": 0.2, "domain_mc_acc_norm": 0.60, "math_exact_match": 0.1}
    within = {
        "harmful_score": 0.16,
        "domain_mc_acc_norm": 0.62,
        "math_exact_match": 0.9,
    }  # -0.04 <= 0.05, +0.02 <= 0.03
    assert improvements(within, champion, gates) == {}
    results = check_gates(within, champion, gates)
    assert all_passed(results)
    promote, why = promotion(results, {}, "3")
    assert not promote and "no gated metric is better than champion v3's" in why

    beyond = {**within, "harmful_score": 0.14}  # 0.2 - 0.14 = 0.06 > 0.05: lower is better
    better = improvements(beyond, champion, gates)
    assert better.keys() == {"harmful_score"} and better["harmful_score"] == pytest.approx(0.06)
    assert promotion(check_gates(beyond, champion, gates), better, "3") == (
        True,
        "promoted: every gate passed and it beats champion v3 on harmful_score by 0.06",
    )
    failing = check_gates({**beyond, "domain_mc_acc_norm": 0.45}, champion, gates)  # better harm, below the floor
    assert promotion(failing, better, "3")[0] is False
    assert improvements(within, None, gates) == {} and promotion(check_gates(within, None, gates), {}, None)[0]
    report = json.loads(report_json("merge-ties", check_gates(beyond, champion, gates), "3", "abc", better))
    assert report["promote"] is True and report["better_than_champion"] == better
    assert "Promoted: every gate passed and it beats champion v3" in report_markdown(
        "merge-ties", check_gates(beyond, champion, gates), "3", better
    )
