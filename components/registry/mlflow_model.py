"""A pipeline model directory as an MLflow transformers model: what every registered version stores.

`mlflow.transformers.save_model` writes the MLflow layout (`MLmodel` with the `llm/v1/chat` task, its
signature and an input example, the pip requirements, and the lineage as metadata; the weights under `model/`,
the tokenizer and chat template under `components/tokenizer/`), so `mlflow.pyfunc.load_model`,
`mlflow.transformers.load_model` and `mlflow models serve -m models:/<name>@champion` work on the version.
The weights are re-serialised from the loaded model (same tensors; `components.hashing.weights_sha256` is the
identity the registry keeps). `model_directory` turns a downloaded copy back into one Hugging Face directory.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path

WEIGHTS = "model"  # MLflow's folder for the weights inside the saved model
TOKENIZER = Path("components") / "tokenizer"
INPUT_EXAMPLE = {"messages": [{"role": "user", "content": "What does Python's heapq.heappush do?"}], "max_tokens": 16}
REQUIREMENTS = ("torch", "transformers", "accelerate", "mlflow")


# One save at a time per process: loading a model initialises it on the meta device through process-global
# state (two threads loading at once get tensors without data), and hub_offline changes the environment.
_ONE_AT_A_TIME = threading.Lock()


@contextlib.contextmanager
def hub_offline() -> Iterator[None]:
    """MLflow looks up a model card on the Hub by the model's name; a registration never goes to the network."""
    before = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = before


def save_chat_model(model_dir: Path, out: Path, metadata: dict[str, str]) -> None:
    """`model_dir` saved as an MLflow transformers chat model in `out` (which must not exist yet)."""
    import mlflow.transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # pinned to what runs here: MLflow's own guess names torchvision and keeps torch's local "+cpu" label
    pins = [f"{package}=={version(package).split('+')[0]}" for package in REQUIREMENTS]
    with _ONE_AT_A_TIME, hub_offline():
        model = AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        mlflow.transformers.save_model(
            transformers_model={"model": model, "tokenizer": tokenizer},
            path=str(out),
            task="llm/v1/chat",
            input_example=INPUT_EXAMPLE,
            pip_requirements=pins,
            metadata=metadata,
        )


def model_directory(saved: Path) -> Path:
    """The weights folder of a downloaded MLflow transformers model, with its tokenizer files copied beside them,
    so the project's own loaders (chat, evaluation) read it as one Hugging Face directory."""
    weights = Path(saved) / WEIGHTS
    if not (Path(saved) / "MLmodel").is_file() or not weights.is_dir():
        return Path(saved)  # already a plain model directory
    for file in (Path(saved) / TOKENIZER).iterdir():
        shutil.copy2(file, weights / file.name)
    return weights
