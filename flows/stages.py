"""The pipeline's stages, in order: what each one reads, writes, which params it depends on, and its entry.

Each entry is a component's stage function (components/<area>/stage.py) over the resolved Params; this
table only says which stages run and in what order, and what each one's key covers: the module whose code
it hashes, the paths whose content it hashes (`inputs`: the component's own `<stage>_inputs`, the mapping its
StageCache hashes, so the two cannot disagree), the upstream outputs it only runs after (`after`), the paths it
writes (`outputs`) and the params (`param_keys`). dvc.yaml is generated from this table (flows/dvc_yaml.py);
`python -m flows stages` prints it; flows/execute.py runs a stage of it.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from components.config import Params, search_models
from components.model.ref import ModelRef
from components.stage import StageInputs, StageResult
from components.workspace import Shipping, Workspace

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
base_model_inputs = Lazy("components.model.stage", "base_model_inputs")
sources_stage = Lazy("components.data.stage", "sources_stage")
sources_inputs = Lazy("components.data.stage", "sources_inputs")
curate_stage = Lazy("components.data.stage", "curate_stage")
curate_inputs = Lazy("components.data.stage", "curate_inputs")
validate_stage = Lazy("components.data.stage", "validate_stage")
validate_inputs = Lazy("components.data.stage", "validate_inputs")
pairs_stage = Lazy("components.train.stage", "pairs_stage")
pairs_inputs = Lazy("components.train.stage", "pairs_inputs")
train_stage = Lazy("components.train.stage", "train_stage")
train_inputs = Lazy("components.train.stage", "train_inputs")
merge_stage = Lazy("components.merge.stage", "merge_stage")
merge_inputs = Lazy("components.merge.stage", "merge_inputs")
realign_stage = Lazy("components.safety.stage", "realign_stage")
realign_inputs = Lazy("components.safety.stage", "realign_inputs")
prune_stage = Lazy("components.safety.stage", "prune_stage")
prune_inputs = Lazy("components.safety.stage", "prune_inputs")
evaluate_stage = Lazy("components.evaluate.stage", "evaluate_stage")
evaluate_inputs = Lazy("components.evaluate.stage", "evaluate_inputs")
report_stage = Lazy("components.evaluate.stage", "report_stage")
report_inputs = Lazy("components.evaluate.stage", "report_inputs")
gate_stage = Lazy("components.registry.stage", "gate_stage")
register_stage = Lazy("components.registry.stage", "register_stage")
pipeline_candidate = Lazy("components.registry.lineage", "pipeline_candidate")
search_candidate = Lazy("components.registry.lineage", "search_candidate")
tracked_search_stage = Lazy("components.tracking", "tracked_search_stage")

RUN = "<workspace>/<profile>"

# A stage's paths, given the workspace to name them in (the run's, or dvc.yaml's `outputs/${profile}`) and the params.
Paths = Callable[[Workspace, Params], list[Path]]
# A stage's key inputs, by name, in that workspace for the params: the component's `<stage>_inputs`.
Inputs = Callable[[Workspace, Params], StageInputs]


def nothing(ws: Workspace, params: Params) -> list[Path]:
    return []


def after_validation(ws: Workspace, params: Params) -> list[Path]:
    """validation/ is in no key: the stages that train or evaluate on curated data refuse data that has not passed
    it, so they run after validate."""
    return [ws.validation]


@dataclass(frozen=True)
class Stage:
    """One stage: `reads` and `writes` in words for the listing; `inputs` (what its key hashes, by name), `after`
    (upstream outputs it must run after without hashing them), `outputs`, `param_keys` (dotted params.yaml keys) and
    `key_module` (the module that builds its StageCache: the key covers that module's code and the code it
    imports)."""

    name: str
    summary: str
    reads: str
    writes: str
    param_keys: tuple[str, ...]
    run: Callable[[Params], StageResult]
    key_module: str
    inputs: Inputs
    outputs: Paths
    after: Paths = nothing
    holds_models: bool = False  # loads model weights to compute with: run apart in a pipeline run

    def input_paths(self, ws: Workspace, params: Params) -> list[Path]:
        """Every path `inputs` names, in order, once each (absent inputs left out)."""
        paths: list[Path] = []
        for value in self.inputs(ws, params).values():
            paths += [Path(p) for p in (value if isinstance(value, list | tuple) else [value]) if p is not None]
        return list(dict.fromkeys(paths))

    def dependencies(self, ws: Workspace, params: Params) -> list[Path]:
        """What the stage reads from upstream: its inputs, then what it runs after."""
        return list(dict.fromkeys([*self.input_paths(ws, params), *self.after(ws, params)]))


def no_inputs(ws: Workspace, params: Params) -> StageInputs:
    return {}


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
        base_model_inputs,
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
        sources_inputs,
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
        curate_inputs,
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
        validate_inputs,
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
        pairs_inputs,
        outputs=lambda ws, p: [ws.pairs],
        after=after_validation,
        holds_models=True,
    ),
)


def train(params: Params, name: str) -> Stage:
    job = params.train.jobs[name]
    init = ModelRef.parse(job.init).folder(params.ws).relative_to(params.ws.run_dir)
    return Stage(
        f"train-{name}",
        f"{job.method} on {', '.join(job.datasets)} from {job.init}: one per entry of train.jobs (cpt, sft, dpo or "
        "orpo with a LoRA adapter, TRL trainers); resumes from its last checkpoint; merges the adapter into a full "
        "model directory",
        f"{RUN}/{init}/, the train/val splits of {', '.join(job.datasets)}",
        f"{RUN}/models/{name}/ (merged model), train/{name}/ (checkpoints, adapter)",
        (f"train.jobs.{name}",),
        partial(train_stage, name=name),
        "components.train.job",
        partial(train_inputs, name=name),
        outputs=lambda ws, p: [ws.job_model(name), ws.job_work(name)],
        after=after_validation,
        holds_models=True,
    )


def merge(params: Params, name: str) -> Stage:
    spec = params.merge.recipes[name]
    models = ", ".join(entry["model"] for entry in spec.models)
    return Stage(
        f"merge-{name}",
        f"{spec.merge_method} of {models} (base: {spec.base_model}), streamed tensor by "
        "tensor; checks architecture, tensors, tokenizer and shared base first; writes a merge card",
        f"{RUN}/models/{{{models}}}/",
        f"{RUN}/merged/{name}/",
        (f"merge.recipes.{name}", "merge.max_relative_delta"),
        partial(merge_stage, name=name),
        "components.merge.stage",
        partial(merge_inputs, name=name),
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
        realign_inputs,
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
        prune_inputs,
        outputs=lambda ws, p: [ws.pruned],
        holds_models=True,
    )


EVALUATE = Stage(
    "evaluate",
    "Held-out evaluation of every candidate (base, each trained model): domain multiple "
    "choice, math exact match, domain perplexity, harmful score and over-refusal with Wilson intervals.",
    f"{RUN}/base_model/, models/*/, merged/*/, safety/*/, the test splits of data/curated/ (the val splits with evaluate.split=val)",
    f"{RUN}/eval/ (eval-val/ for val) {{<candidate>/{{metrics.json, samples.jsonl, weights.json}}, summary.json, summary.md}}",
    ("seed", "evaluate"),
    evaluate_stage,
    "components.evaluate.evaluation",
    evaluate_inputs,
    outputs=lambda ws, p: [ws.evaluation(p.evaluate.split)],
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
    report_inputs,
    outputs=lambda ws, p: [ws.report],
    after=lambda ws, p: [ws.evaluation(p.evaluate.split)],
)


def shipped_candidate(ws: Workspace, params: Params) -> list[Path]:
    """What the pipeline's gate and register stages read of registry.candidate: its model and the evaluation."""
    return [ModelRef.parse(params.registry.candidate).folder(ws), ws.eval]


def chosen_trial(ws: Workspace, params: Params) -> list[Path]:
    """The search's folder holds its chosen trial's model and evaluation."""
    return [ws.search.root]


def ship(
    params: Params,
    repo: Path,
    shipped: Callable[[Params], Shipped],
    candidate: Paths,
    shipping: Callable[[Workspace], Shipping],
    prefix: str = "",
) -> list[Stage]:
    """The gate and register stages of a candidate: the pipeline's (no prefix) or the search's chosen trial.

    Neither stage is cached (they judge against the registry's champion): they hash no inputs, and run after the
    `candidate` paths they read; `shipping` names the folders they write.
    """
    cfg = params.registry
    what = "the recipe search's chosen trial" if prefix else cfg.candidate
    folder = f"{RUN}/{prefix.replace('-', '/')}"
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
            no_inputs,
            outputs=lambda ws, p: [shipping(ws).gate],
            after=candidate,
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
            no_inputs,
            outputs=lambda ws, p: [shipping(ws).registry],
            after=lambda ws, p: [*candidate(ws, p), shipping(ws).gate],
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
    if params.registry.candidate and params.evaluate.split == "test":  # a validation run ships nothing
        stages += ship(params, repo, pipeline_candidate, shipped_candidate, lambda ws: ws.shipping)
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


def search_references(params: Params) -> list[str]:
    """The models the search merges, with base: it evaluates each as a reference, on validation under
    eval-val/<model>/ and, after the choice, on test under eval/<model>/."""
    return ["base", *dict.fromkeys(search_models(params))]


def search(params: Params) -> Stage:
    cfg = params.search
    return Stage(
        "search",
        f"Optuna search over merge recipes of {', '.join(cfg.models)} ({', '.join(cfg.space.methods)}), "
        f"with SOMF and Antidote strengths, up to {cfg.trials} trials; objectives {', '.join(cfg.objectives)}; "
        "the Pareto front and the recipe search.select picks",
        "base_model/, models/<expert>/ (and the aligned model), data/curated/, data/pairs/harmful_compliance/",
        f"{RUN}/search/{{study.db, trials/, trials.json, eval/, pareto_front.png, chosen.json, "
        "chosen_recipe.yaml, report.md}",
        ("search", "safety", "evaluate"),
        tracked_search_stage,
        "components.search.stage",
        no_inputs,  # each trial's steps are cached by their own keys (components/search/trial.py)
        outputs=lambda ws, p: [
            ws.search.root,
            *(ws.evaluation(split) / model for model in search_references(p) for split in ("val", "test")),
        ],
        # the experts (and the aligned model) it merges, the data it evaluates and calibrates on, and validation/
        after=lambda ws, p: [
            *(ModelRef.parse(model).folder(ws) for model in search_references(p)),
            ws.curated,
            ws.harmful_compliance,
            ws.validation,
        ],
    )


def search_stages(params: Params, repo: Path = Path(".")) -> list[Stage]:
    """What the recipe-search flow runs: data, the jobs the search needs (with their inits), the search, and,
    with search.register_chosen, the gate and register stages of the chosen trial."""
    needed = with_inits(params, search_models(params))
    stages = list(DATA) + [train(params, name) for name in params.train.jobs if name in needed]
    stages.append(search(params))
    if params.search.register_chosen:
        stages += ship(params, repo, search_candidate, chosen_trial, lambda ws: ws.search.shipping, "search-")
    return stages


def describe(stages: list[Stage] | tuple[Stage, ...], timings: Path | None = None) -> str:
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
    return "\n".join(lines)
