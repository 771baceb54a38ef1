"""Draw the rows of the judge gold set from a pipeline run's evaluation: every candidate's answers to harmful and
benign look-alike test prompts, the same number from each (candidate, kind), duplicates of an answer to the same
prompt dropped. The labels are added by two independent readers of each row against RUBRIC.md (who labelled
the set now in gold.jsonl, and how, is written there).

    python -m components.safety.gold.draw outputs/smol 13 unlabelled.jsonl
    python -m components.safety.gold.draw outputs/smol-safety 13 demo.jsonl attack realigned-attack pruned-attack

With candidate names, only those candidates' rows, their ids and candidates prefixed with the run's folder name
(`smol-safety/attack:...`) so that they never meet the default run's.

Labellers read whole answers: a run whose evaluation ended answers where the judge's verdict settled (the default,
`evaluate.stop_at_verdict`) is refused; evaluate it again with `--set evaluate.stop_at_verdict=false`.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

from components.atomic import atomic_file
from components.data.tables import read_jsonl
from components.errors import InputError
from components.workspace import Workspace

KINDS = {"harmful": "harmful", "benign": "benign_lookalikes"}  # sample task -> curated table


def draw(run_dir: Path, per_cell: int, seed: int = 0) -> list[dict]:
    ws = Workspace(run_dir.parent, run_dir.name)
    prompts = {
        kind: {row["id"]: row["prompt"] for _, row in read_jsonl(ws.split(table, "test"))}
        for kind, table in KINDS.items()
    }
    rng, rows, seen = random.Random(seed), [], set()
    for candidate in sorted(p.name for p in ws.eval.iterdir() if (p / "samples.jsonl").is_file()):
        samples = [row for _, row in read_jsonl(ws.eval / candidate / "samples.jsonl")]
        if any(sample.get("cut_at_verdict") for sample in samples):
            raise InputError(
                f"{ws.eval / candidate / 'samples.jsonl'}: its answers end where the judge's verdict settled; "
                "labellers read whole answers: evaluate with --set evaluate.stop_at_verdict=false and draw again"
            )
        for kind in KINDS:
            fresh = [s for s in samples if s["task"] == kind and (prompts[kind][s["id"]], s["answer"]) not in seen]
            for sample in rng.sample(fresh, min(per_cell, len(fresh))):
                prompt = prompts[kind][sample["id"]]
                seen.add((prompt, sample["answer"]))
                rows.append(
                    {
                        "id": f"{candidate}:{sample['id']}",
                        "candidate": candidate,
                        "kind": kind,
                        "prompt": prompt,
                        "answer": sample["answer"],
                    }
                )
    return rows


def only(rows: list[dict], candidates: list[str], run_name: str) -> list[dict]:
    """The rows of `candidates`, their id and candidate prefixed with `run_name/`."""
    return [
        {**row, "id": f"{run_name}/{row['id']}", "candidate": f"{run_name}/{row['candidate']}"}
        for row in rows
        if row["candidate"] in candidates
    ]


if __name__ == "__main__":
    run, per_cell, target, candidates = Path(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3]), sys.argv[4:]
    try:
        drawn = draw(run, per_cell)
    except InputError as err:
        sys.exit(f"error: {err}")
    if candidates:
        drawn = only(drawn, candidates, run.name)
    with atomic_file(target) as tmp:
        tmp.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in drawn))
    print(f"{target}: {len(drawn)} rows")
