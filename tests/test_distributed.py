"""The multi-process training path for real: two CPU processes (gloo), FSDP through accelerate, on tiny."""

import json
import subprocess
import sys
from pathlib import Path

from safetensors.torch import load_file

from components.config import load_params
from flows.stages import DATA
from tests.conftest import REPO, free_port


def test_fsdp_training_on_two_cpu_processes_writes_one_merged_model(params_file: Path):
    params = load_params(params_file, "tiny")
    for stage in DATA[:4]:  # base-model, sources, curate, validate
        stage.run(params)
    launch = subprocess.run(
        [
            str(Path(sys.executable).parent / "accelerate"),
            "launch",
            "--config_file",
            str(REPO / "configs/accelerate/fsdp-cpu.yaml"),
            "--main_process_port",
            str(free_port()),
            "-m",
            "flows",
            "stage",
            "train-math",
            "--params",
            str(params_file),
            "--profile",
            "tiny",
            "--no-tracking",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert launch.returncode == 0, launch.stderr[-3000:]
    assert launch.stdout.count("[train-math] done") == 2  # both processes trained; one wrote the model

    card = json.loads((params.ws.job_model("math") / "stage.json").read_text())
    assert card["metrics"]["processes"] == 2.0 and card["metrics"]["steps"] == 2.0
    base = load_file(params.ws.base_model / "model.safetensors")
    trained = load_file(params.ws.job_model("math") / "model.safetensors")
    assert {k: v.shape for k, v in trained.items()} == {k: v.shape for k, v in base.items()}  # gathered, not shards
    assert (trained["model.embed_tokens.weight"] == base["model.embed_tokens.weight"]).all()  # LoRA leaves it alone
    assert not (
        trained["model.layers.0.self_attn.q_proj.weight"] == base["model.layers.0.self_attn.q_proj.weight"]
    ).all()
    assert (params.ws.job_work("math") / "adapter" / "adapter_config.json").is_file()
