"""Reading a user's YAML file (params, merge recipes) with errors that name the file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from components.errors import PipelineError


class _UniqueKeyLoader(yaml.SafeLoader):
    """safe_load that refuses a key written twice in one mapping (plain YAML keeps the last, silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise DuplicateKey(f"line {key_node.start_mark.line + 1}: key {key!r} is also on line {seen[key]}")
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep)


class DuplicateKey(yaml.YAMLError):
    pass


def read_yaml(path: Path, what: str, error: type[PipelineError]) -> Any:
    """The parsed file; `error` naming the path when it is missing ("no such <what>"), not valid YAML, or writes a
    key twice in one mapping."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise error(f"{path}: no such {what}") from None
    except UnicodeDecodeError as err:
        raise error(f"{path}: not UTF-8 ({err.reason})") from None
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader subclass)
    except DuplicateKey as err:
        raise error(f"{path}: {err}") from None
    except yaml.YAMLError as err:
        raise error(f"{path}: not valid YAML: {err}") from None
