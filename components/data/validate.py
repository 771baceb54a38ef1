"""Validate stage: a Great Expectations suite on every curated table; a failed expectation stops the run.

Suites follow each table's kind: schema (required columns exist), no nulls, unique ids and unique texts,
text lengths within the curation bounds, chat role order, parseable math answers that match the worked
solution, chosen != rejected, and disjoint splits (no val/test text that is also a train text).
Checks that look inside a row (role order, answer vs solution) are computed as boolean columns and
expected to be all true, so that GX reports them with the same counts and example rows as the rest.
The report (JSON and Markdown) is written whether the suites pass or fail.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from components.atomic import atomic_dir
from components.data.config import CurateConfig
from components.data.curate import REPORT as CURATION_REPORT
from components.data.curate import SPLITS
from components.data.tables import REQUIRED, ROLES, Row, TableKind, read_jsonl, text_of
from components.errors import InputError
from components.stage import StageCache, StageResult

REPORT = "report.json"
REPORT_MD = "report.md"
EXAMPLES = 5


class ValidationFailed(InputError):
    """At least one expectation failed; `artifacts` are the report files, logged even though the stage failed."""

    def __init__(self, message: str, artifacts: tuple[Path, ...]):
        super().__init__(message)
        self.artifacts = artifacts


def roles_in_order(messages: list[dict]) -> bool:
    """An optional system message, then user and assistant alternating, starting with user, ending with assistant."""
    roles = [m.get("role") for m in messages]
    if roles and roles[0] == "system":
        roles = roles[1:]
    return (
        len(roles) >= 2
        and len(roles) % 2 == 0
        and all(r in ROLES for r in roles)
        and roles[0::2] == ["user"] * (len(roles) // 2)
        and roles[1::2] == ["assistant"] * (len(roles) // 2)
    )


def _text_or_none(row: Row, kind: TableKind) -> str | None:
    """The row's deduplication text, or None when the columns it comes from are missing (reported by the schema checks)."""
    try:
        return text_of(row, kind)
    except (KeyError, TypeError):
        return None


def frame(rows: list[Row], kind: TableKind, train_texts: set[str] | None) -> pd.DataFrame:
    """The table plus the derived columns the suite checks: _text, _key, and the per-row boolean checks."""
    df = pd.DataFrame(rows)
    df["_text"] = [_text_or_none(row, kind) for row in rows]
    df["_key"] = [t.lower() if isinstance(t, str) else None for t in df["_text"]]
    if kind is TableKind.messages and "messages" in df:
        df["_roles_in_order"] = [isinstance(m, list) and roles_in_order(m) for m in df["messages"]]
    if kind is TableKind.preference and {"chosen", "rejected"} <= set(df):
        df["_chosen_differs"] = df["chosen"] != df["rejected"]
    if "answer" in df and "completion" in df:
        df["_answer_matches_solution"] = [
            isinstance(c, str) and c.rstrip().endswith(f"#### {a}")
            for c, a in zip(df["completion"], df["answer"], strict=True)
        ]
    if train_texts is not None:
        df["_not_in_train"] = [k not in train_texts for k in df["_key"]]
    return df


def expectations(df: pd.DataFrame, kind: TableKind, cfg: CurateConfig) -> list:
    import great_expectations.expectations as gxe

    suite = [gxe.ExpectColumnToExist(column=c) for c in ("id", *REQUIRED[kind])]
    suite += [gxe.ExpectColumnValuesToNotBeNull(column=c) for c in ("id", *REQUIRED[kind]) if c in df]
    suite += [
        gxe.ExpectColumnValuesToBeUnique(column="id"),
        gxe.ExpectColumnValuesToBeUnique(column="_key"),
        gxe.ExpectColumnValueLengthsToBeBetween(column="_text", min_value=cfg.min_chars, max_value=cfg.max_chars),
    ]
    if "answer" in df:
        suite.append(gxe.ExpectColumnValuesToMatchRegex(column="answer", regex=r"^-?\d+$"))
    suite += [
        gxe.ExpectColumnValuesToBeInSet(column=c, value_set=[True])
        for c in df.columns
        if c in {"_roles_in_order", "_chosen_differs", "_answer_matches_solution", "_not_in_train"}
    ]
    return suite


def run_suite(context, name: str, df: pd.DataFrame, suite_items: list) -> list[dict[str, Any]]:
    """Run one suite on one DataFrame; one dict per expectation with its outcome and example rows."""
    import great_expectations as gx

    asset = context.data_sources.get("curated").add_dataframe_asset(name)
    batch = asset.add_batch_definition_whole_dataframe("all")
    suite = context.suites.add(gx.ExpectationSuite(name=name, expectations=suite_items))
    definition = context.validation_definitions.add(gx.ValidationDefinition(name=name, data=batch, suite=suite))
    result = definition.run(batch_parameters={"dataframe": df}, result_format="COMPLETE")
    outcomes = []
    for item in result.results:
        column = item.expectation_config.kwargs.get("column")
        indices = (item.result or {}).get("unexpected_index_list") or []
        examples = [
            {
                "row": int(i),
                "id": str(df["id"].iloc[i]) if "id" in df else None,
                "value": str(df[column].iloc[i])[:160] if column in df else None,
            }
            for i in indices[:EXAMPLES]
        ]
        outcomes.append(
            {
                "expectation": item.expectation_config.type,
                "column": column,
                "success": bool(item.success),
                "unexpected_count": int((item.result or {}).get("unexpected_count") or 0),
                "examples": examples,
            }
        )
    return outcomes


def gx_context():
    import great_expectations as gx

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = {"globally": False}
    context.data_sources.add_pandas("curated")
    return context


def validate_tables(
    tables: dict[str, tuple[TableKind, dict[str, list[Row]]]], cfg: CurateConfig
) -> dict[str, list[dict]]:
    """`{dataset: (kind, {split: rows})}` -> `{"dataset/split": outcomes}` for every non-empty split."""
    context = gx_context()
    report: dict[str, list[dict]] = {}
    for dataset, (kind, splits) in tables.items():
        train_keys = {t.lower() for r in splits.get("train", []) if (t := _text_or_none(r, kind)) is not None}
        for split, rows in splits.items():
            if not rows:
                continue
            df = frame(rows, kind, None if split == "train" else train_keys)
            report[f"{dataset}/{split}"] = run_suite(context, f"{dataset}-{split}", df, expectations(df, kind, cfg))
    return report


def render_report(report: dict[str, list[dict]]) -> str:
    lines = [
        "# Validation report",
        "",
        "| table | expectation | column | result | unexpected | example rows |",
        "| --- | --- | --- | --- | ---: | --- |",
    ]
    for table, outcomes in report.items():
        for o in outcomes:
            examples = "<br>".join(
                f"row {e['row']} ({e['id']}): {e['value']}".replace("|", "\\|") for e in o["examples"]
            )
            lines.append(
                f"| {table} | {o['expectation']} | {o['column']} | {'pass' if o['success'] else '**FAIL**'} "
                f"| {o['unexpected_count']} | {examples} |"
            )
    return "\n".join(lines) + "\n"


def validate(curated_dir: Path, cfg: CurateConfig, out_dir: Path) -> StageResult:
    """Validate every curated table; write the report to out_dir; raise ValidationFailed if any expectation fails."""
    curated_dir, out_dir = Path(curated_dir), Path(out_dir)
    if not (curated_dir / CURATION_REPORT).is_file():
        raise InputError(f"{curated_dir / CURATION_REPORT}: missing; run the curate stage first")
    cache = StageCache("validate", out_dir, __name__, cfg, {"curated": curated_dir})
    card = cache.card()
    artifacts = (out_dir / REPORT, out_dir / REPORT_MD)
    if card is not None and card["success"]:
        return StageResult(outputs={"validation": out_dir}, metrics=card["metrics"], cached=True, artifacts=artifacts)

    manifest = json.loads((curated_dir / CURATION_REPORT).read_text())["manifest"]
    tables = {
        name: (
            TableKind(entry["kind"]),
            {split: [row for _, row in read_jsonl(curated_dir / name / f"{split}.jsonl")] for split in SPLITS},
        )
        for name, entry in manifest.items()
    }
    report = validate_tables(tables, cfg)
    failures = [(table, o) for table, outcomes in report.items() for o in outcomes if not o["success"]]
    metrics = {
        "tables": float(len(report)),
        "expectations": float(sum(len(o) for o in report.values())),
        "failed_expectations": float(len(failures)),
    }
    with atomic_dir(out_dir) as tmp:
        (tmp / REPORT).write_text(json.dumps({"success": not failures, "tables": report}, indent=2) + "\n")
        (tmp / REPORT_MD).write_text(render_report(report))
        cache.write_card(tmp, metrics, success=not failures)
    if failures:
        lines = [
            f"{table}: {o['expectation']}({o['column']}) failed on {o['unexpected_count']} row(s), e.g. "
            + "; ".join(f"row {e['row']} id {e['id']}: {e['value']!r}" for e in o["examples"][:3])
            for table, o in failures
        ]
        raise ValidationFailed(f"data validation failed ({out_dir / REPORT_MD}):\n" + "\n".join(lines), artifacts)
    return StageResult(outputs={"validation": out_dir}, metrics=metrics, artifacts=artifacts)


def require_valid(validation_dir: Path) -> None:
    """For stages that train or evaluate on curated data: refuse data that has not passed validation."""
    report = Path(validation_dir) / REPORT
    if not report.is_file() or not json.loads(report.read_text()).get("success"):
        raise InputError(f"{report}: the curated data has not passed validation; run the validate stage")
