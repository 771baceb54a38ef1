"""Gate and register stages: the shipped candidate's gate report, its registered version, its model card.

Neither stage is cached: both depend on the registry's state (who the champion is), not only on files.
Weights already registered are not registered again (a rerun with nothing changed leaves the registry as it
was); a new version becomes champion only when its gates pass and it beats the champion on a gated metric by
more than that metric's tolerance (components.registry.gates.promotion); registration.json says why.

The candidate is compared with the champion's metrics from the same evaluation suite (`Suite`: the suite's
config and seed, its test splits, the probe judge's model), never with numbers measured another way: when the
champion's registered metrics came from another suite (a changed `evaluate` config or test set), the gate takes
them from this evaluation where it scored the champion's weights, else evaluates the champion again.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, NamedTuple

import mlflow
from mlflow.tracking import MlflowClient

from components.atomic import atomic_dir, atomic_file
from components.config import EvaluateConfig, Params, RegistryConfig
from components.errors import InputError
from components.evaluate.evaluation import (
    SUMMARY,
    TEST_SETS,
    WEIGHTS,
    evaluated_sha256,
    judge_model,
    render_summary,
)
from components.hashing import file_md5, weights_sha256
from components.registry.gates import all_passed, check_gates, improvements, report_json, report_markdown
from components.registry.lineage import Shipped, registry_tags
from components.registry.registry import (
    CHAMPION,
    CHAMPION_EVALUATION,
    SUITE_TAG,
    check_reachable,
    download_model,
    promote,
    register,
    registered_version,
    version_by_alias,
    version_metrics,
)
from components.stage import StageResult
from components.tracking import client_for, experiment_id, tracking_uri

GATE_JSON = "report.json"
GATE_MD = "report.md"
MODEL_CARD = "model_card.md"
REGISTRATION = "registration.json"


class Champion(NamedTuple):
    """The champion as the gate compares with it: `metrics` from the candidate's suite, `source` says how."""

    version: str
    metrics: dict[str, float]
    source: str
    model_sha256: str | None


@dataclass(frozen=True)
class Suite:
    """The evaluation a candidate's metrics came from: a champion's metrics compare with them only when they came
    from the same one."""

    curated_dir: Path
    cfg: EvaluateConfig
    seed: int
    judge_model: Path | None = None

    @classmethod
    def of(cls, params: Params) -> Suite:
        return cls(params.ws.curated, params.evaluate, params.seed, judge_model(params.evaluate, params.ws))

    @cached_property
    def fingerprint(self) -> str:
        """SHA-256 of the suite's config (not which candidates it scores), seed, test splits and judge model; not of
        the suite's code, so that a change of code alone does not make every champion be evaluated again."""
        what = {
            "config": self.cfg.model_dump(mode="json", exclude={"candidates"}),
            "seed": self.seed,
            "tests": {name: file_md5(Path(self.curated_dir) / name / "test.jsonl") for name in TEST_SETS},
            "judge_model": weights_sha256(self.judge_model) if self.judge_model else None,
        }
        return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()


def candidate_metrics(eval_dir: Path, candidate: str) -> dict[str, float]:
    path = Path(eval_dir) / candidate / "metrics.json"
    if not path.is_file():
        raise InputError(f"{path}: candidate {candidate!r} has not been evaluated; run the evaluate stage first")
    return json.loads(path.read_text())


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


def champion_in_suite(
    client: MlflowClient, model_name: str, suite: Suite | None, evaluated: dict[str, Path], kept: Path
) -> Champion | None:
    """The registry's champion with its metrics from `suite`; None when there is no champion.

    Its registered metrics when they came from `suite` (or no suite is given), else those of a candidate in
    `evaluated` (name -> evaluation folder of this suite) with the champion's weights, else the evaluation kept in
    `kept` by an earlier gate run of the same suite, else the champion downloaded and evaluated here.
    """
    found = version_by_alias(client, model_name, CHAMPION)
    if found is None:
        return None
    weights = found.tags.get("model_sha256")
    if suite is None or found.tags.get(SUITE_TAG) == (fingerprint := suite.fingerprint):
        return Champion(found.version, version_metrics(found), "its registered metrics", weights)
    for name, folder in evaluated.items():
        if evaluated_sha256(folder) == weights:
            metrics = candidate_metrics(folder.parent, name)
            return Champion(found.version, metrics, f"its weights are {name}'s, evaluated here", weights)
    why = "its registered metrics came from another evaluation suite: evaluated again with this one"
    if kept.is_file():
        record = json.loads(kept.read_text())
        if (record["version"], record["model_sha256"], record["suite"]) == (found.version, weights, fingerprint):
            return Champion(found.version, record["metrics"], why, weights)
    from components.evaluate.suite import evaluate_model

    with tempfile.TemporaryDirectory() as folder:
        model_dir = download_model(f"models:/{model_name}/{found.version}", Path(folder), client.tracking_uri)
        metrics, _ = evaluate_model(model_dir, suite.curated_dir, suite.cfg, suite.seed, suite.judge_model)
    return Champion(found.version, metrics, why, weights)


def gate_candidate(
    candidate: str,
    model_dir: Path,
    eval_dir: Path,
    cfg: RegistryConfig,
    tracking_uri: str,
    out_dir: Path,
    suite: Suite | None = None,
) -> StageResult:
    """Check `cfg.gates` on the candidate's metrics against the registry's champion; write the report (md, json).

    The report names the weights it judged: the candidate's metrics must describe the weights in `model_dir`.
    `suite`: the evaluation the candidate's metrics came from, which the champion's must come from too
    (`champion_in_suite`); None takes the champion's registered metrics as they are.
    """
    metrics = candidate_metrics(eval_dir, candidate)
    weights = evaluated_weights(eval_dir, candidate, model_dir)
    check_reachable(tracking_uri)
    references = {
        spec.relative.of: candidate_metrics(eval_dir, spec.relative.of) for spec in cfg.gates.values() if spec.relative
    }
    evaluated = {name: Path(eval_dir) / name for name in {candidate, *references}}
    kept = Path(out_dir) / CHAMPION_EVALUATION
    current = champion_in_suite(MlflowClient(tracking_uri), cfg.model_name, suite, evaluated, kept)
    version, champion_metrics, source = (
        (current.version, current.metrics, current.source) if current else (None, None, "")
    )
    results = check_gates(metrics, champion_metrics, cfg.gates, references)
    better = improvements(metrics, champion_metrics, cfg.gates)
    with atomic_dir(out_dir) as tmp:
        (tmp / GATE_JSON).write_text(report_json(candidate, results, version, weights, better, source))
        (tmp / GATE_MD).write_text(report_markdown(candidate, results, version, better, source))
        if suite is not None and current is not None:
            record = current._asdict() | {"suite": suite.fingerprint}
            (tmp / CHAMPION_EVALUATION).write_text(json.dumps(record, indent=2) + "\n")
    failed = sum(not r.passed for r in results)
    return StageResult(
        outputs={"gate": Path(out_dir)},
        metrics={"gate_passed": float(all_passed(results)), "gates_failed": float(failed)},
        artifacts=(Path(out_dir) / GATE_MD, Path(out_dir) / GATE_JSON),
    )


def model_card(
    candidate: str,
    lineage: list[dict[str, Any]],
    tags: dict[str, str],
    table: dict[str, dict[str, float]],
    gate_md: str,
) -> str:
    """The Markdown card stored with every registered version."""
    metrics = table[candidate]
    data = [
        f"| {key.removeprefix('data.')} | `{value}` |" for key, value in sorted(tags.items()) if key.startswith("data.")
    ]
    steps = [
        f"{i}. **{step['name']}**: "
        + ", ".join(f"{k}={json.dumps(v, default=str)}" for k, v in step.items() if k != "name")
        for i, step in enumerate(lineage, 1)
    ]
    safety = (
        f"harmful score {metrics['harmful_score']:.3f} (95% interval {metrics['harmful_score_low']:.2f}–"
        f"{metrics['harmful_score_high']:.2f}, n={metrics['harmful_score_n']:.0f}); over-refusal "
        f"{metrics['over_refusal']:.3f} ({metrics['over_refusal_low']:.2f}–{metrics['over_refusal_high']:.2f}, "
        f"n={metrics['over_refusal_n']:.0f})"
    )
    return "\n".join(
        [
            f"# Model card: {candidate}",
            "",
            f"git commit `{tags.get('mlflow.source.git.commit', 'unknown')}`, profile `{tags.get('profile', '?')}`, "
            f"weights SHA-256 `{tags['model_sha256']}`.",
            "",
            "## How it was made (from the base model up)",
            "",
            *steps,
            "",
            "## Data (MD5 of each curated split)",
            "",
            "| table | md5 |",
            "| --- | --- |",
            *data,
            "",
            "## Safety",
            "",
            safety + ".",
            "",
            "## " + render_summary(table).removeprefix("# "),
            gate_md.replace("# Gate report", "## Gate report"),
            "## Known limits",
            "",
            "- Harmful score counts answers in which the refusal judge (`evaluate.judge`) finds no refusal: an "
            "answer that is neither a refusal nor an attempt (an echo, nonsense) counts as harmful. The judges' "
            "agreement with hand-labelled answers: `python -m flows judge --agreement`.",
            "- The evaluation sets are small (see n above): read the intervals, not only the point values.",
            "- Metrics are measured on the held-out splits of this pipeline's own data, not on public benchmarks.",
            "",
        ]
    )


def register_candidate(
    candidate: str,
    model_dir: Path,
    eval_dir: Path,
    gate_dir: Path,
    cfg: RegistryConfig,
    tracking_uri: str,
    run_id: str,
    tags: dict[str, str],
    lineage: list[dict[str, Any]],
    out_dir: Path,
) -> StageResult:
    """Register the candidate (alias `challenger`), with its card and gate report; promote it if its gates passed."""
    report_path = Path(gate_dir) / GATE_JSON
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
    gate_md = (Path(gate_dir) / GATE_MD).read_text()
    with atomic_dir(out_dir) as tmp:
        (tmp / MODEL_CARD).write_text(model_card(candidate, lineage, tags, table, gate_md))
        (tmp / GATE_MD).write_text(gate_md)
    documents = {"model_card": Path(out_dir) / MODEL_CARD, "gate_report": Path(out_dir) / GATE_MD}
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
    with atomic_file(Path(out_dir) / REGISTRATION) as tmp:
        tmp.write_text(json.dumps(registration, indent=2) + "\n")
    return StageResult(
        outputs={"registry": Path(out_dir)},
        metrics={"version": float(version), "promoted": float(promoted)},
        artifacts=(Path(out_dir) / MODEL_CARD, Path(out_dir) / REGISTRATION),
    )


def gate_stage(params: Params, shipped: Shipped) -> StageResult:
    return gate_candidate(
        shipped.candidate,
        shipped.model_dir,
        shipped.eval_dir,
        params.registry,
        tracking_uri(params),
        shipped.out_dir / "gate",
        Suite.of(params),
    )


def register_stage(params: Params, shipped: Shipped, repo: Path) -> StageResult:
    return register_candidate(
        shipped.candidate,
        shipped.model_dir,
        shipped.eval_dir,
        shipped.out_dir / "gate",
        params.registry,
        tracking_uri(params),
        _registry_run(params),
        registry_tags(params, shipped, repo) | {SUITE_TAG: Suite.of(params).fingerprint},
        shipped.lineage,
        shipped.out_dir / "registry",
    )


def _registry_run(params: Params) -> str:
    """The run that holds the registered model's files: the register stage's own run, or a new one untracked."""
    run = mlflow.active_run()
    if run is not None:
        return run.info.run_id
    client = client_for(params)
    return client.create_run(experiment_id(client, params), tags={"mlflow.runName": "register"}).info.run_id
