"""What every stage returns, and the stage card that lets a stage skip work it has already done.

A stage writes `stage.json` into its output directory, with a key hashed over everything that
determines the output (inputs' content, parameters, and the source code of the modules that compute it). Running the stage
again with the same key returns the card instead of recomputing. DVC caches the same outputs by
its own hashes when the pipeline runs through `dvc repro`; the key here serves the CLI and the flows.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from components.hashing import file_sha256, json_sha256

STAGE_CARD = "stage.json"


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


def code_digest(*module_names: str) -> str:
    """Hash of the source files of the named modules: a change to the code that computes an output rebuilds it."""
    return json_sha256([file_sha256(Path(importlib.util.find_spec(name).origin)) for name in module_names])


def read_card(out_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((Path(out_dir) / STAGE_CARD).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def write_card(out_dir: Path, card: dict[str, Any]) -> None:
    (Path(out_dir) / STAGE_CARD).write_text(json.dumps(card, indent=2, sort_keys=True, default=str) + "\n")


def up_to_date(out_dir: Path, key: str) -> dict[str, Any] | None:
    """The card of `out_dir` if it was built with `key`, else None."""
    card = read_card(out_dir)
    return card if card is not None and card.get("key") == key else None
