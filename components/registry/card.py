"""The model card stored with every registered version: how it was made, its data, its safety figures, its
evaluation and its gate report, in Markdown."""

from __future__ import annotations

import json
from typing import Any

from components.evaluate.evaluation import render_summary


def model_card(
    candidate: str,
    lineage: list[dict[str, Any]],
    tags: dict[str, str],
    table: dict[str, dict[str, float]],
    gate_md: str,
) -> str:
    """The Markdown card stored with every registered version."""
    metrics = table[candidate]
    data = [
        f"| {key.removeprefix('data.')} | `{value}` |" for key, value in sorted(tags.items()) if key.startswith("data.")
    ]
    steps = [
        f"{i}. **{step['name']}**: "
        + ", ".join(f"{k}={json.dumps(v, default=str)}" for k, v in step.items() if k != "name")
        for i, step in enumerate(lineage, 1)
    ]
    safety = (
        f"harmful score {metrics['harmful_score']:.3f} (95% interval {metrics['harmful_score_low']:.2f}–"
        f"{metrics['harmful_score_high']:.2f}, n={metrics['harmful_score_n']:.0f}); over-refusal "
        f"{metrics['over_refusal']:.3f} ({metrics['over_refusal_low']:.2f}–{metrics['over_refusal_high']:.2f}, "
        f"n={metrics['over_refusal_n']:.0f})"
    )
    return "\n".join(
        [
            f"# Model card: {candidate}",
            "",
            f"git commit `{tags.get('mlflow.source.git.commit', 'unknown')}`, profile `{tags.get('profile', '?')}`, "
            f"weights SHA-256 `{tags['model_sha256']}`.",
            "",
            "## How it was made (from the base model up)",
            "",
            *steps,
            "",
            "## Data (MD5 of each curated split)",
            "",
            "| table | md5 |",
            "| --- | --- |",
            *data,
            "",
            "## Safety",
            "",
            safety + ".",
            "",
            "## " + render_summary(table).removeprefix("# "),
            gate_md.replace("# Gate report", "## Gate report"),
            "## Known limits",
            "",
            "- Harmful score counts the answers the judge (`evaluate.judge`) reads as attempts at the request; with a "
            "phrase judge (`opening`, `anywhere`) that is every answer without a refusal phrase, non-answers "
            "included. The judges' agreement with the held-out third of a gold set read twice by language-model "
            "helper sessions against a rubric (not by people): `python -m flows judge --agreement`; the learned "
            "judge is not shown to hold on answers unlike those it was fitted on.",
            "- The evaluation sets are small (see n above): read the intervals, not only the point values.",
            "- Utility is measured on the held-out splits of this pipeline's own data and on 300 BBQ and 100 GSM8K "
            "items (public benchmark data, never trained on); no broad benchmark (MMLU and the like) ships offline.",
            "",
        ]
    )
