"""Reading a user's YAML file (params, merge recipes) with errors that name the file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from components.errors import PipelineError


def read_yaml(path: Path, what: str, error: type[PipelineError]) -> Any:
    """The parsed file; `error` naming the path when it is missing ("no such <what>") or not valid YAML."""
    try:
        return yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise error(f"{path}: no such {what}") from None
    except yaml.YAMLError as err:
        raise error(f"{path}: not valid YAML: {err}") from None
