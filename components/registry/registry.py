"""The MLflow model registry: versions with lineage, the `challenger` and `champion` aliases, rollback.

Invariants, whatever order calls arrive in:
- a version is created only after its whole model directory is stored as artifacts of its run, so a
  registered version is never partial;
- `champion` is only ever moved to a version that is READY and whose gate report, logged with the version
  (`gate/v<N>.json` in the run that holds its weights, bound to the version's source and weights hash),
  says passed; checked right before the move, never from a tag anyone can rewrite; two promotions racing
  both satisfy this, and the last one wins;
- every promotion records the champion it replaced (tag `previous_champion`), which `rollback` moves back to.

Each version is stored as an MLflow transformers chat model (components/registry/mlflow_model.py), so it
loads with `mlflow.pyfunc.load_model`, serves with `mlflow models serve`, and comes back as a plain model
directory with `download_model("models:/<name>@champion")`.
"""

from __future__ import annotations

import json
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import mlflow
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from components.errors import InputError, PipelineError
from components.model.ref import ModelKind, ModelRef
from components.redact import redact_text
from components.registry.mlflow_model import model_directory, save_chat_model

CHAMPION = "champion"
CHALLENGER = "challenger"
MODEL_ARTIFACT = "model"
GATE_RECORDS = "gate"  # artifact folder of the run holding a version's weights: v<N>.json, its verdict
METRIC_TAG = "metric."  # version tags holding the evaluation metrics, so gates can compare without the run
SUITE_TAG = "evaluation_suite"  # the fingerprint of the evaluation those metrics came from (registry.stage.Suite)
SAMPLES_TAG = "document.samples"  # the version's samples.jsonl in that suite: its items, for the paired tests


def check_reachable(tracking_uri: str, timeout: float = 5.0) -> None:
    """Fail fast on a tracking server that does not answer (MLflow's client would retry for minutes)."""
    if not tracking_uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(tracking_uri.rstrip("/") + "/health", timeout=timeout) as response:
            if response.status == 200:
                return
    except (urllib.error.URLError, OSError) as err:
        raise PipelineError(
            f"MLflow tracking server {tracking_uri} is unreachable ({err}); start it, or set "
            "MLFLOW_TRACKING_URI to one that runs; the registry was not changed"
        ) from None
    raise PipelineError(f"MLflow tracking server {tracking_uri} answered /health with an error")


def version_by_alias(client: MlflowClient, name: str, alias: str) -> ModelVersion | None:
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as err:
        if err.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise


def version_metrics(version: ModelVersion) -> dict[str, float]:
    return {
        key.removeprefix(METRIC_TAG): float(value) for key, value in version.tags.items() if key.startswith(METRIC_TAG)
    }


def champion(client: MlflowClient, name: str) -> tuple[str, dict[str, float]] | None:
    """(version, metrics) of the current champion, or None when there is none yet."""
    version = version_by_alias(client, name, CHAMPION)
    return None if version is None else (version.version, version_metrics(version))


def _wait_ready(client: MlflowClient, name: str, version: str, timeout: float = 300.0) -> ModelVersion:
    deadline = time.monotonic() + timeout
    while True:
        found = client.get_model_version(name, version)
        if found.status == "READY":
            return found
        if found.status == "FAILED_REGISTRATION" or time.monotonic() > deadline:
            raise PipelineError(f"model version {name} v{version} did not become READY ({found.status})")
        time.sleep(0.5)


def register(
    client: MlflowClient,
    name: str,
    model_dir: Path,
    run_id: str,
    tags: dict[str, str],
    metrics: dict[str, float],
    gate_report: dict,
    documents: dict[str, Path],
) -> str:
    """A new version of `name` for `model_dir`, with its gate verdict, metrics and documents; alias `challenger`.

    The model directory is stored as artifacts of `run_id` and registered only once it is complete. Weights
    that are already registered (same `model_sha256` tag) are not stored twice: the new version points to
    the stored copy. Each registration is its own version, so a verdict never changes after the fact.
    `documents` (model card, gate report) are logged to `run_id` under `card/` (tag `registration_run`).
    Returns the version number.
    """
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise InputError(f"{model_dir}: not a model directory (no config.json); nothing was registered")
    try:
        client.create_registered_model(name, description="Post-trained language model; see each version's model card.")
    except MlflowException as err:
        if err.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    stored = [
        v
        for v in client.search_model_versions(f"name='{name}'")
        if v.tags.get("model_sha256") == tags["model_sha256"] and v.status == "READY"
    ]
    if stored:  # the server requires a version's source to belong to its run: the run that holds the weights
        source, source_run = stored[0].source, stored[0].run_id
    else:
        with tempfile.TemporaryDirectory() as folder:
            saved = Path(folder) / MODEL_ARTIFACT
            lineage = {key: tags[key] for key in ("candidate", "model_sha256", "lineage") if key in tags}
            save_chat_model(model_dir, saved, lineage)
            client.log_artifacts(run_id, str(saved), artifact_path=MODEL_ARTIFACT)
        source, source_run = f"{client.get_run(run_id).info.artifact_uri}/{MODEL_ARTIFACT}", run_id
    for document in documents.values():
        client.log_artifact(run_id, str(document), artifact_path="card")
    gate_passed = bool(gate_report["passed"])
    verdict = {"gate": "passed" if gate_passed else "failed", "registration_run": run_id}
    verdict |= {METRIC_TAG + metric: repr(float(value)) for metric, value in metrics.items()}
    verdict |= {f"document.{label}": f"runs:/{run_id}/card/{Path(doc).name}" for label, doc in documents.items()}
    tags = {key: redact_text(value) for key, value in {**tags, **verdict}.items()}
    version = client.create_model_version(name, source, run_id=source_run, tags=tags).version
    record = {"version": version, "source": source, "model_sha256": tags["model_sha256"], "report": gate_report}
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"v{version}.json"
        path.write_text(json.dumps(record, indent=2) + "\n")
        client.log_artifact(source_run, str(path), artifact_path=GATE_RECORDS)
    _wait_ready(client, name, version)
    client.set_registered_model_alias(name, CHALLENGER, version)
    return version


def registered_version(client: MlflowClient, name: str, model_sha256: str) -> ModelVersion | None:
    """The first READY version of `name` whose weights hash is `model_sha256`, if any."""
    try:
        versions = client.search_model_versions(f"name='{name}'")
    except MlflowException as err:
        if err.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise
    same = [v for v in versions if v.tags.get("model_sha256") == model_sha256 and v.status == "READY"]
    return min(same, key=lambda v: int(v.version), default=None)


def promote(client: MlflowClient, name: str, version: str) -> str | None:
    """Move `champion` to `version` if it is READY and passed its gates; returns the champion it replaced."""
    found = client.get_model_version(name, version)
    if found.status != "READY":
        raise PipelineError(f"{name} v{version} is {found.status}, not READY: champion not moved")
    report = logged_gate_report(client, found)
    if not report["passed"]:
        raise PipelineError(
            f"{name} v{version} did not pass its gates (its logged gate report says FAILED): champion not moved"
        )
    previous = version_by_alias(client, name, CHAMPION)
    if previous is not None and previous.version == version:
        return None
    if previous is not None:
        client.set_model_version_tag(name, version, "previous_champion", previous.version)
    client.set_model_version_tag(name, version, "promoted_at", str(time.time()))
    client.set_registered_model_alias(name, CHAMPION, version)
    return previous.version if previous is not None else None


def logged_gate_report(client: MlflowClient, version: ModelVersion) -> dict:
    """The gate report registered with `version`, checked to judge the weights this version points to."""
    where = f"runs:/{version.run_id}/{GATE_RECORDS}/v{version.version}.json"
    try:
        with tempfile.TemporaryDirectory() as folder:
            path = mlflow.artifacts.download_artifacts(
                artifact_uri=where, dst_path=folder, tracking_uri=client.tracking_uri
            )
            record = json.loads(Path(path).read_text())
    except (MlflowException, OSError, json.JSONDecodeError) as err:
        raise PipelineError(
            f"{version.name} v{version.version}: no gate report was registered with it ({where}: {err}); "
            "champion not moved"
        ) from None
    report = record.get("report") or {}
    if (record.get("version"), record.get("source")) != (version.version, version.source) or report.get(
        "weights_sha256"
    ) != record.get("model_sha256"):
        raise PipelineError(
            f"{version.name} v{version.version}: its gate report ({where}) is not about this version's weights; "
            "champion not moved"
        )
    return report


def rollback(client: MlflowClient, name: str) -> tuple[str, str]:
    """Move `champion` back to the version it replaced; returns (from, to)."""
    current = version_by_alias(client, name, CHAMPION)
    if current is None:
        raise PipelineError(f"registered model {name!r} has no champion to roll back")
    previous = current.tags.get("previous_champion")
    if previous is None:
        raise PipelineError(f"{name} v{current.version} is the first champion: there is nothing to roll back to")
    client.set_model_version_tag(name, current.version, "rolled_back_at", str(time.time()))
    client.set_registered_model_alias(name, CHAMPION, previous)
    return current.version, previous


def describe(client: MlflowClient, name: str) -> str:
    """The versions of `name`, newest first, with aliases and gate verdicts: what `python -m flows registry` prints."""
    try:
        aliases = client.get_registered_model(name).aliases
    except MlflowException as err:
        if err.error_code == "RESOURCE_DOES_NOT_EXIST":
            raise PipelineError(f"no registered model named {name!r}") from None
        raise
    by_version: dict[str, list[str]] = {}
    for alias, version in aliases.items():
        by_version.setdefault(str(version), []).append(alias)
    lines = [f"{name}:"]
    for v in sorted(client.search_model_versions(f"name='{name}'"), key=lambda v: -int(v.version)):
        lines.append(
            f"  v{v.version}  {','.join(sorted(by_version.get(str(v.version), []))) or '-':<20} "
            f"gate={v.tags.get('gate', '?'):<7} candidate={v.tags.get('candidate', '?')}  "
            f"harmful_score={v.tags.get(METRIC_TAG + 'harmful_score', '?')[:6]}"
        )
    return "\n".join(lines)


def download_model(model_uri: str, dst: Path | None = None, tracking_uri: str | None = None) -> Path:
    """A registered model (`models:/<name>@champion`, `models:/<name>/3`) as a local model directory.

    The version is resolved here, with a client on `tracking_uri`, because MLflow's `models:/` artifact
    repository reads the process-wide registry URI instead of the one it is given.
    """
    ref = ModelRef.parse(model_uri)
    name, alias, number = ref.registered if ref.kind is ModelKind.REGISTRY else (None, None, None)
    if not name or not (alias or number):
        raise PipelineError(f"{model_uri}: expected models:/<name>@<alias> or models:/<name>/<version>")
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    try:
        version = client.get_model_version_by_alias(name, alias) if alias else client.get_model_version(name, number)
        path = mlflow.artifacts.download_artifacts(
            artifact_uri=version.source, dst_path=str(dst) if dst else None, tracking_uri=tracking_uri
        )
    except MlflowException as err:
        raise PipelineError(f"{model_uri}: {err.message}") from None
    return model_directory(Path(path))


def lineage_json(value: object) -> str:
    """A tag value for structured lineage (merge recipe, safety params): compact JSON, within MLflow's tag limit."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)[:5000]
