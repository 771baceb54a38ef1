"""A model's name in this pipeline, parsed once: what it is, where its folder is, what it was made from.

The grammar (the names params.yaml, the evaluation table and the registry's lineage use):

    base                    the base model
    <job>                   a train job's model (train.jobs.<job>)
    merge-<recipe>          a merge recipe's model (merge.recipes.<recipe>); merge-trial-<n> in a search's lineage
    realigned-<model>       <model> after SOMF realignment (safety.realign)
    pruned-<model>          <model> after Antidote pruning (safety.prune)
    trial-<n>               the final model of recipe-search trial n
    models:/<name>@<alias>  a registered version, by alias or number (models:/<name>/<version>)

Every other module asks a `ModelRef`; none builds or splits these strings itself.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING

from components.errors import ParamsError
from components.workspace import Workspace

if TYPE_CHECKING:
    from components.config import Params


class Kind(str, Enum):
    BASE = "base"
    JOB = "job"
    MERGE = "merge"
    REALIGNED = "realigned"
    PRUNED = "pruned"
    TRIAL = "trial"
    REGISTRY = "registry"


_PREFIXES = {Kind.MERGE: "merge-", Kind.REALIGNED: "realigned-", Kind.PRUNED: "pruned-"}
_TRIAL = re.compile(r"trial-(\d+)")
_LABELS = {
    Kind.BASE: "base model",
    Kind.JOB: "train job {}",
    Kind.MERGE: "merge {}",
    Kind.TRIAL: "search trial {}",
    Kind.REGISTRY: "registered {}",
}


@dataclass(frozen=True)
class ModelRef:
    """`kind` and `ident`: the job, recipe, trial number or registry URI; `of` is the model a safety stage changed."""

    kind: Kind
    ident: str = ""
    of: ModelRef | None = None

    @classmethod
    def parse(cls, name: str) -> ModelRef:
        if not name:
            raise ParamsError("an empty model name")
        if name == "base":
            return BASE
        if name.startswith("models:/"):
            return cls(Kind.REGISTRY, name)
        for kind, prefix in _PREFIXES.items():
            if name.startswith(prefix) and len(name) > len(prefix):
                rest = name.removeprefix(prefix)
                return cls(kind, rest) if kind is Kind.MERGE else cls(kind, of=cls.parse(rest))
        if _TRIAL.fullmatch(name):
            return cls(Kind.TRIAL, name.removeprefix("trial-"))
        return cls(Kind.JOB, name)

    @classmethod
    def job(cls, name: str) -> ModelRef:
        return cls(Kind.JOB, name)

    @classmethod
    def merge(cls, recipe: str) -> ModelRef:
        return cls(Kind.MERGE, recipe)

    @classmethod
    def trial(cls, number: int | str) -> ModelRef:
        return cls(Kind.TRIAL, str(number))

    def realigned(self) -> ModelRef:
        return ModelRef(Kind.REALIGNED, of=self)

    def pruned(self) -> ModelRef:
        return ModelRef(Kind.PRUNED, of=self)

    def __str__(self) -> str:
        match self.kind:
            case Kind.BASE:
                return "base"
            case Kind.REALIGNED | Kind.PRUNED:
                return _PREFIXES[self.kind] + str(self.of)
            case Kind.MERGE:
                return _PREFIXES[self.kind] + self.ident
            case Kind.TRIAL:
                return f"trial-{self.ident}"
        return self.ident

    @property
    def label(self) -> str:
        """How a person reads it: 'merge ties, realigned (SOMF)'."""
        if self.kind is Kind.REALIGNED:
            return f"{self.of.label}, realigned (SOMF)"
        if self.kind is Kind.PRUNED:
            return f"{self.of.label}, pruned (Antidote)"
        return _LABELS[self.kind].format(self.ident)

    @property
    def registered(self) -> tuple[str, str | None, str | None]:
        """A registry reference's (model name, alias, version): models:/post-train@champion, models:/post-train/3."""
        if self.kind is not Kind.REGISTRY:
            raise ParamsError(f"{self}: not a registry reference (models:/<name>@<alias> or models:/<name>/<version>)")
        name, at, alias = self.ident.removeprefix("models:/").partition("@")
        if at:
            return name, alias or None, None
        name, _, version = name.rpartition("/")
        return name, None, version or None

    @property
    def is_safety(self) -> bool:
        return self.kind in (Kind.REALIGNED, Kind.PRUNED)

    @property
    def recipe(self) -> str | None:
        """The merge recipe this model comes from, through any safety stages (realigned-merge-ties -> ties)."""
        if self.kind is Kind.MERGE:
            return self.ident
        return self.of.recipe if self.of is not None else None

    def folder(self, ws: Workspace) -> Path:
        """Where the pipeline keeps this model (a safety stage has one output folder, whatever it was run on)."""
        match self.kind:
            case Kind.BASE:
                return ws.base_model
            case Kind.JOB:
                return ws.job_model(self.ident)
            case Kind.MERGE:
                return ws.merged(self.ident)
            case Kind.REALIGNED:
                return ws.realigned
            case Kind.PRUNED:
                return ws.pruned
        raise ParamsError(
            f"{self}: a {self.kind.value} model has no folder of its own in the workspace "
            "(a trial's is in search/chosen.json; a registered one is downloaded)"
        )

    def parents(self, params: Params) -> list[ModelRef]:
        """The models this one was made from, as params.yaml says (realigned, pruned: the aligned model, then the
        model)."""
        match self.kind:
            case Kind.JOB:
                return [ModelRef.parse(params.train.jobs[self.ident].init)]
            case Kind.MERGE:
                return [ModelRef.parse(entry["model"]) for entry in params.merge.recipes[self.ident].models]
            case Kind.REALIGNED:
                return [ModelRef.parse(params.safety.realign.aligned), self.of]
            case Kind.PRUNED:
                return [ModelRef.parse(params.safety.prune.aligned), self.of]
        return []

    def check(self, params: Params, shipped: bool = False) -> None:
        """ValueError unless params.yaml defines this model; `shipped` also accepts its realigned/pruned models."""
        known = pipeline_models(params, shipped)
        if self not in known:
            what = "a candidate" if shipped else "a model"
            raise ValueError(
                f"{str(self)!r} is not {what} of this pipeline (known: {', '.join(sorted(map(str, known)))})"
            )


BASE = ModelRef(Kind.BASE)


def pipeline_models(params: Params, shipped: bool = True) -> list[ModelRef]:
    """Every model params.yaml defines, in pipeline order: base, jobs, merges, and (shipped) realigned and pruned."""
    models = [BASE, *map(ModelRef.job, params.train.jobs), *map(ModelRef.merge, params.merge.recipes)]
    if shipped:
        for name, make in (
            (params.safety.realign.model, ModelRef.realigned),
            (params.safety.prune.model, ModelRef.pruned),
        ):
            if name is not None:
                models.append(make(ModelRef.parse(name)))
    return models
