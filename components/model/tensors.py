"""Lazy reading and sharded writing of safetensors, so a merge holds one tensor per model at a time."""

from __future__ import annotations

import json
import math
import re
import struct
from pathlib import Path

import torch
from safetensors import safe_open

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


# safetensors' names for the dtypes a merge writes
SAFETENSORS_DTYPES = {
    torch.float32: "F32",
    torch.bfloat16: "BF16",
    torch.float16: "F16",
    torch.float64: "F64",
}


class ShardWriter:
    """Writes tensors into safetensors shards of at most `max_bytes`, with an index when there are several, each
    tensor's bytes straight to its file as it comes.

    The layout (every tensor's name and shape, and the dtype) is known before the first tensor: a merge's output has
    the reference model's tensors. So each shard's header is written when the shard opens, and nothing is held but
    the tensor being written (`safetensors.save_file` needs the whole shard in memory). Tensors must come in the
    layout's order.
    """

    def __init__(
        self, out_dir: Path, layout: list[tuple[str, list[int]]], dtype: torch.dtype, max_bytes: int = 2 << 30
    ):
        self.out_dir, self.dtype = Path(out_dir), dtype
        self.element_size = torch.empty(0, dtype=dtype).element_size()
        self.shards: list[list[tuple[str, list[int]]]] = [[]]
        shard_bytes = 0
        for name, shape in layout:
            nbytes = math.prod(shape) * self.element_size
            if self.shards[-1] and shard_bytes + nbytes > max_bytes:
                self.shards.append([])
                shard_bytes = 0
            self.shards[-1].append((name, shape))
            shard_bytes += nbytes
        self.expected = [name for name, _ in layout]
        self.written = 0
        self.file = None
        self.shard = -1
        self.remaining = 0  # tensors the open shard still expects

    def _path(self, shard: int) -> Path:
        return self.out_dir / f"shard-{shard}.safetensors"

    def _open_next(self) -> None:
        if self.file is not None:
            self.file.close()
        self.shard += 1
        header, offset = {}, 0
        for name, shape in self.shards[self.shard]:
            nbytes = math.prod(shape) * self.element_size
            header[name] = {
                "dtype": SAFETENSORS_DTYPES[self.dtype],
                "shape": shape,
                "data_offsets": [offset, offset + nbytes],
            }
            offset += nbytes
        header["__metadata__"] = {"format": "pt"}
        text = json.dumps(header, separators=(",", ":")).encode()
        text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned
        self.file = open(self._path(self.shard), "wb")  # noqa: SIM115 (open across add() calls, closed by the next shard or close())
        self.file.write(struct.pack("<Q", len(text)) + text)
        self.remaining = len(self.shards[self.shard])

    def add(self, name: str, tensor: torch.Tensor) -> None:
        if self.written >= len(self.expected) or name != self.expected[self.written]:
            raise ValueError(f"ShardWriter: got tensor {name!r}, expected {self.expected[self.written :][:1]}")
        if tensor.dtype != self.dtype:
            raise ValueError(f"ShardWriter: tensor {name!r} is {tensor.dtype}, the shards hold {self.dtype}")
        if self.remaining == 0:
            self._open_next()
        self.file.write(memoryview(tensor.contiguous().reshape(-1).view(torch.uint8).numpy()))
        self.remaining -= 1
        self.written += 1

    def close(self) -> None:
        if self.written != len(self.expected):
            raise ValueError(f"ShardWriter: {len(self.expected) - self.written} tensors never came")
        if self.file is not None:
            self.file.close()
        if len(self.shards) == 1:
            self._path(0).rename(self.out_dir / "model.safetensors")
            return
        weight_map = {}
        for i, shard in enumerate(self.shards):
            final = f"model-{i + 1:05d}-of-{len(self.shards):05d}.safetensors"
            self._path(i).rename(self.out_dir / final)
            weight_map |= {name: final for name, _ in shard}
        (self.out_dir / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {}, "weight_map": weight_map}, indent=2) + "\n"
        )
