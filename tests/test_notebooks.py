"""The notebooks run top to bottom on the tiny pipeline's run (so they never rot), and are committed without outputs."""

import csv
import json
from pathlib import Path

import nbformat
import pytest
from mlflow.tracking import MlflowClient
from nbclient import NotebookClient

from components.config import load_params
from tests.conftest import REPO
from tests.test_cli import flows

NOTEBOOKS = REPO / "notebooks"


def execute(name: str) -> nbformat.NotebookNode:
    """Run every cell in a fresh kernel, in notebooks/ as a user would; a failing cell raises with its traceback."""
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    NotebookClient(
        notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}}
    ).execute()
    return notebook


def text_of(notebook: nbformat.NotebookNode) -> str:
    return "\n".join(
        output.get("text", "") + json.dumps(output.get("data", {}).get("text/plain", ""))
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.outputs
    )


def images_in(notebook: nbformat.NotebookNode) -> int:
    return sum(
        "image/png" in output.get("data", {})
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.outputs
    )


@pytest.mark.parametrize("path", sorted(NOTEBOOKS.glob("*.ipynb")), ids=lambda p: p.name)
def test_notebooks_are_committed_without_outputs(path: Path):
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{path.name}: run `make strip-notebooks`"


def test_report_notebook_reproduces_the_last_runs_tables_from_mlflow(
    tiny_pipeline: Path, mlflow_server: str, tmp_path: Path, monkeypatch
):
    params = load_params(tiny_pipeline, "tiny")
    # a one-trial study of its own, so that the notebook's search section has a search to read
    search = flows(
        "search",
        "--params",
        str(tiny_pipeline),
        "--profile",
        "tiny",
        "--set",
        "search.trials=1",
        "--set",
        "search.study_name=notebook-test",
        tracking_uri=mlflow_server,
    )
    assert search.returncode == 0, search.stderr[-3000:]
    monkeypatch.setenv("POSTTRAIN_TRACKING_URI", mlflow_server)
    monkeypatch.setenv("POSTTRAIN_EXPERIMENT", params.tracking.experiment)
    monkeypatch.setenv("POSTTRAIN_FIGURES", str(tmp_path))
    notebook = execute("pipeline_report.ipynb")

    # the evaluation table it rebuilt from MLflow metrics is the evaluate stage's own summary
    assert json.loads((tmp_path / "evaluation.json").read_text()) == json.loads(
        (params.ws.eval / "summary.json").read_text()
    )
    curves = json.loads((params.ws.report / "loss_curves.json").read_text())
    assert set(curves) == set(params.train.jobs)
    # the champion is starred as this run's candidate if this run made it, else by its version
    client = MlflowClient(tracking_uri=mlflow_server)
    champion = client.get_model_version_by_alias(params.registry.model_name, "champion")
    experiment = client.get_experiment_by_name(params.tracking.experiment).experiment_id
    last = client.search_runs([experiment], "tags.stage = 'evaluate'", order_by=["attributes.start_time DESC"])[0]
    label = (
        champion.tags["candidate"]
        if champion.tags["pipeline_run"] == last.data.tags["mlflow.parentRunId"]
        else f"champion ({params.registry.model_name} v{champion.version})"
    )
    assert f"| champion: {label}" in text_of(notebook)
    for figure in ("safety_vs_utility.png", "loss_curves.png", "task_vector_layers.png", "search_trials.png"):
        assert (tmp_path / figure).read_bytes()[:4] == b"\x89PNG"
    assert images_in(notebook) == 4
    trial = json.loads(params.ws.search.trials.read_text())[0]
    rows = list(csv.DictReader((tmp_path / "search_trials.csv").open()))
    assert [(row["trial"], float(row["domain_perplexity"])) for row in rows] == [
        (trial["name"], trial["metrics"]["domain_perplexity"])
    ]


def test_merge_by_hand_notebook_matches_the_merge_engine(tiny_pipeline: Path, monkeypatch):
    monkeypatch.setenv("POSTTRAIN_RUN_DIR", str(load_params(tiny_pipeline, "tiny").ws.run_dir))
    notebook = execute("merge_by_hand.ipynb")  # its own asserts compare the hand computation with both
    output = text_of(notebook)
    assert "max |by hand − ties()| =" in output and "max |by hand − merge engine| =" in output
    assert images_in(notebook) == 1
