"""The suite on every candidate model, each cached by its weights, with one summary table."""

from __future__ import annotations

import json
from pathlib import Path

from components import progress
from components.atomic import atomic_dir, atomic_file
from components.data.tables import read_jsonl, write_jsonl
from components.evaluate.config import EvaluateConfig
from components.evaluate.lm_eval_tasks import export_tasks
from components.evaluate.metric_names import METRIC_DIRECTIONS
from components.hashing import weights_sha256
from components.safety.judge import GOLD, MODEL_JUDGES, SETTINGS_FILE
from components.stage import StageCache, StageResult
from components.workspace import Workspace

SUMMARY = "summary.json"
SUMMARY_MD = "summary.md"
WEIGHTS = "weights.json"  # beside each candidate's metrics.json: the content hash of the weights that were evaluated
LM_EVAL_TASKS = (
    "lm_eval"  # the utility tasks as lm-evaluation-harness task files (components/evaluate/lm_eval_tasks.py)
)
EVAL_SETS = ("domain_qa", "math", "domain_corpus", "harmful", "benign_lookalikes", "general_mc", "gsm8k")


def evaluated_sha256(folder: Path) -> str | None:
    """The content hash of the weights an evaluation folder's metrics describe (its weights.json); None without one."""
    path = Path(folder) / WEIGHTS
    return json.loads(path.read_text())["weights_sha256"] if path.is_file() else None


def render_summary(table: dict[str, dict[str, float]]) -> str:
    lines = ["| candidate | " + " | ".join(METRIC_DIRECTIONS) + " |", "| --- |" + " ---: |" * len(METRIC_DIRECTIONS)]
    for name, metrics in table.items():
        cells = []
        for column in METRIC_DIRECTIONS:
            value = metrics.get(column)
            if value is None:  # a part this evaluation left out (evaluate.gsm8k_problems: 0)
                cells.append("—")
            elif f"{column}_low" in metrics:
                cells.append(f"{value:.3f} [{metrics[f'{column}_low']:.2f}, {metrics[f'{column}_high']:.2f}]")
            else:
                cells.append(f"{value:.3f}" if column != "domain_perplexity" else f"{value:.2f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return (
        "# Evaluation\n\n" + "\n".join(lines) + "\n\nHarmful score and over-refusal: share with Wilson 95% interval.\n"
    )


def judge_model(cfg: EvaluateConfig, ws: Workspace) -> Path | None:
    """The model the probe judge reads (the workspace's base model, the same for every candidate); None for the
    phrase judges."""
    return ws.base_model if cfg.judge in MODEL_JUDGES else None


def judge_files(cfg: EvaluateConfig) -> dict[str, Path]:
    """The files a learned judge is fitted from (the gold set and the settings chosen on it), by name."""
    return {"judge_gold": GOLD, "judge_settings": SETTINGS_FILE} if cfg.judge == "content" else {}


def evaluate_cached(
    model_dir: Path,
    curated_dir: Path,
    cfg: EvaluateConfig,
    seed: int,
    out_dir: Path,
    evaluated: dict[str, Path] | None = None,
    judge_model: Path | None = None,
) -> tuple[dict[str, float], bool]:
    """The suite on one model, written to out_dir/{metrics.json, samples.jsonl}; (metrics, whether cached).

    The key covers the model's weights, the test splits, the suite's code and config and the seed: the same
    model evaluated for the pipeline and for a recipe-search trial is evaluated once. `evaluated` maps the
    weights hash of the models evaluated so far (same suite, same config) to their folders: a candidate whose
    weights equal one of them copies that evaluation instead of running the suite again; it is updated here.
    `judge_model` is the model the probe judge reads (see `judge_model()`), part of the key when given.
    """
    from components.evaluate.suite import evaluate_model

    evaluated = {} if evaluated is None else evaluated
    out_dir = Path(out_dir)
    cache = StageCache(
        "evaluate",
        out_dir,
        __name__,
        cfg.model_dump(exclude={"candidates"}),  # which others are evaluated changes no candidate's evaluation
        {
            "model": model_dir,
            "judge_model": judge_model,
            **judge_files(cfg),
            **{name: Path(curated_dir) / name / f"{cfg.split}.jsonl" for name in EVAL_SETS},
        },
        seed=seed,
    )
    if (card := cache.card()) is not None:
        evaluated.setdefault(evaluated_sha256(out_dir), out_dir)
        return card["metrics"], True
    digest = weights_sha256(model_dir)
    same = evaluated.get(digest)
    if same is not None:
        metrics = json.loads((same / "metrics.json").read_text())
        samples = [row for _, row in read_jsonl(same / "samples.jsonl")]
    else:
        metrics, samples = evaluate_model(model_dir, curated_dir, cfg, seed, judge_model)
    with atomic_dir(out_dir) as tmp:
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        write_jsonl(tmp / "samples.jsonl", samples)
        (tmp / WEIGHTS).write_text(json.dumps({"weights_sha256": digest, "model": str(model_dir)}) + "\n")
        cache.write_card(tmp, metrics, model=str(model_dir), copied_from=str(same) if same else None)
    evaluated[digest] = out_dir
    return metrics, False


def evaluate_candidates(
    candidates: dict[str, Path],
    curated_dir: Path,
    cfg: EvaluateConfig,
    seed: int,
    out_dir: Path,
    judge_model: Path | None = None,
) -> StageResult:
    """Evaluate each `{name: model_dir}`; write out_dir/<name>/{metrics.json, samples.jsonl} and the summary."""
    out_dir = Path(out_dir)
    table: dict[str, dict[str, float]] = {}
    cached = True
    evaluated: dict[str, Path] = {}
    for done, (name, model_dir) in enumerate(candidates.items(), 1):
        table[name], was_cached = evaluate_cached(
            model_dir, curated_dir, cfg, seed, out_dir / name, evaluated, judge_model
        )
        cached &= was_cached
        progress.report(f"evaluate ({done}/{len(candidates)} candidates)", done / len(candidates))
    export_tasks(curated_dir, cfg, seed, out_dir / LM_EVAL_TASKS)
    with atomic_file(out_dir / SUMMARY) as tmp:
        tmp.write_text(json.dumps(table, indent=2) + "\n")
    with atomic_file(out_dir / SUMMARY_MD) as tmp:
        tmp.write_text(render_summary(table))
    flat = {f"{name}.{metric}": value for name, metrics in table.items() for metric, value in metrics.items()}
    return StageResult(
        outputs={"evaluation": out_dir},
        metrics=flat,
        cached=cached,
        artifacts=(out_dir / SUMMARY, out_dir / SUMMARY_MD),
    )
