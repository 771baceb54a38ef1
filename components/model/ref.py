"""A model's name in this pipeline, parsed once: what it is, where its folder is, what it was made from.

The grammar (the names params.yaml, the evaluation table and the registry's lineage use):

    base                    the base model
    <job>                   a train job's model (train.jobs.<job>)
    merge-<recipe>          a merge recipe's model (merge.recipes.<recipe>); merge-trial-<n> in a search's lineage
    realigned-<model>       <model> after SOMF realignment (safety.realign)
    pruned-<model>          <model> after Antidote pruning (safety.prune)
    trial-<n>               the final model of recipe-search trial n
    models:/<name>@<alias>  a registered version, by alias or number (models:/<name>/<version>)

Every other module asks a `ModelRef`; none builds or splits these strings itself. Which of these models a given
params.yaml defines, and what each was made from, is the params' to say: `pipeline_models` and `model_parents` in
components/config.py.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from components.errors import ParamsError
from components.workspace import Workspace


class ModelKind(str, Enum):
    BASE = "base"
    JOB = "job"
    MERGE = "merge"
    REALIGNED = "realigned"
    PRUNED = "pruned"
    TRIAL = "trial"
    REGISTRY = "registry"


_PREFIXES = {ModelKind.MERGE: "merge-", ModelKind.REALIGNED: "realigned-", ModelKind.PRUNED: "pruned-"}
_TRIAL = re.compile(r"trial-(\d+)")
_LABELS = {
    ModelKind.BASE: "base model",
    ModelKind.JOB: "train job {}",
    ModelKind.MERGE: "merge {}",
    ModelKind.TRIAL: "search trial {}",
    ModelKind.REGISTRY: "registered {}",
}


@dataclass(frozen=True)
class ModelRef:
    """`kind` and `ident`: the job, recipe, trial number or registry URI; `of` is the model a safety stage changed."""

    kind: ModelKind
    ident: str = ""
    of: ModelRef | None = None

    @classmethod
    def parse(cls, name: str) -> ModelRef:
        if not name:
            raise ParamsError("an empty model name")
        if name == "base":
            return BASE
        if name.startswith("models:/"):
            return cls(ModelKind.REGISTRY, name)
        for kind, prefix in _PREFIXES.items():
            if name.startswith(prefix) and len(name) > len(prefix):
                rest = name.removeprefix(prefix)
                return cls(kind, rest) if kind is ModelKind.MERGE else cls(kind, of=cls.parse(rest))
        if _TRIAL.fullmatch(name):
            return cls(ModelKind.TRIAL, name.removeprefix("trial-"))
        return cls(ModelKind.JOB, name)

    @classmethod
    def job(cls, name: str) -> ModelRef:
        return cls(ModelKind.JOB, name)

    @classmethod
    def merge(cls, recipe: str) -> ModelRef:
        return cls(ModelKind.MERGE, recipe)

    @classmethod
    def trial(cls, number: int | str) -> ModelRef:
        return cls(ModelKind.TRIAL, str(number))

    def realigned(self) -> ModelRef:
        return ModelRef(ModelKind.REALIGNED, of=self)

    def pruned(self) -> ModelRef:
        return ModelRef(ModelKind.PRUNED, of=self)

    def __str__(self) -> str:
        match self.kind:
            case ModelKind.BASE:
                return "base"
            case ModelKind.REALIGNED | ModelKind.PRUNED:
                return _PREFIXES[self.kind] + str(self.of)
            case ModelKind.MERGE:
                return _PREFIXES[self.kind] + self.ident
            case ModelKind.TRIAL:
                return f"trial-{self.ident}"
        return self.ident

    @property
    def label(self) -> str:
        """How a person reads it: 'merge ties, realigned (SOMF)'."""
        if self.kind is ModelKind.REALIGNED:
            return f"{self.of.label}, realigned (SOMF)"
        if self.kind is ModelKind.PRUNED:
            return f"{self.of.label}, pruned (Antidote)"
        return _LABELS[self.kind].format(self.ident)

    @property
    def registered(self) -> tuple[str, str | None, str | None]:
        """A registry reference's (model name, alias, version): models:/post-train@champion, models:/post-train/3."""
        if self.kind is not ModelKind.REGISTRY:
            raise ParamsError(f"{self}: not a registry reference (models:/<name>@<alias> or models:/<name>/<version>)")
        name, at, alias = self.ident.removeprefix("models:/").partition("@")
        if at:
            return name, alias or None, None
        name, _, version = name.rpartition("/")
        return name, None, version or None

    @property
    def is_safety(self) -> bool:
        return self.kind in (ModelKind.REALIGNED, ModelKind.PRUNED)

    @property
    def recipe(self) -> str | None:
        """The merge recipe this model comes from, through any safety stages (realigned-merge-ties -> ties)."""
        if self.kind is ModelKind.MERGE:
            return self.ident
        return self.of.recipe if self.of is not None else None

    def folder(self, ws: Workspace) -> Path:
        """Where the pipeline keeps this model (a safety stage has one output folder, whatever it was run on)."""
        match self.kind:
            case ModelKind.BASE:
                return ws.base_model
            case ModelKind.JOB:
                return ws.job_model(self.ident)
            case ModelKind.MERGE:
                return ws.merged(self.ident)
            case ModelKind.REALIGNED:
                return ws.realigned
            case ModelKind.PRUNED:
                return ws.pruned
        raise ParamsError(
            f"{self}: a {self.kind.value} model has no folder of its own in the workspace "
            "(a trial's is in search/chosen.json; a registered one is downloaded)"
        )


BASE = ModelRef(ModelKind.BASE)
