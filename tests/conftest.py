"""Shared fixtures: a params file whose workspace is a temporary folder, and the tiny base model built once."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Nothing in the tests may reach a model hub.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.pop("MLFLOW_TRACKING_URI", None)


@pytest.fixture
def params_file(tmp_path: Path) -> Path:
    """The repository's params.yaml, copied beside a fresh workspace (relative paths resolve to tmp_path)."""
    target = tmp_path / "params.yaml"
    shutil.copy(REPO / "params.yaml", target)
    return target


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny profile's base model directory, built once per test session."""
    from components.config import load_params
    from components.model.base import build_base_model

    out = tmp_path_factory.mktemp("tiny") / "base_model"
    build_base_model(load_params(REPO / "params.yaml", "tiny").base_model, out)
    return out
