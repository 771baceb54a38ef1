"""Lazy reading and sharded writing of safetensors, so a merge holds one tensor per model at a time."""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from components.errors import InputError

_LAYER = re.compile(r"\.layers\.(\d+)\.")


def layer_of(name: str) -> int | None:
    """The transformer block a tensor belongs to (`model.layers.7.mlp...` -> 7), None outside the blocks."""
    match = _LAYER.search(name)
    return int(match.group(1)) if match else None


def _open(file: Path):
    try:
        return safe_open(file, "pt")
    except Exception as err:  # a truncated header, not safetensors at all
        raise InputError(f"{file}: not a readable safetensors file ({err})") from None


class LazyModel:
    """The safetensors weights of a model directory, read one tensor at a time."""

    def __init__(self, path: Path):
        self.path = Path(path)
        index = self.path / "model.safetensors.index.json"
        if index.is_file():
            weight_map = json.loads(index.read_text())["weight_map"]
        elif (self.path / "model.safetensors").is_file():
            weight_map = {name: "model.safetensors" for name in _open(self.path / "model.safetensors").keys()}  # noqa: SIM118
        else:
            raise InputError(f"{self.path}: no safetensors weights (model.safetensors or an index)")
        self.files = weight_map
        self._handles: dict[str, object] = {}

    def names(self) -> list[str]:
        return list(self.files)

    def _handle(self, name: str):
        file = self.files[name]
        if file not in self._handles:
            self._handles[file] = _open(self.path / file)
        return self._handles[file]

    def shape(self, name: str) -> list[int]:
        return list(self._handle(name).get_slice(name).get_shape())

    def get(self, name: str) -> torch.Tensor:
        try:
            return self._handle(name).get_tensor(name)
        except InputError:
            raise
        except Exception as err:  # safetensors raises its own error type for a truncated or corrupt file
            raise InputError(f"{self.path / self.files[name]}: tensor {name!r} cannot be read ({err})") from None


class ShardWriter:
    """Writes tensors into safetensors shards of at most `max_bytes`, with an index when there are several."""

    def __init__(self, out_dir: Path, max_bytes: int = 2 << 30):
        self.out_dir, self.max_bytes = Path(out_dir), max_bytes
        self.pending: dict[str, torch.Tensor] = {}
        self.pending_bytes = 0
        self.shards: list[list[str]] = []

    def add(self, name: str, tensor: torch.Tensor) -> None:
        self.pending[name] = tensor.contiguous()
        self.pending_bytes += tensor.numel() * tensor.element_size()
        if self.pending_bytes >= self.max_bytes:
            self._flush()

    def _flush(self) -> None:
        if self.pending:
            save_file(
                self.pending, str(self.out_dir / f"shard-{len(self.shards)}.safetensors"), metadata={"format": "pt"}
            )
            self.shards.append(list(self.pending))
            self.pending, self.pending_bytes = {}, 0

    def close(self) -> None:
        self._flush()
        if len(self.shards) == 1:
            (self.out_dir / "shard-0.safetensors").rename(self.out_dir / "model.safetensors")
            return
        weight_map = {}
        for i, names in enumerate(self.shards):
            final = f"model-{i + 1:05d}-of-{len(self.shards):05d}.safetensors"
            (self.out_dir / f"shard-{i}.safetensors").rename(self.out_dir / final)
            weight_map |= {name: final for name in names}
        (self.out_dir / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {}, "weight_map": weight_map}, indent=2) + "\n"
        )
