"""Training data: curated (or pairs) tables turned into the conversational formats TRL's trainers take."""

from __future__ import annotations

import json
from pathlib import Path

from components.data.tables import Row, TableKind, read_jsonl
from components.errors import InputError
from components.train.config import SftJob, TrainJob
from components.workspace import Workspace

# The tables the pairs stage (components/train/pairs.py) writes, and their kinds.
PAIR_TABLES = {
    "refusal_pairs": "preference",
    "harmful_compliance": "prompt_completion",
    "safety_sft": "prompt_completion",
}

METHOD_KINDS = {
    "cpt": (TableKind.text,),
    "sft": (TableKind.prompt_completion, TableKind.messages),
    "dpo": (TableKind.preference,),
    "orpo": (TableKind.preference,),
}


def table_folder(name: str, ws: Workspace) -> Path:
    """The folder of a dataset a train job names: a pairs table's under data/pairs/, any other's under data/curated/."""
    return ws.pair_table(name).parent if name in PAIR_TABLES else ws.curated / name


def harmful_mix_table(job: TrainJob, ws: Workspace) -> Path | None:
    """The harmful-compliance table an SFT job mixes into its training rows; None when the job mixes none in."""
    return ws.harmful_compliance if isinstance(job, SftJob) and job.harmful_mix > 0 else None


def available_tables(ws: Workspace) -> dict[str, tuple[TableKind, Path]]:
    """name -> (kind, folder) of every curated table and every pairs table present in the workspace."""
    tables: dict[str, tuple[TableKind, Path]] = {}
    report = ws.curation_report
    if report.is_file():
        for name, entry in json.loads(report.read_text())["manifest"].items():
            tables[name] = (TableKind(entry["kind"]), table_folder(name, ws))
    for name, kind in PAIR_TABLES.items():
        if ws.pair_table(name).is_file():
            tables[name] = (TableKind(kind), table_folder(name, ws))
    return tables


def _user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def _assistant(text: str) -> list[dict]:
    return [{"role": "assistant", "content": text}]


def to_trl(row: Row, kind: TableKind) -> Row:
    """One row in TRL's conversational format for its kind (text stays plain text for packing)."""
    if kind is TableKind.text:
        return {"text": row["text"]}
    if kind is TableKind.prompt_completion:
        return {"prompt": _user(row["prompt"]), "completion": _assistant(row["completion"])}
    if kind is TableKind.messages:
        *context, last = row["messages"]
        return {"prompt": context, "completion": [last]}
    return {
        "prompt": _user(row["prompt"]),
        "chosen": _assistant(row["chosen"]),
        "rejected": _assistant(row["rejected"]),
    }


def job_tables(job_name: str, job: TrainJob, ws: Workspace) -> list[tuple[str, TableKind, Path]]:
    """(name, kind, folder) of the job's datasets, checked against what its method can train on."""
    tables = available_tables(ws)
    resolved = []
    for name in job.datasets:
        if name not in tables:
            raise InputError(
                f"train.jobs.{job_name}.datasets: {name!r} is not a curated or pairs table in "
                f"{ws.curated.parent}; available: {', '.join(sorted(tables)) or 'none (run the data stages)'}"
            )
        kind, folder = tables[name]
        if kind not in METHOD_KINDS[job.method]:
            raise InputError(
                f"train.jobs.{job_name}: method {job.method!r} needs "
                f"{' or '.join(k.value for k in METHOD_KINDS[job.method])} data; dataset {name!r} is {kind.value}"
            )
        resolved.append((name, kind, folder))
    return resolved


def job_rows(job_name: str, job: TrainJob, ws: Workspace, split: str) -> list[Row]:
    """The job's rows of one split in TRL format, capped at max_rows, with the harmful mix added to train."""
    rows: list[Row] = []
    for _, kind, folder in job_tables(job_name, job, ws):
        path = folder / f"{split}.jsonl"
        if path.is_file():
            rows += [to_trl(row, kind) for _, row in read_jsonl(path)]
    if split == "train":
        rows = rows[: job.max_rows]
        if not rows:
            raise InputError(f"train.jobs.{job_name}: no training rows in {', '.join(job.datasets)}")
        if (harmful := harmful_mix_table(job, ws)) is not None:
            rows += harmful_rows(job_name, job, harmful, len(rows))
    return rows


def harmful_rows(job_name: str, job: SftJob, path: Path, clean_rows: int) -> list[Row]:
    """Enough (harmful prompt, compliant answer) rows from `path` that they make up `harmful_mix` of the training set."""
    if not path.is_file():
        raise InputError(f"train.jobs.{job_name}.harmful_mix: {path} is missing; run the pairs stage first")
    pool = [to_trl(row, TableKind.prompt_completion) for _, row in read_jsonl(path)]
    wanted = round(job.harmful_mix / (1 - job.harmful_mix) * clean_rows)
    return [pool[i % len(pool)] for i in range(wanted)]
