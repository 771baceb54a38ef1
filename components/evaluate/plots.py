"""Pictures of a run: safety against utility with the Pareto front, the experts' loss curves, and where each
model moved from the base.

`pareto_front`, `loss_curve` and `layer_norms` are pure functions (tested by hand); the `plot_*` functions
draw them with matplotlib's file backend and write PNGs.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import safe_open

from components.model.tensors import layer_of


def pareto_front(points: dict[str, tuple[float, float]]) -> list[str]:
    """The names no other point dominates, with (utility, harmful score): utility up, harm down; by utility."""

    def dominated(u: float, h: float) -> bool:
        return any(u2 >= u and h2 <= h and (u2 > u or h2 < h) for u2, h2 in points.values())

    return sorted((name for name, (u, h) in points.items() if not dominated(u, h)), key=lambda n: points[n])


def layer_norms(base: dict[str, torch.Tensor], model: dict[str, torch.Tensor]) -> dict[int, float]:
    """‖τ_l‖₂ per transformer block l, with τ = θ_model − θ_base the task vector (Ilharco et al., 2023)."""
    squares: dict[int, float] = {}
    for name, tensor in model.items():
        layer = layer_of(name)
        if layer is not None:
            squares[layer] = squares.get(layer, 0.0) + float((tensor.float() - base[name].float()).pow(2).sum())
    return {layer: value**0.5 for layer, value in sorted(squares.items())}


def loss_curve(log_history: list[dict]) -> tuple[list[int], list[float]]:
    """(steps, training losses) from a Trainer's `state.log_history`; evaluation and summary entries are skipped."""
    entries = [entry for entry in log_history if "loss" in entry and "step" in entry]
    return [int(entry["step"]) for entry in entries], [float(entry["loss"]) for entry in entries]


def _tensors(model_dir: Path) -> dict[str, torch.Tensor]:
    tensors = {}
    for shard in sorted(Path(model_dir).glob("*.safetensors")):
        with safe_open(shard, "pt") as f:
            tensors |= {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118 (a safetensors handle)
    return tensors


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: no display here, none needed
    import matplotlib.pyplot as plt

    return plt


def plot_safety_vs_utility(
    table: dict[str, dict[str, float]],
    out: Path,
    utility: str = "domain_mc_acc_norm",
    champion: str | None = None,
    highlight: list[str] | None = None,
    title: str | None = None,
    star_label: str = "champion",
) -> Path:
    """Every candidate at (utility, harmful score) with its interval, labelled; the Pareto front as a line.

    `champion` names the point drawn as a star (`star_label` in the legend); `highlight` the points drawn in red
    (default: the 2-D front).
    """
    plt = _pyplot()
    points = {name: (m[utility], m["harmful_score"]) for name, m in table.items()}
    front = pareto_front(points)
    red = set(front if highlight is None else highlight)
    fig, ax = plt.subplots(figsize=(8, 6))
    for name, (u, h) in points.items():
        m = table[name]
        ax.errorbar(
            u,
            h,
            yerr=[[h - m.get("harmful_score_low", h)], [m.get("harmful_score_high", h) - h]],
            fmt="o",
            color="tab:red" if name in red else "tab:gray",
            capsize=3,
            alpha=0.8,
        )
        ax.annotate(name, (u, h), textcoords="offset points", xytext=(5, 5), fontsize=7)
    ax.plot([points[n][0] for n in front], [points[n][1] for n in front], "--", color="tab:red", label="Pareto front")
    if champion is not None:
        ax.plot(
            *points[champion],
            marker="*",
            markersize=18,
            color="gold",
            markeredgecolor="black",
            linestyle="none",
            label=f"{star_label}: {champion}",
        )
    ax.set_xlabel(f"utility: {utility} (higher is better)")
    ax.set_ylabel("harmful score, Wilson 95% interval (lower is better)")
    if title:
        ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def plot_loss_curves(histories: dict[str, list[dict]], out: Path) -> Path:
    """Training loss against step for every expert, on one figure."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 5))
    for name, history in histories.items():
        steps, losses = loss_curve(history)
        ax.plot(steps, losses, marker="." if len(steps) < 30 else None, label=name)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def plot_task_vector_layers(base_dir: Path, models: dict[str, Path], out: Path) -> Path:
    """‖θ_model − θ_base‖ per block for every model: where experts differ (what layer swapping and LiNeS use)."""
    plt = _pyplot()
    base = _tensors(base_dir)
    fig, ax = plt.subplots(figsize=(8, 5))
    colors = plt.get_cmap("tab20").colors  # the default cycle repeats after 10 models, a pipeline has more
    for index, (name, model_dir) in enumerate(models.items()):
        norms = layer_norms(base, _tensors(model_dir))
        ax.plot(list(norms), list(norms.values()), marker=".", label=name, color=colors[index % len(colors)])
    ax.set_yscale("symlog", linthresh=1e-3)  # pruning moves some blocks 30x more than fine-tuning does
    ax.set_xlabel("transformer block")
    ax.set_ylabel("‖task vector‖₂ of the block")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
