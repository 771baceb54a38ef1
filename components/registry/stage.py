"""Gate and register stages: the shipped candidate's gate report, its registered version, its model card.

Neither stage is cached: both depend on the registry's state (who the champion is), not only on files.
Weights already registered are not registered again (a rerun with nothing changed leaves the registry as it
was); a new version becomes champion only when its gates pass and it beats the champion on a gated metric by
more than that metric's tolerance (components.registry.gates.promotion); the registration record says why.
The champion's metrics come from the candidate's own evaluation suite (components/registry/champion.py); the
version's card is components/registry/card.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import mlflow
from mlflow.tracking import MlflowClient

from components.atomic import atomic_dir, atomic_file
from components.config import Params
from components.errors import InputError
from components.evaluate.evaluation import SUMMARY, WEIGHTS, evaluated_sha256
from components.evaluate.outcomes import item_outcomes, read_outcomes
from components.hashing import weights_sha256
from components.registry.card import model_card
from components.registry.champion import Suite, candidate_metrics, champion_in_suite
from components.registry.config import RegistryConfig
from components.registry.gates import (
    Evidence,
    all_passed,
    check_gates,
    improvements,
    report_json,
    report_markdown,
)
from components.registry.lineage import Shipped, registry_tags
from components.registry.registry import CHAMPION, SUITE_TAG, check_reachable, promote, register, registered_version
from components.stage import StageResult
from components.tracking import client_for, experiment_id, tracking_uri
from components.workspace import Shipping


def evaluated_table(eval_dir: Path, candidate: str) -> dict[str, dict[str, float]]:
    """The candidates of the last evaluation, each row from its own metrics.json (what the gate judged) where the
    folder has one, else from summary.json (the search's references, evaluated elsewhere).

    Which candidates: those summary.json lists (the evaluate stage's set, so a folder left by a candidate no
    longer configured stays out), and `candidate`; without summary.json (the gate run by hand on candidates
    evaluated one by one), every evaluated candidate. Base first, then by name.
    """
    summary_path = Path(eval_dir) / SUMMARY
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    names = {*summary, candidate} if summary else {path.parent.name for path in Path(eval_dir).glob("*/metrics.json")}
    return {
        name: candidate_metrics(eval_dir, name)
        if name not in summary or (Path(eval_dir) / name / "metrics.json").is_file()
        else summary[name]
        for name in sorted(names, key=lambda n: (n != "base", n))
    }


def evaluated_weights(eval_dir: Path, candidate: str, model_dir: Path) -> str:
    """The weights hash the candidate's metrics describe, checked against the weights in `model_dir` now."""
    evaluated = evaluated_sha256(Path(eval_dir) / candidate)
    if evaluated is None:
        path = Path(eval_dir) / candidate / WEIGHTS
        raise InputError(f"{path}: no record of which weights {candidate!r} was evaluated on; run the evaluate stage")
    current = weights_sha256(model_dir)
    if evaluated != current:
        raise InputError(
            f"{candidate}: its metrics ({Path(eval_dir) / candidate / 'metrics.json'}) describe weights {evaluated[:16]}, but "
            f"{model_dir} now holds weights {current[:16]}: run the evaluate stage again before gating or registering"
        )
    return current


def gate_candidate(
    candidate: str,
    model_dir: Path,
    eval_dir: Path,
    cfg: RegistryConfig,
    tracking_uri: str,
    shipping: Shipping,
    suite: Suite | None = None,
) -> StageResult:
    """Check `cfg.gates` on the candidate's metrics against the registry's champion; write the report (md, json).

    The report names the weights it judged: the candidate's metrics must describe the weights in `model_dir`.
    `suite`: the evaluation the candidate's metrics came from, which the champion's must come from too
    (`champion_in_suite`); None takes the champion's registered metrics as they are.
    """
    metrics = candidate_metrics(eval_dir, candidate)
    weights = evaluated_weights(eval_dir, candidate, model_dir)
    evidence = Evidence(metrics, read_outcomes(Path(eval_dir) / candidate / "samples.jsonl"))
    check_reachable(tracking_uri)
    references = {
        spec.relative.of: candidate_metrics(eval_dir, spec.relative.of) for spec in cfg.gates.values() if spec.relative
    }
    evaluated = {name: Path(eval_dir) / name for name in {candidate, *references}}
    kept = shipping.champion_evaluation
    current = champion_in_suite(MlflowClient(tracking_uri), cfg.model_name, suite, evaluated, kept)
    version, source = (current.version, current.source) if current else (None, "")
    champion = (
        Evidence(current.metrics, item_outcomes(current.samples) if current.samples is not None else None)
        if current
        else None
    )
    results = check_gates(evidence, champion, cfg.gates, references, cfg.confidence)
    better = improvements(evidence, champion, cfg.gates, cfg.confidence)
    with atomic_dir(shipping.gate) as tmp:
        (tmp / shipping.gate_json.name).write_text(
            report_json(candidate, results, version, weights, better, source, cfg.confidence)
        )
        (tmp / shipping.gate_md.name).write_text(
            report_markdown(candidate, results, version, better, source, cfg.confidence)
        )
        if suite is not None and current is not None:
            record = current._asdict() | {"suite": suite.fingerprint}
            (tmp / kept.name).write_text(json.dumps(record, indent=2) + "\n")
    failed = sum(not r.passed for r in results)
    return StageResult(
        outputs={"gate": shipping.gate},
        metrics={"gate_passed": float(all_passed(results)), "gates_failed": float(failed)},
        artifacts=(shipping.gate_md, shipping.gate_json),
    )


def register_candidate(
    candidate: str,
    model_dir: Path,
    eval_dir: Path,
    cfg: RegistryConfig,
    tracking_uri: str,
    run_id: str,
    tags: dict[str, str],
    lineage: list[dict[str, Any]],
    shipping: Shipping,
) -> StageResult:
    """Register the candidate (alias `challenger`), with its card and gate report; promote it if its gates passed."""
    report_path = shipping.gate_json
    if not report_path.is_file():
        raise InputError(f"{report_path}: no gate report; run the gate stage first")
    report = json.loads(report_path.read_text())
    if report["candidate"] != candidate:
        raise InputError(f"{report_path}: the gate report is for {report['candidate']!r}, not {candidate!r}")
    weights = evaluated_weights(eval_dir, candidate, model_dir)
    if report.get("weights_sha256") != weights:
        raise InputError(
            f"{report_path}: the gate report judged weights {str(report.get('weights_sha256'))[:16]}, but "
            f"{model_dir} holds weights {weights[:16]}: run the gate stage again"
        )
    tags = {**tags, "candidate": candidate, "model_sha256": weights}  # the weights hashed once, here
    table = evaluated_table(eval_dir, candidate)
    check_reachable(tracking_uri)
    client = MlflowClient(tracking_uri)
    gate_md = shipping.gate_md.read_text()
    with atomic_dir(shipping.registry) as tmp:
        (tmp / shipping.model_card.name).write_text(model_card(candidate, lineage, tags, table, gate_md))
        (tmp / shipping.registered_gate_md.name).write_text(gate_md)
    # the samples: the items the gates of a later candidate pair with this version's, once it is champion
    documents = {
        "model_card": shipping.model_card,
        "gate_report": shipping.registered_gate_md,
        "samples": Path(eval_dir) / candidate / "samples.jsonl",
    }
    existing = registered_version(client, cfg.model_name, weights)
    if existing is not None:  # the same weights again: no new version, and no promotion over itself
        version, new = existing.version, False
        promoted, why = False, f"not registered again: these weights are v{version} already"
    else:
        version = register(client, cfg.model_name, model_dir, run_id, tags, table[candidate], report, documents)
        new, why = True, report["promotion"] + ("" if cfg.promote else " (but registry.promote is false)")
        promoted = report["promote"] and cfg.promote
    replaced = promote(client, cfg.model_name, version) if promoted else None
    registration = {
        "model_name": cfg.model_name,
        "version": version,
        "new_version": new,
        "candidate": candidate,
        "gate_passed": report["passed"],
        "promoted": promoted,
        "why": why,
        "replaced_champion": replaced,
        "model_uri": f"models:/{cfg.model_name}/{version}",
        "champion_uri": f"models:/{cfg.model_name}@{CHAMPION}",
    }
    with atomic_file(shipping.registration) as tmp:
        tmp.write_text(json.dumps(registration, indent=2) + "\n")
    return StageResult(
        outputs={"registry": shipping.registry, "registration": shipping.registration},
        metrics={"version": float(version), "promoted": float(promoted)},
        artifacts=(shipping.model_card, shipping.registration),
    )


def require_test_split(params: Params) -> None:
    """Only the test evaluation ships: a validation run (evaluate.split=val) chooses knobs and promotes nothing."""
    if params.evaluate.split != "test":
        raise InputError(
            f"evaluate.split is {params.evaluate.split!r}: the gates and the registry judge the test evaluation only "
            "(a validation run chooses knobs and ships nothing); run with evaluate.split=test"
        )


def gate_stage(params: Params, shipped: Shipped) -> StageResult:
    require_test_split(params)
    return gate_candidate(
        shipped.candidate,
        shipped.model_dir,
        shipped.eval_dir,
        params.registry,
        tracking_uri(params),
        shipped.shipping,
        Suite.of(params),
    )


def register_stage(params: Params, shipped: Shipped, repo: Path) -> StageResult:
    require_test_split(params)
    return register_candidate(
        shipped.candidate,
        shipped.model_dir,
        shipped.eval_dir,
        params.registry,
        tracking_uri(params),
        _registry_run(params),
        registry_tags(params, shipped, repo) | {SUITE_TAG: Suite.of(params).fingerprint},
        shipped.lineage,
        shipped.shipping,
    )


def _registry_run(params: Params) -> str:
    """The run that holds the registered model's files: the register stage's own run, or a new one untracked."""
    run = mlflow.active_run()
    if run is not None:
        return run.info.run_id
    client = client_for(params)
    return client.create_run(experiment_id(client, params), tags={"mlflow.runName": "register"}).info.run_id
