"""What every stage returns, and the one helper that lets a stage skip work it has already done.

A stage writes `stage.json` into its output directory with a key hashed over everything that determines
the output: the content of its inputs (data and weights only, never cards or timings), its parameters, and
the source of the code that computes it. That code is found, not listed: the stage's module and every
`components` module it imports, transitively (`code_digest`). Running the stage again with the same key
returns the card instead of recomputing. DVC caches the same outputs by its own hashes under `dvc repro`.

    cache = StageCache("merge-ties", out_dir, __name__, params=spec, inputs={"base": base_dir, ...})
    if (done := cache.result({"model": out_dir})) is not None:
        return done
    ... build into atomic_dir(out_dir) as tmp ...
    cache.write_card(tmp, metrics)
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from components.hashing import content_sha256, file_sha256, json_sha256
from components.redact import redact_tree

STAGE_CARD = "stage.json"

# Modules whose source does not change what a stage computes: parameter values reach the key through `params`
# (so the schemas are left out: components.config, components.schema and every components.<area>.config), and
# these others only name paths, write atomically, hash or report errors.
INERT_MODULES = frozenset(
    {
        "components.config",
        "components.schema",
        "components.errors",
        "components.atomic",
        "components.stage",
        "components.hashing",
        "components.progress",
        "components.tracking",
        "components.workspace",
        "components.yamlfile",
        "components.model.ref",
    }
)


# What a stage's key hashes by content, by name: a file or folder, a list of them, or None (absent). Each stage's
# component states its own once (`<stage>_inputs` in components/<area>/stage.py), its entry reads them from there and
# so does the stage table (flows/stages.py); the card records them, and a test over a whole run compares the two.
StageInputs = Mapping[str, Path | list[Path] | None]


@dataclass(frozen=True)
class StageResult:
    """Output paths and metrics of one stage run; `cached` is true when the stage found its output up to date.

    `artifacts` are files worth keeping beside the run (reports, tables) that tracking logs as they are;
    `datasets` are the data files the stage produced or consumed, which tracking logs as MLflow dataset
    inputs with their DVC-compatible md5 as digest, so that every model traces back to its exact data.
    """

    outputs: dict[str, Path]
    metrics: dict[str, float] = field(default_factory=dict)
    cached: bool = False
    artifacts: tuple[Path, ...] = ()
    datasets: dict[str, Path] = field(default_factory=dict)


def _module_file(name: str) -> Path | None:
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    return Path(spec.origin) if spec is not None and spec.origin and spec.origin.endswith(".py") else None


def _imported(name: str, path: Path) -> set[str]:
    """The `components` modules a module's source imports (at top level or inside functions)."""
    found: set[str] = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:  # relative import
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                module = f"{base}.{module}" if module else base
            found.add(module)
            found |= {f"{module}.{alias.name}" for alias in node.names}  # `from pkg import submodule`
    return {m for m in found if m.split(".")[0] == "components" and _module_file(m) is not None}


def is_inert(name: str) -> bool:
    """A module whose source is left out of the code a stage's key covers (INERT_MODULES, or an area's schema)."""
    return name in INERT_MODULES or (name.startswith("components.") and name.endswith(".config"))


@functools.cache
def code_modules(root: str) -> tuple[str, ...]:
    """`root` and every `components` module it imports, transitively, except the inert ones; sorted."""
    seen, todo = set(), [root]
    while todo:
        name = todo.pop()
        if name in seen or (is_inert(name) and name != root):
            continue
        seen.add(name)
        todo += sorted(_imported(name, _module_file(name)))
    return tuple(sorted(seen))


def code_files(root: str) -> tuple[Path, ...]:
    """The source files of `code_modules(root)`: what dvc.yaml lists as a stage's code dependencies."""
    return tuple(_module_file(name) for name in code_modules(root))


def code_digest(root: str) -> str:
    """Hash of the source of `root` and the code it depends on: a change to that code rebuilds the output."""
    return json_sha256({name: file_sha256(_module_file(name)) for name in code_modules(root)})


def read_card(out_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((Path(out_dir) / STAGE_CARD).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _paths(path: Path | list[Path] | None) -> str | list[str] | None:
    """An input as the card records it: which paths the key hashed (absolute, resolved), not their content."""
    if isinstance(path, list | tuple):
        return [str(Path(p).resolve()) for p in path]
    return None if path is None else str(Path(path).resolve())


def _plain(value: Any) -> Any:
    return value.model_dump(mode="json") if isinstance(value, BaseModel) else value


class StageCache:
    """The key of one stage output, and its card: built from the stage's code, parameters and input contents.

    `inputs` maps a name to a file or folder (hashed by content; a missing path hashes as None) or to a list
    of such paths; `params` is any JSON-able value or pydantic model; `values` are other plain values (a seed).
    """

    def __init__(
        self,
        stage: str,
        out_dir: Path,
        module: str,
        params: Any = None,
        inputs: StageInputs | None = None,
        **values: Any,
    ):
        self.stage, self.out_dir = stage, Path(out_dir)
        self.inputs = {name: _paths(path) for name, path in (inputs or {}).items()}

        def content(path: Path | list[Path] | None) -> Any:
            if isinstance(path, list | tuple):
                return [content(p) for p in path]
            return content_sha256(Path(path)) if path is not None and Path(path).exists() else None

        self.key = json_sha256(
            {
                "code": code_digest(module),
                "params": _plain(params),
                "inputs": {name: content(path) for name, path in (inputs or {}).items()},
                **{name: _plain(value) for name, value in values.items()},
            }
        )

    def card(self) -> dict[str, Any] | None:
        """The output's card if it was built with this key, else None."""
        card = read_card(self.out_dir)
        return card if card is not None and card.get("key") == self.key else None

    def result(self, outputs: dict[str, Path], artifacts: tuple[Path, ...] = ()) -> StageResult | None:
        """The cached StageResult when the output is up to date, else None."""
        card = self.card()
        if card is None:
            return None
        return StageResult(outputs=outputs, metrics=card.get("metrics", {}), cached=True, artifacts=artifacts)

    def write_card(self, folder: Path, metrics: dict[str, float], **fields: Any) -> None:
        """Write stage.json into `folder` (the output, or its temporary folder before the rename)."""
        card = {"stage": self.stage, "key": self.key, "metrics": metrics, "inputs": self.inputs, **redact_tree(fields)}
        (Path(folder) / STAGE_CARD).write_text(json.dumps(card, indent=2, sort_keys=True, default=str) + "\n")
