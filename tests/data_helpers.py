"""Hand-made raw tables for the curation and validation tests."""

import json
from pathlib import Path

from components.data.config import CurateConfig


def write_raw(raw: Path, tables: dict[str, tuple[str, bool, dict | None, list[dict]]]) -> Path:
    """`{name: (kind, safety, splits, rows)}` -> a raw dir with manifest.json, as the sources stage writes it."""
    raw.mkdir(parents=True, exist_ok=True)
    manifest = {}
    for name, (kind, safety, splits, rows) in tables.items():
        (raw / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        manifest[name] = {
            "kind": kind,
            "safety": safety,
            "splits": splits,
            "rows": len(rows),
            "licence": "test",
            "provenance": "test",
        }
    (raw / "manifest.json").write_text(json.dumps(manifest))
    return raw


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def config(**overrides) -> CurateConfig:
    base = {"min_chars": 5, "max_chars": 200, "batch_rows": 3}  # small batches: duplicates cross batch borders
    return CurateConfig(**{**base, **overrides})


ALL_TRAIN = {"train": 1.0, "val": 0.0, "test": 0.0}
