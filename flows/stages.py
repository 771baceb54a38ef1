"""The pipeline's stages, in order: what each one reads, writes, which params it depends on, and its entry.

Each entry is a component's stage function (components/<area>/stage.py) over the resolved Params; this
table only says which stages run and in what order, and what each one's key covers: the module whose code
it hashes, the paths whose content it hashes (`inputs`), the paths it writes (`outputs`) and the params
(`param_keys`). dvc.yaml is generated from this table (flows/dvc_yaml.py); `python -m flows stages` prints it.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from components import resources
from components.atomic import atomic_file
from components.config import Params, search_models
from components.model.ref import ModelRef
from components.stage import StageResult
from components.workspace import Workspace

if TYPE_CHECKING:
    from components.registry.lineage import Shipped


@dataclass(frozen=True)
class Lazy:
    """`module.name`, imported at its first call. The table names every stage's code this way, so reading it
    (`--help`, `stages`, dvc.yaml) imports none of the stages' libraries, and `python -m flows stage NAME` imports
    only what NAME runs (torch, transformers, Great Expectations, mergekit, MLflow each cost seconds to import).
    A plain value, so a stage's entry can be sent to a process of its own (flows/own_process.py)."""

    module: str
    name: str

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return getattr(importlib.import_module(self.module), self.name)(*args, **kwargs)


base_model_stage = Lazy("components.model.stage", "base_model_stage")
source_files = Lazy("components.model.base", "source_files")
sources_stage = Lazy("components.data.stage", "sources_stage")
curate_stage = Lazy("components.data.stage", "curate_stage")
validate_stage = Lazy("components.data.stage", "validate_stage")
pairs_stage = Lazy("components.train.stage", "pairs_stage")
train_stage = Lazy("components.train.stage", "train_stage")
harmful_mix_table = Lazy("components.train.data", "harmful_mix_table")
table_folder = Lazy("components.train.data", "table_folder")
merge_stage = Lazy("components.merge.stage", "merge_stage")
our_methods = Lazy("components.merge.registry", "our_methods")
realign_stage = Lazy("components.safety.stage", "realign_stage")
realign_data = Lazy("components.safety.stage", "realign_data")
retain_tables = Lazy("components.safety.stage", "retain_tables")
prune_stage = Lazy("components.safety.stage", "prune_stage")
evaluate_stage = Lazy("components.evaluate.stage", "evaluate_stage")
report_stage = Lazy("components.evaluate.stage", "report_stage")
candidate_folders = Lazy("components.evaluate.stage", "candidate_folders")
gate_stage = Lazy("components.registry.stage", "gate_stage")
register_stage = Lazy("components.registry.stage", "register_stage")
pipeline_candidate = Lazy("components.registry.lineage", "pipeline_candidate")
search_candidate = Lazy("components.registry.lineage", "search_candidate")

RUN = "<workspace>/<profile>"

# A stage's paths, given the workspace to name them in (the run's, or dvc.yaml's `outputs/${profile}`) and the params.
Paths = Callable[[Workspace, Params], list[Path]]


@dataclass(frozen=True)
class Stage:
    """One stage: `reads` and `writes` in words for the listing; `inputs` (the paths whose content its key hashes,
    and the upstream outputs it must run after), `outputs`, `param_keys` (dotted params.yaml keys) and `key_module`
    (the module that builds its StageCache: the key covers that module's code and the code it imports)."""

    name: str
    summary: str
    reads: str
    writes: str
    param_keys: tuple[str, ...]
    run: Callable[[Params], StageResult]
    key_module: str
    inputs: Paths
    outputs: Paths
    holds_models: bool = False  # loads model weights to compute with: run apart in a pipeline run

    def execute(self, params: Params, apart: bool = False) -> StageResult:
        """`run`, measured: wall seconds and peak RSS join the stage's metrics and the run's timings file. With
        `apart` (a whole pipeline run with `stage_processes`), a stage that holds models runs in a process of its
        own (flows/own_process.py), measured there."""
        if apart and self.holds_models and params.stage_processes:
            from flows.own_process import run_in_own_process

            result, usage = run_in_own_process(self.run, params)
        else:
            with resources.measured() as usage:
                result = self.run(params)
        record_timing(params.ws.timings, self.name, usage, result.cached)
        return replace(
            result,
            metrics={**result.metrics, "stage_seconds": usage.seconds, "stage_peak_rss_mb": usage.peak_rss_mb},
        )


def prepare_apart(params: Params) -> None:
    """Before a whole run: with `stage_processes`, the fork server of the stages run apart starts importing their
    libraries while the data stages run."""
    if params.stage_processes:
        from flows.own_process import start_fork_server

        start_fork_server()


def record_timing(path: Path, stage: str, usage: resources.Usage, cached: bool) -> None:
    """The stage's latest wall time and peak RSS in <run>/timings.json (`python -m flows stages` shows them)."""
    timings = json.loads(path.read_text()) if path.is_file() else {}
    timings[stage] = {"seconds": round(usage.seconds, 2), "peak_rss_mb": round(usage.peak_rss_mb), "cached": cached}
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(timings, indent=1) + "\n")


DATA: tuple[Stage, ...] = (
    Stage(
        "base-model",
        "Turn the configured source into a Hugging Face model directory (fp32 safetensors, tokenizer, "
        "chat template, generation config); rebuilt only when the source or its params change.",
        "params base_model: the embedded SmolLM2 GGUF, a GGUF file, a model directory, a Hub id, or a random config",
        f"{RUN}/base_model/",
        ("base_model",),
        base_model_stage,
        "components.model.base",
        inputs=lambda ws, p: source_files(p.base_model),
        outputs=lambda ws, p: [ws.base_model],
    ),
    Stage(
        "sources",
        "Bring every raw table in as JSONL with licence and provenance: Python docs corpus and docstring "
        "Q/A, generated math, HarmBench and Do-Not-Answer with refusal targets, benign look-alikes, the user's own "
        "tables.",
        "params data.sources and data.user (the user's JSONL / CSV / Parquet files)",
        f"{RUN}/data/raw/{{<dataset>.jsonl, manifest.json}}",
        ("data.sources", "data.user"),
        sources_stage,
        "components.data.sources",
        inputs=lambda ws, p: [table.path for table in p.data.user],
        outputs=lambda ws, p: [ws.raw],
    ),
    Stage(
        "curate",
        "Normalise, filter by length and quality, remove exact and near duplicates and harmful content, "
        "split train/val/test by group, drop eval rows that near-duplicate train rows; report every removal.",
        f"{RUN}/data/raw/, params data.curate (and base_model/ if the confidence filter is on)",
        f"{RUN}/data/curated/{{<dataset>/{{train,val,test}}.jsonl, report.json, report.md}}",
        ("seed", "data.curate"),
        curate_stage,
        "components.data.curate",
        # the base model scores the training answers only when the confidence filter is on
        inputs=lambda ws, p: [ws.raw] + ([ws.base_model] if p.data.curate.confidence.enabled else []),
        outputs=lambda ws, p: [ws.curated],
    ),
    Stage(
        "validate",
        "Great Expectations suites on every curated table (schema, nulls, uniqueness, lengths, role "
        "order, math answers, disjoint splits); a failed expectation stops the run with a report of the rows at fault.",
        f"{RUN}/data/curated/",
        f"{RUN}/data/validation/{{report.json, report.md}}",
        ("data.curate",),
        validate_stage,
        "components.data.validate",
        inputs=lambda ws, p: [ws.curated],
        outputs=lambda ws, p: [ws.validation],
    ),
    Stage(
        "pairs",
        "On-policy preference pairs: the base model answers the harmful training prompts; each compliant "
        "answer becomes `rejected` beside the refusal target, and a row of the harmful-compliance set. It answers "
        "the benign look-alike training prompts too: each answer becomes `chosen` over a refusal (contrast pairs).",
        f"{RUN}/base_model/, data/curated/{{harmful,benign_lookalikes}}/train.jsonl, params train.pairs",
        f"{RUN}/data/pairs/{{refusal_pairs,safety_sft,harmful_compliance}}/train.jsonl",
        ("seed", "train.pairs"),
        pairs_stage,
        "components.train.pairs",
        # validation/ is not in the key: the stage refuses data that has not passed it, so it runs after validate
        inputs=lambda ws, p: (
            [ws.base_model, ws.split("harmful", "train")]
            + ([ws.split("benign_lookalikes", "train")] if p.train.pairs.lookalike_prompts else [])
            + [ws.validation]
        ),
        outputs=lambda ws, p: [ws.pairs],
        holds_models=True,
    ),
)

TRAIN_SUMMARY = (
    "one per entry of train.jobs (cpt, sft, dpo or orpo with a LoRA adapter, TRL trainers); "
    "resumes from its last checkpoint; merges the adapter into a full model directory"
)


def train(params: Params, name: str) -> Stage:
    job = params.train.jobs[name]
    init = ModelRef.parse(job.init).folder(params.ws).relative_to(params.ws.run_dir)

    def inputs(ws: Workspace, p: Params) -> list[Path]:
        """The init model, the job's tables and any harmful mix (its key), and validation/ (run after validate)."""
        harmful = harmful_mix_table(job, ws)
        tables = [table_folder(table, ws) for table in job.datasets]
        return [ModelRef.parse(job.init).folder(ws), *tables, *([harmful] if harmful else []), ws.validation]

    return Stage(
        f"train-{name}",
        f"{job.method} on {', '.join(job.datasets)} from {job.init}: " + TRAIN_SUMMARY,
        f"{RUN}/{init}/, the train/val splits of {', '.join(job.datasets)}",
        f"{RUN}/models/{name}/ (merged model), train/{name}/ (checkpoints, adapter)",
        (f"train.jobs.{name}",),
        partial(train_stage, name=name),
        "components.train.job",
        inputs,
        outputs=lambda ws, p: [ws.job_model(name), ws.job_work(name)],
        holds_models=True,
    )


def merge(params: Params, name: str) -> Stage:
    spec = params.merge.recipes[name]
    inputs = ", ".join(entry["model"] for entry in spec.models)
    return Stage(
        f"merge-{name}",
        f"{spec.merge_method} of {inputs} (base: {spec.base_model}), streamed tensor by "
        "tensor; checks architecture, tensors, tokenizer and shared base first; writes a merge card",
        f"{RUN}/models/{{{inputs}}}/",
        f"{RUN}/merged/{name}/",
        (f"merge.recipes.{name}", "merge.max_relative_delta"),
        partial(merge_stage, name=name),
        "components.merge.stage",
        inputs=lambda ws, p: [
            ModelRef.parse(model).folder(ws)
            for model in [*([spec.base_model] if spec.base_model else []), *(entry["model"] for entry in spec.models)]
        ],
        outputs=lambda ws, p: [ws.merged(name)],
        holds_models=True,
    )


def realign(params: Params) -> Stage:
    cfg = params.safety.realign
    if cfg.method == "resta":
        what = f"RESTA: {cfg.aligned}'s safety vector ({cfg.aligned} − base) × {cfg.scale} added to {cfg.model}"
        reads = f"the {cfg.model}, {cfg.aligned} and base models"
    else:
        what = (
            f"SOMF ({cfg.method}): a safety mask over {cfg.model}'s update from {cfg.aligned}, learned on safety "
            f"data; masked coordinates come back from {cfg.aligned}, the rest keep {cfg.model}'s update"
        )
        reads = (
            f"the {cfg.model} and {cfg.aligned} models, data/pairs/safety_sft/train.jsonl (refusal_mask) or "
            "data/pairs/refusal_pairs/train.jsonl (concrete_dpo)"
            + "".join(f", data/curated/{table}/train.jsonl (kept answered)" for table in cfg.retain)
        )
    return Stage(
        "realign",
        what,
        reads,
        f"{RUN}/safety/realigned/",
        ("safety.realign",),
        realign_stage,
        "components.safety.realign",
        inputs=lambda ws, p: [
            ModelRef.parse(cfg.aligned).folder(ws),
            ModelRef.parse(cfg.model).folder(ws),
            realign_data(ws, cfg) if cfg.method != "resta" else ws.base_model,
            *retain_tables(ws, cfg),
        ],
        outputs=lambda ws, p: [ws.realigned],
        holds_models=True,
    )


def prune(params: Params) -> Stage:
    cfg = params.safety.prune
    return Stage(
        "prune",
        f"Antidote on {cfg.model}: its update from {cfg.aligned} scored by Wanda, |Δ|·‖X‖ on harmful (prompt, "
        f"compliant answer) pairs ({cfg.score}); the top {cfg.ratio:.0%} of each row reverted to {cfg.aligned}",
        f"the {cfg.model} and {cfg.aligned} models, data/pairs/harmful_compliance/train.jsonl (and "
        "domain_qa/train.jsonl for the contrastive score)",
        f"{RUN}/safety/pruned/",
        ("safety.prune",),
        prune_stage,
        "components.safety.prune",
        inputs=lambda ws, p: [
            ModelRef.parse(cfg.model).folder(ws),
            ModelRef.parse(cfg.aligned).folder(ws),
            ws.harmful_compliance,
            *([ws.split("domain_qa", "train")] if cfg.score == "contrastive" else []),
        ],
        outputs=lambda ws, p: [ws.pruned],
        holds_models=True,
    )


def evaluated_splits(ws: Workspace) -> list[Path]:
    """The test splits the evaluation suite reads."""
    from components.evaluate.evaluation import TEST_SETS

    return [ws.split(name, "test") for name in TEST_SETS]


EVALUATE = Stage(
    "evaluate",
    "Held-out evaluation of every candidate (base, each trained model): domain multiple "
    "choice, math exact match, domain perplexity, harmful score and over-refusal with Wilson intervals.",
    f"{RUN}/base_model/, models/*/, merged/*/, safety/*/, the test splits of data/curated/",
    f"{RUN}/eval/{{<candidate>/{{metrics.json, samples.jsonl, weights.json}}, summary.json, summary.md}}",
    ("seed", "evaluate"),
    evaluate_stage,
    "components.evaluate.evaluation",
    inputs=lambda ws, p: [*candidate_folders(p, ws).values(), *evaluated_splits(ws)],
    outputs=lambda ws, p: [ws.eval],
    holds_models=True,
)

REPORT = Stage(
    "report",
    "Pictures of the run: safety against utility with the Pareto front and the champion starred, "
    "the experts' loss curves on one figure, each candidate's task-vector norm per block; a Markdown page",
    "eval/summary.json, every candidate's weights, train/<job>/log_history.json, the registry's champion",
    f"{RUN}/report/{{safety_vs_utility,loss_curves,task_vector_layers}}.png, loss_curves.json, report.md",
    ("evaluate",),
    report_stage,
    "components.evaluate.report",
    inputs=lambda ws, p: [ws.eval, *candidate_folders(p, ws).values(), *map(ws.loss_history, p.train.jobs)],
    outputs=lambda ws, p: [ws.report],
)


def shipped_candidate(ws: Workspace, params: Params) -> list[Path]:
    """What the pipeline's gate and register stages read of registry.candidate: its model and the evaluation."""
    return [ModelRef.parse(params.registry.candidate).folder(ws), ws.eval]


def chosen_trial(ws: Workspace, params: Params) -> list[Path]:
    """The search's folder holds its chosen trial's model and evaluation."""
    return [ws.search]


def ship(
    params: Params, repo: Path, shipped: Callable[[Params], Shipped], candidate: Paths, prefix: str = ""
) -> list[Stage]:
    """The gate and register stages of a candidate: the pipeline's (no prefix) or the search's chosen trial.

    Neither stage is cached (they judge against the registry's champion), so their key module is only the
    code they run; `candidate` names the paths of the candidate they read.
    """
    cfg = params.registry
    what = "the recipe search's chosen trial" if prefix else cfg.candidate
    folder = f"{RUN}/{prefix.replace('-', '/')}"

    def home(ws: Workspace) -> Path:
        return ws.search if prefix else ws.run_dir

    return [
        Stage(
            f"{prefix}gate",
            f"Gates on {what}: floors and ceilings from registry.gates, no regression against the "
            f"registry's champion of {cfg.model_name}; a report in Markdown and JSON",
            "the candidate's metrics.json, the champion's metrics in the MLflow registry",
            f"{folder}gate/{{report.md, report.json}}",
            ("registry",),
            lambda p: gate_stage(p, shipped(p)),
            "components.registry.stage",
            inputs=candidate,
            outputs=lambda ws, p: [home(ws) / "gate"],
        ),
        Stage(
            f"{prefix}register",
            f"Register {what} as a version of {cfg.model_name} (alias challenger) with lineage "
            "tags, model card and gate report; move champion to it if every gate passed",
            "the candidate's model, gate/report.json, the evaluated candidates' metrics.json",
            f"{folder}registry/{{model_card.md, registration.json}}, the MLflow registry",
            ("registry",),
            lambda p: register_stage(p, shipped(p), repo),
            "components.registry.stage",
            inputs=lambda ws, p: [*candidate(ws, p), home(ws) / "gate"],
            outputs=lambda ws, p: [home(ws) / "registry"],
        ),
    ]


def stages_for(params: Params, repo: Path = Path(".")) -> list[Stage]:
    """The pipeline, in order: data, training, merging, safety, evaluation, shipping, pictures."""
    stages = list(DATA)
    stages += [train(params, name) for name in params.train.jobs]
    stages += [merge(params, name) for name in params.merge.recipes]
    if params.safety.realign.model:
        stages.append(realign(params))
    if params.safety.prune.model:
        stages.append(prune(params))
    stages.append(EVALUATE)
    if params.registry.candidate:
        stages += ship(params, repo, pipeline_candidate, shipped_candidate)
    stages.append(REPORT)
    return stages


def with_inits(params: Params, jobs: list[str]) -> set[str]:
    """The named train jobs and every job they start from, transitively."""
    needed: set[str] = set()
    for name in jobs:
        while name != "base" and name not in needed:
            needed.add(name)
            name = params.train.jobs[name].init
    return needed


def run_search(params: Params) -> StageResult:
    """The search stage, its trials logged as child runs when an MLflow run is active."""
    import mlflow

    from components.search.stage import search_stage
    from components.tracking import log_child_run

    return search_stage(params, log_child_run if mlflow.active_run() else None)


def search(params: Params) -> Stage:
    cfg = params.search

    def models(p: Params) -> list[str]:
        """The models the search merges, with base: it evaluates each once as a reference, under eval/<model>/."""
        return ["base", *dict.fromkeys(search_models(p))]

    return Stage(
        "search",
        f"Optuna search over merge recipes of {', '.join(cfg.models)} ({', '.join(cfg.space.methods)}), "
        f"with SOMF and Antidote strengths, up to {cfg.trials} trials; objectives {', '.join(cfg.objectives)}; "
        "the Pareto front and the recipe search.select picks",
        "base_model/, models/<expert>/ (and the aligned model), data/curated/, data/pairs/harmful_compliance/",
        f"{RUN}/search/{{study.db, trials/, trials.json, eval/, pareto_front.png, chosen.json, "
        "chosen_recipe.yaml, report.md}",
        ("search", "safety", "evaluate"),
        run_search,
        "components.search.stage",
        # the experts (and the aligned model) it merges, the data it evaluates and calibrates on, and validation/
        inputs=lambda ws, p: [
            *(ModelRef.parse(model).folder(ws) for model in models(p)),
            ws.curated,
            ws.harmful_compliance,
            ws.validation,
        ],
        outputs=lambda ws, p: [ws.search, *(ws.eval / model for model in models(p))],
    )


def search_stages(params: Params, repo: Path = Path(".")) -> list[Stage]:
    """What the recipe-search flow runs: data, the jobs the search needs (with their inits), the search, and,
    with search.register_chosen, the gate and register stages of the chosen trial."""
    needed = with_inits(params, search_models(params))
    stages = list(DATA) + [train(params, name) for name in params.train.jobs if name in needed]
    stages.append(search(params))
    if params.search.register_chosen:
        stages += ship(params, repo, search_candidate, chosen_trial, "search-")
    return stages


def describe(stages: list[Stage] | tuple[Stage, ...] = DATA, timings: Path | None = None) -> str:
    """The stages with what each reads and writes, and the last run's time and memory where `timings` has them."""
    measured = json.loads(timings.read_text()) if timings is not None and timings.is_file() else {}
    lines = []
    for stage in stages:
        lines += [
            f"  {stage.name}",
            f"      {stage.summary}",
            f"      reads:  {stage.reads}",
            f"      writes: {stage.writes}",
        ]
        if stage.name in measured:
            last = measured[stage.name]
            state = "up to date" if last["cached"] else "built"
            lines.append(f"      last run: {last['seconds']:.1f} s, peak RSS {last['peak_rss_mb']} MB ({state})")
    if tuple(stages) == DATA:
        lines += [
            "  train-<job>",
            f"      {TRAIN_SUMMARY}",
            "      reads:  base_model/ or models/<init>/, the job's datasets",
            f"      writes: {RUN}/models/<job>/, train/<job>/",
        ]
        lines += [
            "  merge-<name>",
            f"      one per entry of merge.recipes: {', '.join(our_methods())} (streamed "
            "here, LiNeS optional) or any mergekit method",
            "      reads:  models/<job>/ of the recipe",
            f"      writes: {RUN}/merged/<name>/",
        ]
        lines += [
            f"  {EVALUATE.name}",
            f"      {EVALUATE.summary}",
            f"      reads:  {EVALUATE.reads}",
            f"      writes: {EVALUATE.writes}",
        ]
        lines += [
            "  realign, prune, gate, register, report",
            "      SOMF and Antidote on the configured model, gates "
            "and the MLflow registry, the run's figures (`python -m flows stages` lists them with their inputs)",
        ]
        lines += [
            "  search (python -m flows search)",
            f"      Optuna over merge recipes with safety in the objective; writes {RUN}/search/",
        ]
    return "\n".join(lines)
