"""Curate stage: normalise, filter, deduplicate (exact and near), split with no leakage, and report every removal.

Streams each raw table in batches; the state that grows with the input (keys already seen, group names) lives
in SQLite files on disk, so memory stays bounded whatever the size of the input (in memory: a few integers per
row and per group). Three passes per table: the first filters, deduplicates and joins groups into families
(components/data/splits.py); then each family gets its split within its stratum, and the second pass writes the
splits and indexes the train rows; the third checks every val/test row against that index and drops (or fails on)
the ones that near-duplicate a train row.
"""

from __future__ import annotations

import itertools
import json
import re
from array import array
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from pathlib import Path

from components.atomic import atomic_dir, scratch_dir
from components.data.config import CurateConfig, Splits
from components.data.minhash import SeenIndex, band_keys, bands_for, signatures
from components.data.sources import MANIFEST
from components.data.splits import SPLITS, FamilySplitter, signed64, stratum_of
from components.data.tables import Row, TableKind, read_jsonl, text_of
from components.data.text import alpha_ratio, normalize, repeated_line_ratio
from components.errors import InputError
from components.model.directory import check_model_dir
from components.stage import StageCache, StageResult

REPORT = "report.json"
REPORT_MD = "report.md"
FILTERS = (
    "too_short",
    "too_long",
    "low_alpha",
    "repeated_lines",
    "exact_duplicate",
    "near_duplicate",
    "harmful_content",
    "leakage",
    "low_confidence",
)

# Multi-word phrases that mark harmful requests in non-safety data (single words such as "kill" would
# remove "kill a process"). Rows that near-duplicate a known harmful prompt are removed as well.
HARMFUL_PHRASES = re.compile(
    r"\b(how to (make|build) a (bomb|pipe bomb|explosive)|synthesi[sz]e (sarin|vx|nerve agent|methamphetamine|ricin)"
    r"|child (sexual|porn)|buy (stolen|cloned) (credit )?cards?|untraceable (gun|firearm|poison))\b",
    re.IGNORECASE,
)


class Tally:
    """Per-filter removal counts with a few examples each, for the report."""

    def __init__(self) -> None:
        self.removed: Counter[str] = Counter()
        self.examples: dict[str, list[str]] = defaultdict(list)

    def drop(self, rule: str, row: Row, why: str = "") -> None:
        self.removed[rule] += 1
        if len(self.examples[rule]) < 3:
            self.examples[rule].append(f"{row.get('id')}: {why or json.dumps(row, ensure_ascii=False)[:120]}")


def normalize_row(row: Row, kind: TableKind) -> Row:
    row = dict(row)
    if kind is TableKind.messages:
        row["messages"] = [{**m, "content": normalize(m["content"])} for m in row["messages"]]
    for column in ("text", "prompt", "completion", "chosen", "rejected"):
        if isinstance(row.get(column), str):
            row[column] = normalize(row[column])
    return row


def quality_rule(text: str, cfg: CurateConfig) -> str | None:
    """The first length or quality filter that `text` fails, or None."""
    if len(text) < cfg.min_chars:
        return "too_short"
    if len(text) > cfg.max_chars:
        return "too_long"
    if alpha_ratio(text) < cfg.min_alpha_ratio:
        return "low_alpha"
    if repeated_line_ratio(text) > cfg.max_repeated_line_ratio:
        return "repeated_lines"
    return None


def batched(rows: Iterable, size: int) -> Iterator[list]:
    iterator = iter(rows)
    while batch := list(itertools.islice(iterator, size)):
        yield batch


def first_seen(index: SeenIndex, keys_per_row: list[list[int]], row_ids: list[int]) -> list[int | None]:
    """For each row, the id of an earlier row (earlier batch or earlier in this batch) that shares a key, else None;
    rows with no match get their keys added to the index."""
    known = index.lookup([k for keys in keys_per_row for k in keys])
    matches: list[int | None] = []
    added: list[tuple[int, int]] = []
    for keys, row_id in zip(keys_per_row, row_ids, strict=True):
        match = next((known[k] for k in keys if k in known), None)
        matches.append(match)
        if match is None:
            for k in keys:
                known[k] = row_id
            added += [(k, row_id) for k in keys]
    index.add(added)
    return matches


class HarmfulIndex:
    """LSH keys of known harmful prompts, for removing them from non-safety tables."""

    def __init__(self, prompts: Iterable[str], cfg: CurateConfig, path: Path):
        self.bands = bands_for(cfg.leakage_threshold, cfg.num_perm)
        self.cfg = cfg
        self.index = SeenIndex(path)
        for batch in batched(({"p": p} for p in prompts), cfg.batch_rows):
            keys = band_keys(signatures([normalize(r["p"]) for r in batch], cfg.num_perm), self.bands)
            self.index.add([(int(k), 0) for k in keys.ravel()])

    def matches(self, texts: list[str]) -> list[bool]:
        keys = band_keys(signatures(texts, self.cfg.num_perm), self.bands)
        found = self.index.lookup(keys.ravel().tolist())
        return [any(int(k) in found for k in row) for row in keys]


def curate_table(
    name: str,
    kind: TableKind,
    safety: bool,
    splits: Splits,
    raw: Path,
    out: Path,
    scratch: Path,
    cfg: CurateConfig,
    seed: int,
    harmful: HarmfulIndex | None,
) -> tuple[Tally, dict[str, int]]:
    """Curate one raw table into out/{train,val,test}.jsonl; returns the removals and the split sizes."""
    tally = Tally()
    exact, near, train_index = (SeenIndex(scratch / f"{name}-{part}.db") for part in ("exact", "near", "train"))
    near_bands = bands_for(cfg.near_dup_threshold, cfg.num_perm) if cfg.near_dup_threshold else None
    family_bands = bands_for(cfg.family_threshold, cfg.num_perm) if cfg.family_threshold else None
    leak_bands = bands_for(cfg.leakage_threshold, cfg.num_perm)
    families = FamilySplitter(scratch, name, seed, cfg.family_threshold or 1.0)
    kept = scratch / f"{name}-kept.jsonl"
    group_codes = array("q")  # per kept row, its group's code in `families`
    with open(kept, "w", encoding="utf-8") as handle:
        for batch in batched(read_jsonl(raw), cfg.batch_rows):
            rows, texts, ids = [], [], []  # ids: line numbers in the raw file, which the report cites
            for lineno, row in batch:
                row = normalize_row(row, kind)
                text = text_of(row, kind)
                rule = quality_rule(text, cfg)
                if rule:
                    tally.drop(rule, row, f"{len(text)} chars" if rule.startswith("too") else "")
                else:
                    rows.append(row)
                    texts.append(text)
                    ids.append(lineno)

            exact_keys = [[signed64(t.lower())] for t in texts]
            survivors = []
            for i, match in enumerate(first_seen(exact, exact_keys, ids)):
                if match is None:
                    survivors.append(i)
                else:
                    tally.drop("exact_duplicate", rows[i], f"same text as raw line {match}")
            rows, texts, ids = [rows[i] for i in survivors], [texts[i] for i in survivors], [ids[i] for i in survivors]
            if not rows:
                continue
            sigs = signatures(texts, cfg.num_perm)
            if near_bands:
                matches = first_seen(near, band_keys(sigs, near_bands).tolist(), ids)
                keep = [i for i, match in enumerate(matches) if match is None]
                for i, match in enumerate(matches):
                    if match is not None:
                        tally.drop("near_duplicate", rows[i], f"near-duplicate of raw line {match}")
                rows, texts, ids, sigs = (
                    [rows[i] for i in keep],
                    [texts[i] for i in keep],
                    [ids[i] for i in keep],
                    sigs[keep],
                )
            if harmful is not None and not safety and rows:
                flagged = harmful.matches(texts)
                keep = []
                for i, row in enumerate(rows):
                    if flagged[i] or HARMFUL_PHRASES.search(texts[i]):
                        tally.drop("harmful_content", row)
                    else:
                        keep.append(i)
                rows, sigs = [rows[i] for i in keep], sigs[keep]
            if not rows:
                continue
            group_codes.extend(
                families.add(
                    [str(row.get("group", row.get("id"))) for row in rows],
                    [stratum_of(row) for row in rows],
                    band_keys(sigs, family_bands).tolist() if family_bands else [[] for _ in rows],
                    sigs,
                )
            )
            handle.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    family_counts = families.assign(splits)

    out.mkdir(parents=True)
    handles = {  # three files written in one pass over the kept rows; closed in the `finally` below
        "train": open(out / "train.jsonl", "w", encoding="utf-8"),  # noqa: SIM115
        "val": open(scratch / f"{name}-val.jsonl", "w", encoding="utf-8"),  # noqa: SIM115
        "test": open(scratch / f"{name}-test.jsonl", "w", encoding="utf-8"),  # noqa: SIM115
    }
    sizes = Counter({split: 0 for split in SPLITS})
    try:
        for batch in batched(zip(group_codes, (row for _, row in read_jsonl(kept)), strict=True), cfg.batch_rows):
            train_rows = []
            for code, row in batch:
                split = families.split_of(code)
                handles[split].write(json.dumps(row, ensure_ascii=False) + "\n")
                sizes[split] += 1
                if split == "train":
                    train_rows.append((sizes["train"], row))
            if train_rows:
                keys = band_keys(signatures([text_of(r, kind) for _, r in train_rows], cfg.num_perm), leak_bands)
                train_index.add(
                    [(int(k), line) for (line, _), row_keys in zip(train_rows, keys, strict=True) for k in row_keys]
                )
    finally:
        for handle in handles.values():
            handle.close()
    families.close()

    for split in ("val", "test"):
        sizes[split] = _drop_leaks(
            name,
            kind,
            split,
            scratch / f"{name}-{split}.jsonl",
            out / f"{split}.jsonl",
            train_index,
            leak_bands,
            cfg,
            tally,
        )
    for index in (exact, near, train_index):
        index.close()
    if sum(sizes.values()) == 0:
        raise InputError(f"dataset {name!r}: no rows left after curation (removed: {dict(tally.removed)})")
    for split in SPLITS:
        if getattr(splits, split) > 0 and sizes[split] == 0:
            raise InputError(
                f"dataset {name!r}: split {split!r} is empty after curation ({sum(sizes.values())} rows kept; "
                f"splits are by family, so a small dataset may need a larger {split} share)"
            )
    return tally, dict(sizes), family_counts


def _drop_leaks(
    name: str,
    kind: TableKind,
    split: str,
    pending: Path,
    final: Path,
    train_index: SeenIndex,
    bands: int,
    cfg: CurateConfig,
    tally: Tally,
) -> int:
    """Copy `pending` to `final` without the rows that near-duplicate a train row; count or fail on them."""
    kept = 0
    with open(final, "w", encoding="utf-8") as out:
        for batch in batched((row for _, row in read_jsonl(pending)), cfg.batch_rows):
            keys = band_keys(signatures([text_of(row, kind) for row in batch], cfg.num_perm), bands)
            found = train_index.lookup(keys.ravel().tolist())
            for row, row_keys in zip(batch, keys, strict=True):
                match = next((found[int(k)] for k in row_keys if int(k) in found), None)
                if match is None:
                    out.write(json.dumps(row, ensure_ascii=False) + "\n")
                    kept += 1
                elif cfg.on_leak == "fail":
                    raise InputError(
                        f"dataset {name!r}, {split} row {row.get('id')!r}: leaks into train (near-duplicate of "
                        f"train.jsonl line {match}, Jaccard >= {cfg.leakage_threshold}); rule: data.curate.on_leak=fail"
                    )
                else:
                    tally.drop("leakage", row, f"near-duplicate of train.jsonl line {match}")
    return kept


def render_report(table: list[dict]) -> str:
    lines = ["| dataset | filter | removed | examples |", "| --- | --- | ---: | --- |"]
    for entry in table:
        examples = "<br>".join(e.replace("|", "\\|") for e in entry["examples"])
        lines.append(f"| {entry['dataset']} | {entry['filter']} | {entry['removed']} | {examples} |")
    return "# Curation report\n\n" + "\n".join(lines) + "\n"


def drop_low_confidence(
    name: str, kind: TableKind, train: Path, cfg: CurateConfig, model_dir: Path, tally: Tally
) -> int:
    """Rewrite `train` without the cfg.confidence.drop_fraction rows the model is least confident in; returns rows kept."""
    from components.data.confidence import answer_confidence, lowest
    from components.model.device import load_model

    rows = [row for _, row in read_jsonl(train)]
    if kind is TableKind.messages:
        prompts = [text_of(r, kind) for r in rows]
        answers = [next(m["content"] for m in reversed(r["messages"]) if m["role"] == "assistant") for r in rows]
    else:
        prompts, answers = [r["prompt"] for r in rows], [r["completion"] for r in rows]
    model, tokenizer = load_model(model_dir)
    scores = answer_confidence(model, tokenizer, prompts, answers, cfg.confidence.max_tokens, cfg.confidence.batch_size)
    dropped = lowest(scores, cfg.confidence.drop_fraction)
    with open(train, "w", encoding="utf-8") as out:
        for row, score, drop in zip(rows, scores, dropped, strict=True):
            if drop:
                tally.drop("low_confidence", row, f"confidence {score:.4f}")
            else:
                out.write(json.dumps(row, ensure_ascii=False) + "\n")
    return int((~dropped).sum())


def curate(raw_dir: Path, cfg: CurateConfig, seed: int, out_dir: Path, model_dir: Path | None = None) -> StageResult:
    """Curate every table listed in raw_dir/manifest.json into out_dir/<name>/{train,val,test}.jsonl.

    `model_dir` (the base model) is read only when the CLEAR-style confidence filter is enabled.
    """
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    if not (raw_dir / MANIFEST).is_file():
        raise InputError(f"{raw_dir / MANIFEST}: missing; run the sources stage first")
    manifest = json.loads((raw_dir / MANIFEST).read_text())
    scorer = None
    if cfg.confidence.enabled:
        if model_dir is None:
            raise InputError("data.curate.confidence.enabled needs the base model; run the base-model stage first")
        scorer = check_model_dir(Path(model_dir))
    cache = StageCache("curate", out_dir, __name__, cfg, {"raw": raw_dir, "scorer": scorer}, seed=seed)
    if (card := cache.card()) is not None:
        return StageResult(
            outputs={"curated": out_dir},
            metrics=card["metrics"],
            cached=True,
            artifacts=(out_dir / REPORT, out_dir / REPORT_MD),
            datasets=curated_tables(out_dir),
        )

    metrics: dict[str, float] = {}
    table: list[dict] = []
    with atomic_dir(out_dir) as tmp, scratch_dir(out_dir) as scratch:
        harmful = None
        if cfg.harmful_filter:
            prompts = (
                row["prompt"]
                for name, entry in manifest.items()
                if entry["safety"] and name != "benign_lookalikes"
                for _, row in read_jsonl(raw_dir / f"{name}.jsonl")
            )
            harmful = HarmfulIndex(prompts, cfg, Path(scratch) / "harmful.db")
        for name, entry in manifest.items():
            splits = Splits(**entry["splits"]) if entry["splits"] else cfg.splits
            kind = TableKind(entry["kind"])
            tally, sizes, family_counts = curate_table(
                name,
                kind,
                entry["safety"],
                splits,
                raw_dir / f"{name}.jsonl",
                tmp / name,
                Path(scratch),
                cfg,
                seed,
                harmful,
            )
            if (
                scorer
                and not entry["safety"]
                and kind in (TableKind.prompt_completion, TableKind.messages)
                and sizes["train"]
            ):
                sizes["train"] = drop_low_confidence(
                    name, kind, tmp / name / "train.jsonl", cfg, Path(model_dir), tally
                )
            metrics[f"{name}.raw_rows"] = float(entry["rows"])
            for split, size in sizes.items():
                metrics[f"{name}.{split}.rows"] = float(size)
            for count, value in family_counts.items():
                metrics[f"{name}.{count}"] = value
            for rule in FILTERS:
                metrics[f"{name}.removed.{rule}"] = float(tally.removed[rule])
                if tally.removed[rule]:
                    table.append(
                        {
                            "dataset": name,
                            "filter": rule,
                            "removed": tally.removed[rule],
                            "examples": tally.examples[rule],
                        }
                    )
        (tmp / REPORT).write_text(
            json.dumps({"removed": table, "metrics": metrics, "manifest": manifest}, indent=2) + "\n"
        )
        (tmp / REPORT_MD).write_text(render_report(table))
        cache.write_card(tmp, metrics)
    return StageResult(
        outputs={"curated": out_dir},
        metrics=metrics,
        artifacts=(out_dir / REPORT, out_dir / REPORT_MD),
        datasets=curated_tables(out_dir),
    )


def curated_tables(out_dir: Path) -> dict[str, Path]:
    """`{"<dataset>/<split>": path}` of every curated table."""
    return {f"{path.parent.name}/{path.stem}": path for path in sorted(Path(out_dir).glob("*/*.jsonl"))}
