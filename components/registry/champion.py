"""The champion as a gate compares with it: its metrics from the candidate's own evaluation suite.

The candidate is compared with the champion's metrics from the same evaluation suite (`Suite`: the suite's config
and seed, its test splits, the probe judge's model), never with numbers measured another way: when the champion's
registered metrics came from another suite (a changed `evaluate` config or test set), the gate takes them from this
evaluation where it scored the champion's weights, else from the evaluation an earlier gate run kept, else it
evaluates the champion again.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import NamedTuple

import mlflow
from mlflow.tracking import MlflowClient

from components.config import Params
from components.data.tables import Row, read_jsonl
from components.errors import InputError
from components.evaluate.config import EvaluateConfig
from components.evaluate.evaluation import EVAL_SETS, evaluated_sha256, judge_model
from components.hashing import file_md5, weights_sha256
from components.registry.registry import (
    CHAMPION,
    SAMPLES_TAG,
    SUITE_TAG,
    download_model,
    version_by_alias,
    version_metrics,
)


class Champion(NamedTuple):
    """The champion as the gate compares with it: `metrics` from the candidate's suite, `source` says how;
    `samples` its items' outcomes in that suite (samples.jsonl rows) for the paired tests, None where none were kept
    (a version registered before its samples were)."""

    version: str
    metrics: dict[str, float]
    source: str
    model_sha256: str | None
    samples: list[Row] | None = None


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
        """SHA-256 of the suite's config (not which candidates it scores), seed, evaluated splits and judge model; not of
        the suite's code, so that a change of code alone does not make every champion be evaluated again."""
        what = {
            "config": self.cfg.model_dump(mode="json", exclude={"candidates"}),
            "seed": self.seed,
            "tests": {name: file_md5(Path(self.curated_dir) / name / f"{self.cfg.split}.jsonl") for name in EVAL_SETS},
            "judge_model": weights_sha256(self.judge_model) if self.judge_model else None,
        }
        return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()


def candidate_metrics(eval_dir: Path, candidate: str) -> dict[str, float]:
    path = Path(eval_dir) / candidate / "metrics.json"
    if not path.is_file():
        raise InputError(f"{path}: candidate {candidate!r} has not been evaluated; run the evaluate stage first")
    return json.loads(path.read_text())


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
        samples = registered_samples(client, found.tags.get(SAMPLES_TAG))
        return Champion(found.version, version_metrics(found), "its registered metrics", weights, samples)
    for name, folder in evaluated.items():
        if evaluated_sha256(folder) == weights:
            metrics = candidate_metrics(folder.parent, name)
            samples = [row for _, row in read_jsonl(folder / "samples.jsonl")]
            return Champion(found.version, metrics, f"its weights are {name}'s, evaluated here", weights, samples)
    why = "its registered metrics came from another evaluation suite: evaluated again with this one"
    if kept.is_file():
        record = json.loads(kept.read_text())
        if (record["version"], record["model_sha256"], record["suite"]) == (found.version, weights, fingerprint):
            return Champion(found.version, record["metrics"], why, weights, record.get("samples"))
    from components.evaluate.suite import evaluate_model

    with tempfile.TemporaryDirectory() as folder:
        model_dir = download_model(f"models:/{model_name}/{found.version}", Path(folder), client.tracking_uri)
        metrics, samples = evaluate_model(model_dir, suite.curated_dir, suite.cfg, suite.seed, suite.judge_model)
    return Champion(found.version, metrics, why, weights, samples)


def registered_samples(client: MlflowClient, uri: str | None) -> list[Row] | None:
    """The samples.jsonl registered with a version (its `document.samples` tag), None when it has none."""
    if not uri:
        return None
    with tempfile.TemporaryDirectory() as folder:
        path = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=folder, tracking_uri=client.tracking_uri)
        return [row for _, row in read_jsonl(Path(path))]
