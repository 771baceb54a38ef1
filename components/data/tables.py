"""Tables as streams of rows: the shapes the trainers take, and reading/writing them one row at a time.

Every table is JSON Lines: one object per line, streamed, so no stage holds a whole table in memory.
User files may also be CSV or Parquet (read in batches). Errors name the file and the line or row.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from collections.abc import Iterable, Iterator
from enum import Enum
from pathlib import Path
from typing import Any

from components.atomic import atomic_file
from components.errors import InputError

Row = dict[str, Any]


class TableKind(str, Enum):
    """The shapes TRL's trainers take (and `text` for continued pretraining)."""

    text = "text"
    prompt_completion = "prompt_completion"
    preference = "preference"
    messages = "messages"
    prompt = "prompt"  # prompts alone: evaluation sets (harmful, benign look-alike)


REQUIRED = {
    TableKind.prompt: ("prompt",),
    TableKind.text: ("text",),
    TableKind.prompt_completion: ("prompt", "completion"),
    TableKind.preference: ("prompt", "chosen", "rejected"),
    TableKind.messages: ("messages",),
}
ROLES = ("system", "user", "assistant")


def check_row(row: Row, kind: TableKind, where: str) -> None:
    """Raise InputError naming `where` (file:line) unless `row` has the columns `kind` needs, as strings."""
    if not isinstance(row, dict):
        raise InputError(f"{where}: expected a JSON object, found {type(row).__name__}")
    missing = [col for col in REQUIRED[kind] if col not in row]
    if missing:
        raise InputError(f"{where}: missing column(s) {missing} for kind {kind.value!r} (has {sorted(row)})")
    if kind is TableKind.messages:
        messages = row["messages"]
        if not isinstance(messages, list) or not messages:
            raise InputError(f"{where}: column 'messages' must be a non-empty list of {{role, content}}")
        for i, message in enumerate(messages):
            if (
                not isinstance(message, dict)
                or message.get("role") not in ROLES
                or not isinstance(message.get("content"), str)
            ):
                raise InputError(f"{where}: messages[{i}] must be {{role: one of {ROLES}, content: string}}")
        return
    for col in REQUIRED[kind]:
        if not isinstance(row[col], str):
            raise InputError(f"{where}: column {col!r} must be a string, found {type(row[col]).__name__}")


def text_of(row: Row, kind: TableKind) -> str:
    """The text that deduplication, filters and leakage checks look at: what the model is asked, or reads."""
    if kind is TableKind.text:
        return row["text"]
    if kind is TableKind.messages:
        return "\n".join(m["content"] for m in row["messages"] if m["role"] == "user")
    return row["prompt"]


def read_jsonl(path: Path, on_bad_line: str = "stop", skipped: list[str] | None = None) -> Iterator[tuple[int, Row]]:
    """(line number, row) for each line; a malformed line stops with its file and line, or is skipped and noted."""
    try:
        handle = open(path, "rb")  # noqa: SIM115 (closed by the `with` below); bytes, so a bad byte has its own line
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    with handle:
        for lineno, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise InputError(f"{path}:{lineno}: not UTF-8 ({err.reason} at byte {err.start} of the line)") from None
            if not line.strip():
                continue
            if "\x00" in line:
                raise InputError(f"{path}:{lineno}: a NUL byte in the data")
            try:
                yield lineno, json.loads(line)
            except json.JSONDecodeError as err:
                message = f"{path}:{lineno}: malformed JSON ({err.msg} at column {err.colno})"
                if on_bad_line == "stop":
                    raise InputError(message) from None
                if skipped is not None:
                    skipped.append(message)


def read_table(path: Path, on_bad_line: str = "stop", skipped: list[str] | None = None) -> Iterator[tuple[str, Row]]:
    """(where, row) for JSONL, CSV or Parquet files, by suffix; `where` is `file:line` or `file:row N`."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in {".jsonl", ".json"}:
        for lineno, row in read_jsonl(path, on_bad_line, skipped):
            yield f"{path}:{lineno}", row
    elif suffix == ".csv":
        yield from _read_csv(path)
    elif suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            parquet = pq.ParquetFile(path)
        except FileNotFoundError:
            raise InputError(f"{path}: no such file") from None
        except Exception as err:  # pyarrow raises its own error types for corrupt files
            raise InputError(f"{path}: not a readable Parquet file ({err})") from None
        number = 0
        for batch in parquet.iter_batches(batch_size=4096):
            for row in batch.to_pylist():
                number += 1
                yield f"{path}:row {number}", row
    else:
        raise InputError(f"{path}: unsupported file type {suffix!r}; use .jsonl, .csv or .parquet")


def _read_csv(path: Path) -> Iterator[tuple[str, Row]]:
    """CSV rows with the physical line each record starts on (a quoted field may span lines)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise InputError(f"{path}:{line}: not UTF-8 ({err.reason})") from None
    if "\x00" in text:
        raise InputError(f"{path}:{text[: text.index(chr(0))].count(chr(10)) + 1}: a NUL byte in the data")
    csv.field_size_limit(sys.maxsize)  # a long document in one field is data, not an error (default: 131,072)
    reader = csv.DictReader(io.StringIO(text, newline=""))
    start = 2  # the header is line 1
    try:
        for row in reader:
            yield f"{path}:{start}", row
            start = reader.line_num + 1
    except csv.Error as err:
        raise InputError(f"{path}:{reader.line_num}: malformed CSV ({err})") from None


def write_jsonl(path: Path, rows: Iterable[Row]) -> int:
    """Stream `rows` into `path` atomically; returns how many were written."""
    count = 0
    with atomic_file(path) as tmp, open(tmp, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
            count += 1
    return count
