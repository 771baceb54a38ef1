"""params.yaml read into one typed `Params`: the loader, the profile merge, and the checks across areas.

params.yaml holds `profile` (the active one), `common` (every profile's defaults) and `profiles` (each deep-merged
over `common`). Each area's schema lives beside the area (`components/<area>/config.py`); this module composes them,
checks what one area's keys say of another's (a realigned model must be a model of the pipeline, a gate's reference
must be evaluated), and turns pydantic's errors into messages that name the key where the user wrote it. Every schema
forbids unknown keys, so a typo is an error, not a silently ignored setting. Relative paths are relative to
params.yaml's folder.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError, model_validator

from components.data.config import DataConfig
from components.errors import ParamsError
from components.evaluate.config import EvaluateConfig
from components.hashing import json_sha256
from components.merge.config import MergeConfig
from components.model.config import SOURCE_TAGS, BaseModelConfig
from components.model.ref import BASE, ModelKind, ModelRef
from components.registry.config import RegistryConfig
from components.safety.config import SafetyConfig
from components.schema import RelPath, StrictModel
from components.search.config import SearchConfig
from components.train.config import JOB_TAGS, TrainConfig
from components.workspace import Workspace
from components.yamlfile import read_yaml

DEFAULT_PARAMS = Path("params.yaml")


class TrackingConfig(StrictModel):
    """MLflow: the experiment every run of this pipeline goes to. The URI comes from MLFLOW_TRACKING_URI,
    else a SQLite store under the workspace (see components.tracking)."""

    experiment: str = Field(default="post-train", min_length=1)


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
        for key, name in (
            ("prune.model", self.safety.prune.model),
            ("prune.aligned", self.safety.prune.aligned if self.safety.prune.model else None),
            ("realign.model", self.safety.realign.model),
            ("realign.aligned", self.safety.realign.aligned if self.safety.realign.model else None),
        ):
            if name is not None:
                try:
                    check_model(ModelRef.parse(name), self, shipped=False)
                except ValueError as err:
                    raise ValueError(f"safety.{key}: {err}") from None
        if self.registry.candidate is not None:
            try:
                check_model(ModelRef.parse(self.registry.candidate), self, shipped=True)
            except ValueError as err:
                raise ValueError(f"registry.candidate: {err}") from None
        for metric, gate in self.registry.gates.items():
            if gate.relative is not None:
                try:
                    check_model(ModelRef.parse(gate.relative.of), self, shipped=True)
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
        chosen = self.evaluate.candidates
        if chosen is None:
            return
        for index, name in enumerate(chosen):
            try:
                ref = ModelRef.parse(name)
                if ref.kind in (ModelKind.REALIGNED, ModelKind.PRUNED):
                    check_model(
                        ref.of, self
                    )  # its stage may be off (`safety.realign.model: null`): skipped, not an error
                else:
                    check_model(ref, self, shipped=True)
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


def check_model(ref: ModelRef, params: Params, shipped: bool = False) -> None:
    """ValueError unless params.yaml defines this model; `shipped` also accepts its realigned/pruned models."""
    known = pipeline_models(params, shipped)
    if ref not in known:
        what = "a candidate" if shipped else "a model"
        raise ValueError(f"{str(ref)!r} is not {what} of this pipeline (known: {', '.join(sorted(map(str, known)))})")


def model_parents(ref: ModelRef, params: Params) -> list[ModelRef]:
    """The models this one was made from, as params.yaml says (realigned, pruned: the aligned model, then the
    model)."""
    match ref.kind:
        case ModelKind.JOB:
            return [ModelRef.parse(params.train.jobs[ref.ident].init)]
        case ModelKind.MERGE:
            return [ModelRef.parse(entry["model"]) for entry in params.merge.recipes[ref.ident].models]
        case ModelKind.REALIGNED:
            return [ModelRef.parse(params.safety.realign.aligned), ref.of]
        case ModelKind.PRUNED:
            return [ModelRef.parse(params.safety.prune.aligned), ref.of]
    return []


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


def _user_loc(loc: tuple[str, ...]) -> tuple[str, ...]:
    """An error's location as the user wrote it: pydantic puts a union's tag (base_model.random, train.jobs.x.sft)
    into the path; the user never wrote it as a key."""
    if loc[:1] == ("base_model",) and len(loc) > 1 and loc[1] in SOURCE_TAGS:
        return loc[:1] + loc[2:]
    if loc[:2] == ("train", "jobs") and len(loc) > 3 and loc[3] in JOB_TAGS:
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
