"""Content hashes: what cache keys, lineage tags and merge cards record about an input."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from components.errors import InputError

_CHUNK = 1 << 20


# Hashes already computed in this process, by the file's identity (path, inode, size, modification time in ns), as
# DVC's own state does: a pipeline run hashes a model once, not once per stage that reads it (the base model is read
# by most stages). Every output is written to a new file and renamed into place,
# so a changed file has a new inode and time.
_KNOWN: dict[tuple, str] = {}


def _identity(path: Path) -> tuple:
    stat = Path(path).stat()
    return (str(Path(path).resolve()), stat.st_ino, stat.st_size, stat.st_mtime_ns)


def known() -> dict[tuple, str]:
    """The hashes this process has computed, by file identity (a stage run in its own process takes them along)."""
    return dict(_KNOWN)


def remember(hashes: dict[tuple, str]) -> None:
    """Hashes computed by another process of this run, from `known` there."""
    _KNOWN.update(hashes)


def _remembered(kind: str, paths: list[Path], compute) -> str:
    key = (kind, *(_identity(p) for p in paths))
    if key not in _KNOWN:
        _KNOWN[key] = compute()
    return _KNOWN[key]


def file_sha256(path: Path) -> str:
    def compute() -> str:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            while chunk := handle.read(_CHUNK):
                digest.update(chunk)
        return digest.hexdigest()

    return _remembered("sha256", [path], compute)


def file_md5(path: Path) -> str:
    """The hash DVC 3 records for a file (plain MD5 of its bytes), so our tags and dvc.lock agree."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def tree_sha256(root: Path, skip: frozenset[str] = frozenset()) -> str:
    """Hash of every file under `root` (relative path and content) but those named in `skip`, in any listing order."""
    digest = hashlib.sha256()
    for path in sorted(p for p in Path(root).rglob("*") if p.is_file() and p.name not in skip):
        digest.update(path.relative_to(root).as_posix().encode())
        digest.update(b"\0")
        digest.update(file_sha256(path).encode())
    return digest.hexdigest()


def json_sha256(value: Any) -> str:
    """Hash of a JSON-serialisable value with sorted keys, so equal configs hash equal."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


# Files a stage writes beside its output that record how it was built (keys, timings, absolute paths): not content.
CARD_FILES = frozenset({"stage.json", "merge_card.json", "realign_card.json", "prune_card.json"})


def content_sha256(path: Path) -> str:
    """Hash of a file, or of a folder's data and weights without its cards: what cache keys depend on."""
    path = Path(path)
    return file_sha256(path) if path.is_file() else tree_sha256(path, CARD_FILES)


def _readable(file: Path, read):
    try:
        return read()
    except Exception as err:  # safetensors' own error type: a truncated or corrupt file
        raise InputError(f"{file}: not a readable safetensors file ({err})") from None


def weights_sha256(model_dir: Path) -> str:
    """A model's identity: its tensors (name, dtype, shape, bytes) in name order, whatever the sharding, cards or
    timings beside them. Every evaluation, gate report and registry version names the weights by this hash."""
    files = sorted(Path(model_dir).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{model_dir}: no safetensors weights")
    return _remembered("weights", files, lambda: _tensors_sha256(files))


def _tensors_sha256(files: list[Path]) -> str:
    import torch
    from safetensors import safe_open

    owner = {}
    for file in files:
        handle = _readable(file, lambda f=file: safe_open(f, "pt"))
        owner |= {name: (file, handle) for name in handle.keys()}  # noqa: SIM118 (a safetensors handle)
    digest = hashlib.sha256()
    for name in sorted(owner):
        file, handle = owner[name]
        tensor = _readable(file, lambda h=handle, n=name: h.get_tensor(n)).contiguous()
        digest.update(f"{name}\0{tensor.dtype}\0{list(tensor.shape)}\0".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()
