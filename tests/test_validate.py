import json
from pathlib import Path

import pytest

from components.data.curate import curate
from components.data.tables import TableKind
from components.data.validate import ValidationFailed, require_valid, roles_in_order, validate, validate_tables
from components.errors import InputError
from tests.data_helpers import config, write_raw


def test_role_order_by_hand():
    u, a, s = ({"role": r, "content": "x"} for r in ("user", "assistant", "system"))
    assert roles_in_order([u, a]) and roles_in_order([s, u, a, u, a])
    assert not roles_in_order([a, u]) and not roles_in_order([u, u, a]) and not roles_in_order([u])
    assert not roles_in_order([u, a, u])


def failed(report: dict, table: str) -> dict[tuple[str, str], list[str]]:
    """(expectation, column) -> ids of the example rows, for the failed expectations of one table."""
    return {
        (o["expectation"], o["column"]): [e["id"] for e in o["examples"]] for o in report[table] if not o["success"]
    }


def test_every_expectation_fails_on_the_rows_that_break_it():
    ok = {"role": "user", "content": "What is a list?"}, {"role": "assistant", "content": "A sequence."}
    chats = [
        {"id": "c1", "messages": list(ok)},
        {"id": "c1", "messages": [ok[1], ok[0]]},  # duplicate id, assistant first
    ]
    math_train = [{"id": "m1", "prompt": "What is two plus two?", "completion": "2 + 2 = 4\n#### 4", "answer": "4"}]
    math_test = [
        {"id": "m2", "prompt": "What is two plus two?", "completion": "2 + 2 = 4\n#### 4", "answer": "4"},  # in train
        {"id": "m3", "prompt": "What is three plus one?", "completion": "3 + 1 = 4\n#### 5", "answer": "4"},
        {"id": "m4", "prompt": "What is ten minus six?", "completion": "10 - 6 = 4\n#### four", "answer": "four"},
    ]
    prefs = [{"id": "p1", "prompt": "Say hi politely", "chosen": "Hello!", "rejected": "Hello!"}]
    report = validate_tables(
        {
            "chat": (TableKind.messages, {"train": chats}),
            "math": (TableKind.prompt_completion, {"train": math_train, "test": math_test}),
            "prefs": (TableKind.preference, {"train": prefs}),
        },
        config(),
    )
    assert failed(report, "chat/train") == {
        ("expect_column_values_to_be_unique", "id"): ["c1", "c1"],
        ("expect_column_values_to_be_unique", "_key"): ["c1", "c1"],  # the same user turn twice
        ("expect_column_values_to_be_in_set", "_roles_in_order"): ["c1"],
    }
    assert failed(report, "math/train") == {}
    assert failed(report, "math/test") == {
        ("expect_column_values_to_be_in_set", "_not_in_train"): ["m2"],
        ("expect_column_values_to_be_in_set", "_answer_matches_solution"): ["m3"],
        ("expect_column_values_to_match_regex", "answer"): ["m4"],
    }
    assert failed(report, "prefs/train") == {("expect_column_values_to_be_in_set", "_chosen_differs"): ["p1"]}


def test_missing_column_and_out_of_range_length_fail():
    rows = [{"id": "a", "prompt": "short"}, {"id": "b", "prompt": "x" * 500}]
    report = validate_tables({"qa": (TableKind.prompt_completion, {"train": rows})}, config())
    assert ("expect_column_to_exist", "completion") in failed(report, "qa/train")
    assert failed(report, "qa/train")[("expect_column_value_lengths_to_be_between", "_text")] == ["b"]


def test_validate_stage_passes_on_curated_data_and_stops_on_bad_data(tmp_path: Path):
    rows = [
        {"id": f"q{i}", "prompt": f"Question number {i} about topic {i * 3}?", "completion": "An answer."}
        for i in range(6)
    ]
    write_raw(tmp_path / "raw", {"qa": ("prompt_completion", False, {"train": 1.0, "val": 0.0, "test": 0.0}, rows)})
    curate(tmp_path / "raw", config(), 0, tmp_path / "curated")
    result = validate(tmp_path / "curated", config(), tmp_path / "validation")
    assert result.metrics["failed_expectations"] == 0
    require_valid(tmp_path / "validation")

    train = tmp_path / "curated" / "qa" / "train.jsonl"
    lines = train.read_text().splitlines()
    broken = json.loads(lines[1])
    broken["id"] = json.loads(lines[0])["id"]  # a duplicate id slipped in by hand
    train.write_text("\n".join([lines[0], json.dumps(broken), *lines[2:]]) + "\n")
    with pytest.raises(
        ValidationFailed,
        match=r"qa/train: expect_column_values_to_be_unique\(id\) failed on 2 row\(s\), e.g. row 0 id q0",
    ) as err:
        validate(tmp_path / "curated", config(), tmp_path / "validation")
    assert all(path.is_file() for path in err.value.artifacts)
    assert "**FAIL**" in (tmp_path / "validation" / "report.md").read_text()
    with pytest.raises(InputError, match="has not passed validation"):
        require_valid(tmp_path / "validation")
