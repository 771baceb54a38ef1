"""The evaluation suite's utility tasks as lm-evaluation-harness tasks that run offline from local files.

`export_tasks` writes, from the held-out test splits, one JSONL file and one task YAML per task, plus a
group `posttrain`:
- `posttrain_domain_mc`: the same multiple-choice items as the suite's domain_mc (same distractors, same
  order, by the same seed), scored by log-likelihood (acc, acc_norm). lm-eval moves the chat prefix's
  trailing newline into every continuation, which adds the same log-probability to each choice: acc
  is the suite's (tested), acc_norm can differ slightly;
- `posttrain_general_mc`: BBQ's items among their own three answers, as the suite's general_mc scores them;
- `posttrain_math`: generate_until on the math test problems, exact match of the last number of the answer
  (the suite's final_number also reads a `####` answer marker and drops thousands separators).
Run them with the chat template, as the suite does:

    lm_eval --model hf --model_args pretrained=outputs/smol/models/math --include_path outputs/smol/eval/lm_eval \
        --tasks posttrain --apply_chat_template

Any standard lm-eval task can be named beside them where its data is reachable (HF_DATASETS_OFFLINE=1
otherwise keeps everything local). The harmful score and over-refusal stay in the suite: they need the
refusal detector, which lm-eval has no metric for.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from components.atomic import atomic_dir
from components.evaluate.config import EvaluateConfig
from components.evaluate.suite import mc_items, split_rows

# The last number of an answer (sign, thousands separators, decimals).
NUMBER_PATTERN = r"(-?[0-9][0-9,]*(?:\.[0-9]+)?)(?![\s\S]*-?[0-9])"


def _task(name: str, data: Path, body: dict) -> dict:
    return {
        "task": name,
        "tag": ["posttrain"],
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data.resolve())}},
        "test_split": "test",
        **body,
    }


def export_tasks(curated_dir: Path, cfg: EvaluateConfig, seed: int, out_dir: Path) -> Path:
    """Write the task files to `out_dir` (atomically); returns it, to pass as lm_eval's --include_path."""
    questions = mc_items(split_rows(curated_dir, "domain_qa", cfg.split, cfg.mc_questions), cfg.mc_choices, seed)
    general = [
        (r["prompt"], r["choices"], r["choices"].index(r["completion"]))
        for r in split_rows(curated_dir, "general_mc", cfg.split, cfg.general_mc_questions)
    ]
    problems = split_rows(curated_dir, "math", cfg.split, cfg.math_problems)
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        for name, items in (("domain_mc", questions), ("general_mc", general)):
            with open(tmp / f"{name}.jsonl", "w") as f:
                for question, options, gold in items:
                    f.write(json.dumps({"question": question, "choices": options, "gold": gold}) + "\n")
        with open(tmp / "math.jsonl", "w") as f:
            for row in problems:
                f.write(json.dumps({"question": row["prompt"], "answer": row["answer"]}) + "\n")
        tasks = {
            **{
                name: _task(
                    f"posttrain_{name}",
                    out_dir / f"{name}.jsonl",
                    {
                        "output_type": "multiple_choice",
                        "doc_to_text": "{{question}}",
                        "doc_to_choice": "{{choices}}",
                        "doc_to_target": "{{gold}}",
                        "target_delimiter": "",
                        "metric_list": [
                            {"metric": "acc", "aggregation": "mean", "higher_is_better": True},
                            {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True},
                        ],
                    },
                )
                for name in ("domain_mc", "general_mc")
            },
            "math": _task(
                "posttrain_math",
                out_dir / "math.jsonl",
                {
                    "output_type": "generate_until",
                    "doc_to_text": "{{question}}",
                    "doc_to_target": "{{answer}}",
                    "generation_kwargs": {
                        "until": ["<|im_end|>"],
                        "do_sample": False,
                        "max_gen_toks": cfg.math_new_tokens,
                    },
                    "filter_list": [
                        {
                            "name": "last_number",
                            "filter": [
                                {"function": "regex", "regex_pattern": NUMBER_PATTERN, "group_select": 0},
                                {"function": "remove_whitespace"},
                                {"function": "take_first"},
                            ],
                        }
                    ],
                    "metric_list": [
                        {
                            "metric": "exact_match",
                            "aggregation": "mean",
                            "higher_is_better": True,
                            "ignore_punctuation": False,
                            "ignore_case": True,
                        }
                    ],
                },
            ),
        }
        for name, task in tasks.items():
            (tmp / f"{name}.yaml").write_text(yaml.safe_dump(task, sort_keys=False))
    return out_dir
