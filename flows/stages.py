"""The registry of stages, in pipeline order: what each one reads, writes, and which params it depends on.

The fixed stages come first; then one `train-<job>` stage per entry of `train.jobs` in params.yaml, in
the order listed there. The same names are the stage names of dvc.yaml; `python -m flows stages` prints
this table.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import json
from pathlib import Path

import mlflow
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from components.config import MergeSpec, Params, TrainJob, search_models
from components.data.curate import curate
from components.data.sources import build_sources
from components.data.validate import require_valid, validate
from components.evaluate.report import draw_report
from components.errors import InputError
from components.evaluate.stage import evaluate_cached, evaluate_candidates
from components.merge.stage import merge_models
from components.safety.prune import prune_model
from components.safety.realign import realign_model
from components.hashing import file_md5, tree_sha256
from components.model.base import build_base_model
from components.registry.registry import champion, check_reachable, lineage_json
from components.registry.stage import gate_candidate, register_candidate
from components.search.stage import CHOSEN, SearchInputs, search_recipes
from components.stage import StageResult
from components.train.job import run_job
from components.tracking import client_for, experiment_id, lineage_tags, log_child_run, tracking_uri
from components.train.pairs import build_pairs


@dataclass(frozen=True)
class Stage:
    name: str
    summary: str
    reads: str
    writes: str
    param_keys: tuple[str, ...]
    run: Callable[[Params], StageResult]


def _validated(params: Params) -> None:
    require_valid(params.run_dir / "data" / "validation")


def _pairs(params: Params) -> StageResult:
    _validated(params)
    return build_pairs(params.run_dir / "base_model", params.run_dir / "data" / "curated", params.train.pairs,
                       params.run_dir / "data" / "pairs", params.seed)


FIXED: tuple[Stage, ...] = (
    Stage(
        name="base-model",
        summary="Turn the configured source into a Hugging Face model directory (fp32 safetensors, tokenizer, "
        "chat template, generation config); rebuilt only when the source or its params change.",
        reads="params base_model: the embedded SmolLM2 GGUF, a GGUF file, a model directory, a Hub id, or a random config",
        writes="<workspace>/<profile>/base_model/",
        param_keys=("base_model",),
        run=lambda params: build_base_model(params.base_model, params.run_dir / "base_model"),
    ),
    Stage(
        name="sources",
        summary="Bring every raw table in as JSONL with licence and provenance: Python docs corpus and docstring Q/A, "
        "generated math, HarmBench and Do-Not-Answer with refusal targets, benign look-alikes, the user's own tables.",
        reads="params data.sources and data.user (the user's JSONL / CSV / Parquet files)",
        writes="<workspace>/<profile>/data/raw/{<dataset>.jsonl, manifest.json}",
        param_keys=("data",),
        run=lambda params: build_sources(params.data, params.run_dir / "data" / "raw"),
    ),
    Stage(
        name="curate",
        summary="Normalise, filter by length and quality, remove exact and near duplicates and harmful content, "
        "split train/val/test by group, drop eval rows that near-duplicate train rows; report every removal.",
        reads="<workspace>/<profile>/data/raw/, params data.curate (and base_model/ if the confidence filter is on)",
        writes="<workspace>/<profile>/data/curated/{<dataset>/{train,val,test}.jsonl, report.json, report.md}",
        param_keys=("data",),
        run=lambda params: curate(params.run_dir / "data" / "raw", params.data.curate, params.seed,
                                  params.run_dir / "data" / "curated", params.run_dir / "base_model"),
    ),
    Stage(
        name="validate",
        summary="Great Expectations suites on every curated table (schema, nulls, uniqueness, lengths, role order, "
        "math answers, disjoint splits); a failed expectation stops the run with a report of the rows at fault.",
        reads="<workspace>/<profile>/data/curated/",
        writes="<workspace>/<profile>/data/validation/{report.json, report.md}",
        param_keys=("data",),
        run=lambda params: validate(params.run_dir / "data" / "curated", params.data.curate,
                                    params.run_dir / "data" / "validation"),
    ),
    Stage(
        name="pairs",
        summary="On-policy preference pairs: the base model answers the harmful training prompts; each compliant "
        "answer becomes `rejected` beside the refusal target, and a row of the harmful-compliance set.",
        reads="<workspace>/<profile>/base_model/, data/curated/harmful/train.jsonl, params train.pairs",
        writes="<workspace>/<profile>/data/pairs/{refusal_pairs,harmful_compliance}/train.jsonl",
        param_keys=("train",),
        run=_pairs,
    ),
)

TRAIN_SUMMARY = ("one per entry of train.jobs (cpt, sft, dpo or orpo with a LoRA adapter, TRL trainers); "
                 "resumes from its last checkpoint; merges the adapter into a full model directory")


def model_dir(params: Params, name: str):
    """The model a job starts from: the base model, or an earlier job's output."""
    return params.run_dir / "base_model" if name == "base" else params.run_dir / "models" / name


def train_stage(name: str, job: TrainJob) -> Stage:
    def run(params: Params) -> StageResult:
        _validated(params)
        report_to = ["mlflow"] if mlflow.active_run() else []  # the Trainer logs loss curves to the stage's run
        return run_job(name, job, model_dir(params, job.init), params.run_dir, model_dir(params, name),
                       params.run_dir / "train" / name, report_to)

    init = "base_model/" if job.init == "base" else f"models/{job.init}/"
    return Stage(
        name=f"train-{name}",
        summary=f"{job.method} on {', '.join(job.datasets)} from {job.init}: " + TRAIN_SUMMARY,
        reads=f"<workspace>/<profile>/{init}, the train/val splits of {', '.join(job.datasets)}",
        writes=f"<workspace>/<profile>/models/{name}/ (merged model), train/{name}/ (checkpoints, adapter)",
        param_keys=(f"train.jobs.{name}",),
        run=run,
    )


def merged_dir(params: Params, name: str):
    return params.run_dir / "merged" / name


def merge_stage(name: str, spec: MergeSpec) -> Stage:
    def run(params: Params) -> StageResult:
        dirs = {model: model_dir(params, model) for model in ["base", *params.train.jobs]}
        return merge_models(name, spec, dirs, merged_dir(params, name), params.merge.max_relative_delta)

    inputs = ", ".join(entry["model"] for entry in spec.models)
    return Stage(
        name=f"merge-{name}",
        summary=f"{spec.merge_method} of {inputs} (base: {spec.base_model}), streamed tensor by tensor; "
        "checks architecture, tensors, tokenizer and shared base first; writes a merge card",
        reads=f"<workspace>/<profile>/models/{{{inputs}}}/",
        writes=f"<workspace>/<profile>/merged/{name}/",
        param_keys=(f"merge.recipes.{name}",),
        run=run,
    )


def pipeline_model(params: Params, name: str):
    """A model by its pipeline name: base, a train job, or merge-<recipe>."""
    return merged_dir(params, name.removeprefix("merge-")) if name.startswith("merge-") else model_dir(params, name)


def prune_stage(params: Params) -> Stage:
    cfg = params.safety.prune
    return Stage(
        name="prune",
        summary=f"Antidote on {cfg.model}: Wanda scores |W|·‖X‖ on harmful (prompt, compliant answer) pairs; "
        f"the top {cfg.ratio:.0%} of each block linear layer set to zero",
        reads=f"the {cfg.model} model, data/pairs/harmful_compliance/train.jsonl (and domain_qa/train.jsonl with "
        "keep_utility_top)",
        writes="<workspace>/<profile>/safety/pruned/",
        param_keys=("safety.prune",),
        run=lambda p: prune_model(pipeline_model(p, cfg.model), p.run_dir / "data/pairs/harmful_compliance/train.jsonl",
                                  cfg, p.run_dir / "safety" / "pruned", p.run_dir / "data/curated/domain_qa/train.jsonl"),
    )


def realign_stage(params: Params) -> Stage:
    cfg = params.safety.realign
    return Stage(
        name="realign",
        summary=f"SOMF: a safety mask over {cfg.model}'s weights, learned on refusal data; masked coordinates come "
        f"back from {cfg.aligned}, the rest keep {cfg.model}'s values",
        reads=f"the {cfg.model} and {cfg.aligned} models, data/curated/harmful/train.jsonl",
        writes="<workspace>/<profile>/safety/realigned/",
        param_keys=("safety.realign",),
        run=lambda p: realign_model(pipeline_model(p, cfg.aligned), pipeline_model(p, cfg.model),
                                    p.run_dir / "data/curated/harmful/train.jsonl", cfg, p.run_dir / "safety" / "realigned"),
    )


def candidates(params: Params) -> dict:
    """Every model the pipeline has produced so far, base first: what the evaluate stage scores."""
    found = {"base": params.run_dir / "base_model"}
    found |= {name: model_dir(params, name) for name in params.train.jobs if model_dir(params, name).is_dir()}
    found |= {f"merge-{name}": merged_dir(params, name) for name in params.merge.recipes
              if merged_dir(params, name).is_dir()}
    if params.safety.realign.model and (params.run_dir / "safety" / "realigned").is_dir():
        found[f"realigned-{params.safety.realign.model}"] = params.run_dir / "safety" / "realigned"
    if params.safety.prune.model and (params.run_dir / "safety" / "pruned").is_dir():
        found[f"pruned-{params.safety.prune.model}"] = params.run_dir / "safety" / "pruned"
    return found


EVALUATE = Stage(
    name="evaluate",
    summary="Held-out evaluation of every candidate (base, each trained model): domain multiple choice, math exact "
    "match, domain perplexity, harmful score and over-refusal with Wilson intervals.",
    reads="<workspace>/<profile>/base_model/, models/*/, merged/*/, safety/*/, the test splits of data/curated/",
    writes="<workspace>/<profile>/eval/{<candidate>/{metrics.json, samples.jsonl}, summary.json, summary.md}",
    param_keys=("evaluate",),
    run=lambda params: evaluate_candidates(candidates(params), params.run_dir / "data" / "curated", params.evaluate,
                                           params.seed, params.run_dir / "eval"),
)


def candidate_dir(params: Params, name: str):
    """A candidate's model directory by the name the evaluate stage gives it."""
    if name.startswith("realigned-"):
        return params.run_dir / "safety" / "realigned"
    if name.startswith("pruned-"):
        return params.run_dir / "safety" / "pruned"
    return pipeline_model(params, name)


def lineage(params: Params, name: str) -> list[dict]:
    """How a candidate was made, from the base model up: one entry per stage with the params that shaped it."""
    if name == "base":
        return [{"name": "base", **params.base_model.model_dump(mode="json")}]
    if name.startswith(("realigned-", "pruned-")):
        kind, _, model = name.partition("-")
        cfg = params.safety.realign if kind == "realigned" else params.safety.prune
        parents = [cfg.aligned, model] if kind == "realigned" else [model]
        this = {"name": name, **cfg.model_dump(mode="json")}
    elif name.startswith("merge-"):
        spec = params.merge.recipes[name.removeprefix("merge-")]
        parents = [entry["model"] for entry in spec.models]
        this = {"name": name, **spec.model_dump(mode="json")}
    else:
        job = params.train.jobs[name]
        parents, this = [job.init], {"name": name, **job.model_dump(mode="json")}
    return chain(params, parents, this)


def chain(params: Params, parents: list[str], this: dict) -> list[dict]:
    """The parents' lineages, then `this`; each stage once, in first-seen order."""
    steps = [step for parent in parents for step in lineage(params, parent)] + [this]
    return list({step["name"]: step for step in steps}.values())


def registry_tags(params: Params, shipped: Shipped, repo) -> dict[str, str]:
    """Lineage tags of a registered version: git commit, data hashes, parent runs, merge recipe, safety params."""
    steps = shipped.lineage
    tags = {**lineage_tags(params, repo), "model_sha256": tree_sha256(shipped.model_dir),
            "lineage": lineage_json(steps)}
    curated = params.run_dir / "data" / "curated"
    tags |= {f"data.{path.parent.name}/{path.stem}": file_md5(path) for path in sorted(curated.glob("*/*.jsonl"))}
    recipes = [step for step in steps if step["name"].startswith("merge-")]
    if recipes:
        tags["merge_recipe"] = lineage_json(recipes[-1])
    safety = [step for step in steps if step["name"].startswith(("realigned-", "pruned-"))]
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


def _registry_run(params: Params) -> str:
    """The run that holds the registered model's files: the register stage's own run, or a new one untracked."""
    run = mlflow.active_run()
    if run is not None:
        return run.info.run_id
    client = client_for(params)
    return client.create_run(experiment_id(client, params), tags={"mlflow.runName": "register"}).info.run_id


@dataclass(frozen=True)
class Shipped:
    """The candidate a gate and register stage pair ships: its evaluation, weights and lineage."""

    candidate: str
    model_dir: Path
    eval_dir: Path  # holds summary.json and <candidate>/metrics.json
    lineage: list[dict]
    out_dir: Path  # the stages write gate/ and registry/ here


def pipeline_candidate(params: Params) -> Shipped:
    name = params.registry.candidate
    return Shipped(name, candidate_dir(params, name), params.run_dir / "eval", lineage(params, name), params.run_dir)


def gate_stage(params: Params, shipped: Callable[[Params], Shipped] = pipeline_candidate, prefix: str = "") -> Stage:
    cfg = params.registry
    what = "the recipe search's chosen trial" if prefix else cfg.candidate

    def run(p: Params) -> StageResult:
        ship = shipped(p)
        return gate_candidate(ship.candidate, ship.eval_dir, cfg, tracking_uri(p), ship.out_dir / "gate")

    return Stage(
        name=f"{prefix}gate",
        summary=f"Gates on {what}: floors and ceilings from registry.gates, no regression against the "
        f"registry's champion of {cfg.model_name}; a report in Markdown and JSON",
        reads=f"the candidate's metrics.json, the champion's metrics in the MLflow registry",
        writes=f"<workspace>/<profile>/{prefix.replace('-', '/')}gate/{{report.md, report.json}}",
        param_keys=("registry",),
        run=run,
    )


def register_stage(params: Params, repo, shipped: Callable[[Params], Shipped] = pipeline_candidate,
                   prefix: str = "") -> Stage:
    cfg = params.registry
    what = "the recipe search's chosen trial" if prefix else cfg.candidate

    def run(p: Params) -> StageResult:
        ship = shipped(p)
        return register_candidate(ship.candidate, ship.model_dir, ship.eval_dir, ship.out_dir / "gate", cfg,
                                  tracking_uri(p), _registry_run(p), registry_tags(p, ship, repo), ship.lineage,
                                  ship.out_dir / "registry")

    return Stage(
        name=f"{prefix}register",
        summary=f"Register {what} as a version of {cfg.model_name} (alias challenger) with lineage tags, "
        "model card and gate report; move champion to it if every gate passed",
        reads="the candidate's model, gate/report.json, its evaluation summary.json",
        writes=f"<workspace>/<profile>/{prefix.replace('-', '/')}registry/{{model_card.md, registration.json}}, "
        "the MLflow registry",
        param_keys=("registry",),
        run=run,
    )


def champion_point(params: Params) -> tuple[str, dict[str, float]] | None:
    """The registry's champion as the report draws it: this run's candidate if it is the champion, else its version."""
    if not params.registry.candidate:
        return None
    uri = tracking_uri(params)
    check_reachable(uri)
    found = champion(client_for(params), params.registry.model_name)
    if found is None:
        return None
    version, metrics = found
    registration = params.run_dir / "registry" / "registration.json"
    if registration.is_file() and json.loads(registration.read_text())["version"] == version:
        return params.registry.candidate, metrics
    return f"champion ({params.registry.model_name} v{version})", metrics


def report_stage(params: Params) -> Stage:
    return Stage(
        name="report",
        summary="Pictures of the run: safety against utility with the Pareto front and the champion starred, the "
        "experts' loss curves on one figure, each candidate's task-vector norm per block; a Markdown page of them",
        reads="eval/summary.json, every candidate's weights, train/<job>/log_history.json, the registry's champion",
        writes="<workspace>/<profile>/report/{safety_vs_utility,loss_curves,task_vector_layers}.png, "
        "loss_curves.json, report.md",
        param_keys=("evaluate",),
        run=lambda p: draw_report(p.run_dir / "eval", candidates(p),
                                  {job: p.run_dir / "train" / job / "log_history.json" for job in p.train.jobs},
                                  champion_point(p), p.run_dir / "report"),
    )


def stages_for(params: Params, repo=Path(".")) -> tuple[Stage, ...]:
    return (FIXED + tuple(train_stage(name, job) for name, job in params.train.jobs.items())
            + tuple(merge_stage(name, spec) for name, spec in params.merge.recipes.items())
            + ((realign_stage(params),) if params.safety.realign.model else ())
            + ((prune_stage(params),) if params.safety.prune.model else ()) + (EVALUATE,)
            + ((gate_stage(params), register_stage(params, repo)) if params.registry.candidate else ())
            + (report_stage(params),))


def with_inits(params: Params, jobs: list[str]) -> set[str]:
    """The named train jobs and every job they start from, transitively."""
    needed: set[str] = set()
    for name in jobs:
        while name != "base" and name not in needed:
            needed.add(name)
            name = params.train.jobs[name].init
    return needed


def search_dir(params: Params) -> Path:
    return params.run_dir / "search"


def _search(p: Params) -> StageResult:
    _validated(p)
    models = {name: model_dir(p, name) for name in ["base", *dict.fromkeys(search_models(p))]}
    curated = p.run_dir / "data" / "curated"
    # the references drawn beside the trials; the same cache as the evaluate stage's, so evaluated once
    references = {name: evaluate_cached(path, curated, p.evaluate, p.seed, p.run_dir / "eval" / name)[0]
                  for name, path in models.items()}
    inputs = SearchInputs(models, curated, p.run_dir / "data/pairs/harmful_compliance/train.jsonl",
                          p.merge.max_relative_delta, p.safety.realign, p.safety.prune, p.evaluate, p.seed)
    return search_recipes(p.search, inputs, references, search_dir(p), p.search.study_name or f"recipe-search-{p.profile}",
                          log_child_run if mlflow.active_run() else None)


def search_stage(params: Params) -> Stage:
    cfg = params.search
    return Stage(
        name="search",
        summary=f"Optuna search over merge recipes of {', '.join(cfg.models)} ({', '.join(cfg.space.methods)}), "
        f"with SOMF and Antidote strengths, up to {cfg.trials} trials; objectives {', '.join(cfg.objectives)}; "
        "the Pareto front and the recipe search.select picks",
        reads="base_model/, models/<expert>/ (and the aligned model), data/curated/, data/pairs/harmful_compliance/",
        writes="<workspace>/<profile>/search/{study.db, trials/, trials.json, eval/, pareto_front.png, chosen.json, "
        "chosen_recipe.yaml, report.md}",
        param_keys=("search", "safety", "evaluate"),
        run=_search,
    )


def search_candidate(params: Params) -> Shipped:
    """The trial the search chose, as the search-gate and search-register stages ship it."""
    chosen = json.loads((search_dir(params) / CHOSEN).read_text())
    if not chosen.get("trial"):
        raise InputError(f"{search_dir(params) / CHOSEN}: no Pareto-optimal trial is within search.select.bounds; "
                         "nothing to register (search/report.md shows the front)")
    plan, trial = chosen["plan"], chosen["trial"]
    parents = list(params.search.models) + ([params.safety.realign.aligned] if plan["realign_lr"] is not None else [])
    model = f"merge-{trial}"  # the steps are named as the pipeline's: merge-, realigned-, pruned-
    steps = chain(params, parents, {"name": model, **plan["recipe"]})
    if plan["realign_lr"] is not None:
        realign = params.safety.realign.model_copy(update={"model": model, "lr": plan["realign_lr"]})
        model = f"realigned-{trial}"
        steps.append({"name": model, **realign.model_dump(mode="json")})
    if plan["prune_ratio"] is not None:
        prune = params.safety.prune.model_copy(update={"model": model, "ratio": plan["prune_ratio"]})
        steps.append({"name": f"pruned-{trial}", **prune.model_dump(mode="json")})
    return Shipped(trial, Path(chosen["model"]), search_dir(params) / "eval", steps, search_dir(params))


def search_stages(params: Params, repo=Path(".")) -> tuple[Stage, ...]:
    """What the recipe-search flow runs: data, the jobs the search needs (with their inits), the search, and,
    with search.register_chosen, the gate and register stages of the chosen trial."""
    needed = with_inits(params, search_models(params))
    train = tuple(train_stage(name, job) for name, job in params.train.jobs.items() if name in needed)
    ship = (gate_stage(params, search_candidate, "search-"), register_stage(params, repo, search_candidate, "search-")) \
        if params.search.register_chosen else ()
    return FIXED + train + (search_stage(params),) + ship


def describe(stages: tuple[Stage, ...] = FIXED) -> str:
    lines = []
    for stage in stages:
        lines += [f"  {stage.name}", f"      {stage.summary}", f"      reads:  {stage.reads}", f"      writes: {stage.writes}"]
    if stages == FIXED:
        lines += ["  train-<job>", f"      {TRAIN_SUMMARY}",
                  "      reads:  base_model/ or models/<init>/, the job's datasets",
                  "      writes: <workspace>/<profile>/models/<job>/, train/<job>/"]
        lines += ["  merge-<name>", "      one per entry of merge.recipes: task_arithmetic, ties, pcb, layer_swap (streamed "
                  "here, LiNeS optional) or any mergekit method", "      reads:  models/<job>/ of the recipe",
                  "      writes: <workspace>/<profile>/merged/<name>/"]
        lines += [f"  {EVALUATE.name}", f"      {EVALUATE.summary}", f"      reads:  {EVALUATE.reads}",
                  f"      writes: {EVALUATE.writes}"]
        lines += ["  realign, prune, gate, register, report", "      SOMF and Antidote on the configured model, gates "
                  "and the MLflow registry, the run's figures (`python -m flows stages` lists them with their inputs)"]
        lines += ["  search (python -m flows search)", "      Optuna over merge recipes with safety in the objective; "
                  "writes <workspace>/<profile>/search/"]
    return "\n".join(lines)
