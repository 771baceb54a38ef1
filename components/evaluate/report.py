"""Report stage: the run's pictures and one Markdown page that shows them.

- safety_vs_utility.png: every candidate with its harmful-score interval, the Pareto front, the champion starred;
- loss_curves.png: the training loss of every train job on one figure (from each job's log_history.json);
- task_vector_layers.png: ‖θ − θ_base‖ per block for every candidate (where the experts differ);
- loss_curves.json: the curves' numbers, so a notebook can redraw them from the MLflow artifacts alone.

The pictures are redrawn only when what they show changed: the evaluation table, the models behind it,
the loss histories, or the champion.
"""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

from components.atomic import atomic_dir
from components.errors import InputError
from components.evaluate.evaluation import SUMMARY, render_summary
from components.evaluate.plots import loss_curve, plot_loss_curves, plot_safety_vs_utility, plot_task_vector_layers
from components.stage import StageCache, StageResult, read_card

SAFETY_VS_UTILITY = "safety_vs_utility.png"
LOSS_CURVES = "loss_curves.png"
TASK_VECTOR_LAYERS = "task_vector_layers.png"
LOSS_DATA = "loss_curves.json"
REPORT_MD = "report.md"


def draw_report(
    eval_dir: Path,
    candidates: dict[str, Path],
    histories: dict[str, Path],
    champion: tuple[str, dict[str, float]] | None,
    out_dir: Path,
) -> StageResult:
    """The figures and report.md from eval_dir/summary.json, the candidates' weights and the jobs' loss histories.

    `champion` is (label, metrics): the label of a candidate of the table, or a point of its own when the
    registry's champion came from another run.
    """
    eval_dir, out_dir = Path(eval_dir), Path(out_dir)
    summary = eval_dir / SUMMARY
    if not summary.is_file():
        raise InputError(f"{summary}: missing; run the evaluate stage first")
    table = json.loads(summary.read_text())
    models = {name: (read_card(eval_dir / name) or {}).get("key") for name in table}  # the eval keys hash the weights
    found = {name: path for name, path in histories.items() if Path(path).is_file()}
    cache = StageCache(
        "report", out_dir, __name__, {"table": table, "models": models, "champion": champion}, dict(found)
    )
    artifacts = (out_dir,)
    if (done := cache.result({"report": out_dir}, artifacts)) is not None:
        return done
    label, drawn = None, table
    if champion is not None:
        label, metrics = champion
        drawn = {**table, label: table.get(label, metrics)}
    loaded = {name: json.loads(Path(path).read_text()) for name, path in found.items()}
    figures = []
    with atomic_dir(out_dir) as tmp:
        plot_safety_vs_utility(drawn, tmp / SAFETY_VS_UTILITY, champion=label)
        figures.append(("Safety against utility", SAFETY_VS_UTILITY))
        if loaded:
            plot_loss_curves(loaded, tmp / LOSS_CURVES)
            figures.append(("Training loss of the experts", LOSS_CURVES))
            curves = {
                name: dict(zip(("steps", "losses"), loss_curve(history), strict=True))
                for name, history in loaded.items()
            }
            (tmp / LOSS_DATA).write_text(json.dumps(curves, indent=1) + "\n")
        others = {name: path for name, path in candidates.items() if name != "base"}
        if "base" in candidates and others:
            plot_task_vector_layers(candidates["base"], others, tmp / TASK_VECTOR_LAYERS)
            figures.append(("Task vector norm per block", TASK_VECTOR_LAYERS))
        (tmp / REPORT_MD).write_text(report_markdown(figures, table, label))
        cache.write_card(tmp, {}, figures=[name for _, name in figures])
    return StageResult(outputs={"report": out_dir}, artifacts=artifacts)


def report_markdown(figures: list[tuple[str, str]], table: dict[str, dict[str, float]], champion: str | None) -> str:
    """A page with every figure (relative links) above the evaluation table."""
    lines = ["# Post-train report", ""]
    if champion:
        lines += [f"Champion: **{champion}**.", ""]
    for title, name in figures:
        lines += [f"## {title}", "", f"![{title}]({name})", ""]
    return "\n".join(lines) + "\n" + render_summary(table).replace("# Evaluation", "## Evaluation")


def inline_images(markdown: str, folder: Path) -> str:
    """Markdown whose relative PNG links become data URIs: a page that shows its figures wherever it is stored
    (the Prefect UI renders a Markdown artifact as it is and cannot reach files on the worker)."""

    def data_uri(match: re.Match) -> str:
        path = Path(folder) / match.group(2)
        if not path.is_file():
            return match.group(0)
        return f"![{match.group(1)}](data:image/png;base64,{base64.b64encode(path.read_bytes()).decode()})"

    return re.sub(r"!\[([^\]]*)\]\(([^):/]+\.png)\)", data_uri, markdown)
