"""Curation at scale: one million short rows, time and peak memory, against reading and writing the same rows.

Each measurement runs in a fresh process so that its peak RSS is its own. Memory is shown for a quarter
of the rows and for all of them: a streaming curation keeps the two close.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from benchmarks.runner import Report, benchmark, measured
from components.config import Params
from components.data.config import CurateConfig

ROWS = 1_000_000


def write_rows(raw: Path, count: int, seed: int = 0) -> None:
    """`count` short rows (8-16 words from a 5,000-word vocabulary); 10% repeat a recent row exactly and 5% repeat
    one with its last word changed (Jaccard of word 3-grams 0.6-0.9, so only some count as near duplicates)."""
    rng = random.Random(seed)
    vocab = sorted({"".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=rng.randint(3, 9))) for _ in range(5200)})[
        :5000
    ]
    raw.mkdir(parents=True)
    recent: list[str] = []
    with open(raw / "bulk.jsonl", "w") as handle:
        for i in range(count):
            roll = rng.random()
            if recent and roll < 0.10:
                text = rng.choice(recent)
            elif recent and roll < 0.15:
                words = rng.choice(recent).split()
                words[-1] = rng.choice(vocab)
                text = " ".join(words)
            else:
                text = " ".join(rng.choices(vocab, k=rng.randint(8, 16)))
            recent = (recent + [text])[-1000:]
            handle.write(json.dumps({"id": f"r{i}", "text": text}) + "\n")
    manifest = {
        "bulk": {
            "kind": "text",
            "safety": False,
            "splits": None,
            "rows": count,
            "licence": "generated",
            "provenance": "benchmarks.curate_scale",
        }
    }
    (raw / "manifest.json").write_text(json.dumps(manifest))


def _copy_rows(raw: Path, out: Path) -> None:
    with open(raw / "bulk.jsonl") as src, open(out, "w") as dst:
        for line in src:
            dst.write(json.dumps(json.loads(line)) + "\n")


def _curate(raw: Path, out: Path, cfg: dict) -> dict:
    from components.data.curate import curate

    return curate(raw, CurateConfig(**cfg), 0, out).metrics


@benchmark("curate_scale")
def curate_scale(params: Params, scratch: Path) -> Report:
    report = Report("curate_scale", baseline=f"read + write {ROWS:,} rows")
    cfg = params.data.curate.model_dump(mode="json") | {"harmful_filter": False}
    for count in (ROWS // 4, ROWS):
        raw = scratch / f"raw-{count}"
        write_rows(raw, count)
        seconds, peak_mb, metrics = measured(_curate, raw, scratch / f"curated-{count}", cfg)
        report.seconds[f"curate {count:,} rows"] = seconds
        report.notes[f"peak RSS, curate {count:,} rows"] = f"{peak_mb:.0f} MB"
        kept = sum(metrics[f"bulk.{s}.rows"] for s in ("train", "val", "test"))
        removed = {k.rsplit(".", 1)[-1]: int(v) for k, v in metrics.items() if ".removed." in k and v}
        report.notes[f"kept of {count:,}"] = f"{int(kept):,}; removed {removed}"
    seconds, peak_mb, _ = measured(_copy_rows, scratch / f"raw-{ROWS}", scratch / "copy.jsonl")
    report.seconds[report.baseline] = seconds
    report.notes[f"peak RSS, {report.baseline}"] = f"{peak_mb:.0f} MB"
    return report
