"""What ships and how it was made: the candidate, its lineage from the base model up, its registry tags, the champion.

The candidate is the pipeline's `registry.candidate` or the recipe search's chosen trial; both become a
`Shipped` that the gate and register stages take the same way.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import mlflow
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from components.config import Params, model_parents
from components.errors import InputError
from components.hashing import file_md5
from components.model.ref import ModelKind, ModelRef
from components.registry.registry import champion, check_reachable, lineage_json
from components.tracking import client_for, lineage_tags, tracking_uri
from components.workspace import Shipping


@dataclass(frozen=True)
class Shipped:
    """The candidate a gate and register stage pair ships: its evaluation, weights and lineage."""

    candidate: str
    model_dir: Path
    eval_dir: Path  # holds summary.json and <candidate>/metrics.json
    lineage: list[dict]
    shipping: Shipping  # where the stages write gate/ and registry/


def lineage(params: Params, ref: ModelRef) -> list[dict]:
    """How a model was made, from the base model up: one entry per stage with the params that shaped it."""
    match ref.kind:
        case ModelKind.BASE:
            return [{"name": "base", **params.base_model.model_dump(mode="json")}]
        case ModelKind.REALIGNED:
            this = params.safety.realign.model_dump(mode="json")
        case ModelKind.PRUNED:
            this = params.safety.prune.model_dump(mode="json")
        case ModelKind.MERGE:
            this = params.merge.recipes[ref.ident].model_dump(mode="json")
        case _:
            this = params.train.jobs[ref.ident].model_dump(mode="json")
    return chain(params, model_parents(ref, params), {"name": str(ref), **this})


def chain(params: Params, parents: list[ModelRef], this: dict) -> list[dict]:
    """The parents' lineages, then `this`; each stage once, in first-seen order."""
    steps = [step for parent in parents for step in lineage(params, parent)] + [this]
    return list({step["name"]: step for step in steps}.values())


def pipeline_candidate(params: Params) -> Shipped:
    ref, ws = ModelRef.parse(params.registry.candidate), params.ws
    return Shipped(str(ref), ref.folder(ws), ws.eval, lineage(params, ref), ws.shipping)


def search_candidate(params: Params) -> Shipped:
    """The trial the search chose, its steps named as the pipeline's: merge-trial-N, realigned-trial-N, pruned-trial-N."""
    folder = params.ws.search
    chosen = json.loads(folder.chosen.read_text())
    if not chosen.get("trial"):
        raise InputError(
            f"{folder.chosen}: no Pareto-optimal trial is within search.select.bounds; "
            f"nothing to register ({folder.report} shows the front)"
        )
    plan, trial = chosen["plan"], ModelRef.parse(chosen["trial"])
    realigns = plan["realign_lr"] is not None
    parents = [
        ModelRef.parse(m) for m in [*params.search.models, *([params.safety.realign.aligned] if realigns else [])]
    ]
    merged = ModelRef.merge(str(trial))
    steps = chain(params, parents, {"name": str(merged), **plan["recipe"]})
    if realigns:
        realign = params.safety.realign.model_copy(update={"model": str(merged), "lr": plan["realign_lr"]})
        steps.append({"name": str(trial.realigned()), **realign.model_dump(mode="json")})
    if plan["prune_ratio"] is not None:
        last = str(trial.realigned()) if realigns else str(merged)
        prune = params.safety.prune.model_copy(update={"model": last, "ratio": plan["prune_ratio"]})
        steps.append({"name": str(trial.pruned()), **prune.model_dump(mode="json")})
    return Shipped(str(trial), Path(chosen["model"]), folder.eval, steps, folder.shipping)


def registry_tags(params: Params, shipped: Shipped, repo: Path) -> dict[str, str]:
    """Lineage tags of a registered version: git commit, data hashes, parent runs, merge recipe, safety params
    (the weights' hash, `model_sha256`, is added by the register stage, which checks it against the gate report)."""
    steps = shipped.lineage
    tags = {
        **lineage_tags(params, repo),
        "lineage": lineage_json(steps),
    }
    tags |= {
        f"data.{path.parent.name}/{path.stem}": file_md5(path) for path in sorted(params.ws.curated.glob("*/*.jsonl"))
    }
    kinds = [(step, ModelRef.parse(step["name"])) for step in steps]
    recipes = [step for step, ref in kinds if ref.kind is ModelKind.MERGE]
    if recipes:
        tags["merge_recipe"] = lineage_json(recipes[-1])
    safety = [step for step, ref in kinds if ref.is_safety]
    if safety:
        tags["safety"] = lineage_json(safety)
    run = mlflow.active_run()
    parent = run.data.tags.get(MLFLOW_PARENT_RUN_ID) if run else None
    if parent:
        tags["pipeline_run"] = parent
        client = client_for(params)
        for stage_run in client.search_runs([run.info.experiment_id], f"tags.mlflow.parentRunId = '{parent}'"):
            tags[f"run.{stage_run.data.tags.get('stage', stage_run.info.run_id)}"] = stage_run.info.run_id
    return tags


def champion_point(params: Params) -> tuple[str, dict[str, float]] | None:
    """The registry's champion as the report draws it: this run's candidate if it is the champion, else its version;
    at the metrics the run's gate compared with (the run's own evaluation suite), else its registered ones."""
    if not params.registry.candidate:
        return None
    check_reachable(tracking_uri(params))
    found = champion(client_for(params), params.registry.model_name)
    if found is None:
        return None
    version, metrics = found
    compared = params.ws.shipping.champion_evaluation
    if compared.is_file() and (record := json.loads(compared.read_text()))["version"] == version:
        metrics = record["metrics"]
    registration = params.ws.shipping.registration
    if registration.is_file() and json.loads(registration.read_text())["version"] == version:
        return params.registry.candidate, metrics
    return f"champion ({params.registry.model_name} v{version})", metrics
