"""SOMF on a model small enough to know the answer: a planted safety coordinate set that the mask must find."""

import math

import pytest
import torch

from components.safety.resta import restore_safety
from components.safety.somf import (
    concrete_fusion,
    concrete_sample,
    dpo_loss,
    export_mask,
    fuse,
    learn_concrete_mask,
    learn_safety_mask,
    safety_mask_logits,
    sequence_logprobs,
)
from tests.model_helpers import realign_inputs


def test_fusion_takes_the_aligned_model_on_the_mask_and_the_fine_tuned_elsewhere():
    aligned, finetuned = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([10.0, 20.0, 30.0])
    mask = torch.tensor([True, False, True])
    assert torch.equal(fuse(aligned, finetuned, mask), torch.tensor([1.0, 20.0, 3.0]))


class Output:
    def __init__(self, loss, logits=None):
        self.loss = loss
        self.logits = logits


class Probe(torch.nn.Module):
    """loss = mean((x · w − target)²): only the weights that see nonzero inputs on the safety data matter."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(6))

    def forward(self, x, target):
        return Output(((x @ self.w) - target).pow(2).mean())


def test_mask_selects_the_planted_safety_coordinates_and_nothing_else():
    aligned = {"w": torch.tensor([1.0, -1.0, 0.5, 0.0, 0.0, 0.0])}
    # fine-tuning moved every coordinate; only 0-2 are read by the safety data
    finetuned = {"w": torch.tensor([-1.0, 1.0, -0.5, 2.0, -2.0, 3.0])}
    x = torch.zeros(16, 6)
    x[:, :3] = torch.randn(16, 3, generator=torch.Generator().manual_seed(0))
    target = x @ aligned["w"]  # the aligned model answers the safety data perfectly
    mask = learn_safety_mask(Probe(), aligned, finetuned, [{"x": x, "target": target}], steps=300, lr=0.1, sparsity=0.5)
    assert mask["w"].tolist() == [True, True, True, False, False, False]
    fused = fuse(aligned["w"], finetuned["w"], mask["w"])
    assert torch.equal(fused, torch.tensor([1.0, -1.0, 0.5, 2.0, -2.0, 3.0]))


def test_retained_answers_keep_the_coordinates_they_need():
    aligned = {"w": torch.tensor([1.0, -1.0, 0.5, 0.0, 0.0, 0.0])}
    finetuned = {"w": torch.tensor([-1.0, 1.0, -0.5, 2.0, -2.0, 3.0])}
    x = torch.zeros(16, 6)
    x[:, :3] = torch.randn(16, 3, generator=torch.Generator().manual_seed(0))
    safety = [{"x": x, "target": x @ aligned["w"]}]
    # what the fine-tuned model must keep doing reads coordinate 2 strongly, and needs its fine-tuned value there
    kept = torch.zeros(16, 6)
    kept[:, 2] = 3 * torch.randn(16, generator=torch.Generator().manual_seed(1))
    retain = [{"x": kept, "target": kept @ finetuned["w"]}]
    without = learn_safety_mask(Probe(), aligned, finetuned, safety, steps=300, lr=0.1, sparsity=0.5)
    assert without["w"].tolist() == [True, True, True, False, False, False]
    mask = learn_safety_mask(
        Probe(), aligned, finetuned, safety, steps=300, lr=0.1, sparsity=0.5, retain_batches=retain
    )
    assert mask["w"].tolist() == [True, True, False, False, False, False]


def test_identical_tensors_get_no_mask():
    same = {"w": torch.ones(6)}
    x = torch.ones(2, 6)
    assert learn_safety_mask(Probe(), same, dict(same), [{"x": x, "target": torch.zeros(2)}], steps=2) == {}


def test_realign_stage_writes_the_fusion_and_counts_the_mask(tmp_path, tiny_base):
    import json

    from transformers import AutoModelForCausalLM

    from components.errors import InputError
    from components.safety.config import RealignConfig
    from components.safety.realign import realign_model

    aligned, finetuned, data = realign_inputs(tmp_path, tiny_base)
    cfg = RealignConfig(model="ft", steps=30, lr=0.5, sparsity=0.0, batch_size=2)
    result = realign_model(aligned, finetuned, data, cfg, tmp_path / "out")
    a, f, out = (AutoModelForCausalLM.from_pretrained(p).state_dict() for p in (aligned, finetuned, tmp_path / "out"))
    from_aligned = sum(int(((out[n] == a[n]) & (a[n] != f[n])).sum()) for n in out if n != "lm_head.weight")
    assert all(bool(((out[n] == a[n]) | (out[n] == f[n])).all()) for n in out), (
        "every weight is one model's or the other's"
    )
    assert from_aligned == result.metrics["masked_weights"] > 0
    card = json.loads((tmp_path / "out" / "realign_card.json").read_text())
    assert sum(card["masked_per_tensor"].values()) == from_aligned

    data.write_text("")
    with pytest.raises(InputError, match="no rows to learn the mask from"):
        realign_model(aligned, finetuned, data, cfg, tmp_path / "other")
    assert not (tmp_path / "other").exists()


def test_realign_reads_the_retained_tables_and_names_a_bad_row(tmp_path, tiny_base):
    import json

    from components.errors import InputError
    from components.safety.config import RealignConfig
    from components.safety.realign import realign_model
    from tests.model_helpers import fine_tune

    aligned, finetuned = fine_tune(tiny_base, tmp_path / "aligned", 1), fine_tune(tiny_base, tmp_path / "ft", 2)
    data, kept = tmp_path / "safety.jsonl", tmp_path / "math.jsonl"
    data.write_text(
        "".join(json.dumps({"id": i, "prompt": f"Do harm {i}", "completion": "No."}) + "\n" for i in range(4))
    )
    kept.write_text(
        "".join(json.dumps({"id": f"m{i}", "prompt": f"{i} + 1?", "completion": f"{i + 1}"}) + "\n" for i in range(4))
    )
    cfg = RealignConfig(model="ft", steps=2, batch_size=2, retain=["math"], retain_rows=3)
    first = realign_model(aligned, finetuned, data, cfg, tmp_path / "a", retain_data=[kept])
    assert first.metrics["differing_weights"] > 0
    kept.write_text(kept.read_text() + json.dumps({"id": "m9", "prompt": "9 + 1?"}) + "\n")
    # every retained row needs a completion; the bad one is named
    with pytest.raises(InputError, match=r"math.jsonl: row 'm9' has no completion"):
        realign_model(
            aligned, finetuned, data, cfg.model_copy(update={"retain_rows": 5}), tmp_path / "a", retain_data=[kept]
        )


def autograd_mask_logits(model, aligned, finetuned, batches, steps, lr, sparsity, init_logit, retain_batches):
    """The refusal mask's objective left whole to autograd, as the paper writes it: the form the stage's
    memory-lean steps must equal."""
    from torch.func import functional_call

    names = [n for n, _ in model.named_parameters() if not torch.equal(aligned[n], finetuned[n])]
    deltas = {n: (aligned[n] - finetuned[n]).float() for n in names}
    logits = {n: torch.full(deltas[n].shape, init_logit, requires_grad=True) for n in names}
    optimizer = torch.optim.Adam(logits.values(), lr=lr)
    total = sum(d.numel() for d in deltas.values())
    model.eval()
    for step in range(steps):
        params = {n: finetuned[n].float() + torch.sigmoid(logits[n]) * deltas[n] for n in names}
        loss = functional_call(model, params, args=(), kwargs=batches[step % len(batches)]).loss
        loss = loss + functional_call(model, params, args=(), kwargs=retain_batches[step % len(retain_batches)]).loss
        density = sum(torch.sigmoid(s).sum() for s in logits.values()) / total
        optimizer.zero_grad()
        (loss + sparsity * density).backward()
        optimizer.step()
    return {n: s.detach() for n, s in logits.items()}


@pytest.mark.parametrize("embeddings_differ", [False, True], ids=["lora-like", "tied-embeddings-differ"])
def test_the_lean_mask_steps_equal_autograd_over_the_whole_objective(tmp_path, tiny_base, embeddings_differ):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from components.safety.realign import completion_batches
    from tests.model_helpers import fine_tune

    aligned_dir, finetuned_dir = fine_tune(tiny_base, tmp_path / "a", 1), fine_tune(tiny_base, tmp_path / "f", 2)
    tokenizer = AutoTokenizer.from_pretrained(finetuned_dir)
    rows = [{"prompt": f"Do harm {i}", "completion": "I can't help with that."} for i in range(4)]
    kept = [{"prompt": f"What is {i} + 1?", "completion": f"It is {i + 1}."} for i in range(4)]
    safety, retain = (completion_batches(tokenizer, r, "completion", 2, 64) for r in (rows, kept))
    aligned = AutoModelForCausalLM.from_pretrained(aligned_dir).state_dict()
    if not embeddings_differ:  # as after LoRA; else the tied embeddings / LM head read θ(s) in both their places
        aligned["model.embed_tokens.weight"] = AutoModelForCausalLM.from_pretrained(finetuned_dir).state_dict()[
            "model.embed_tokens.weight"
        ]
    settings = dict(steps=4, lr=0.3, sparsity=2.0, init_logit=-0.5, retain_batches=retain)

    model = AutoModelForCausalLM.from_pretrained(finetuned_dir)
    finetuned = {n: t.detach() for n, t in model.state_dict().items()}
    before = {n: t.clone() for n, t in finetuned.items()}
    lean = safety_mask_logits(model, aligned, finetuned, safety, **settings)
    assert model.is_gradient_checkpointing is False and not model.training, "the model is handed back as it was"
    assert all(torch.equal(t, before[n]) for n, t in model.state_dict().items()), "and holds θ_ft again"
    assert all(not p.requires_grad or p.grad is None for p in model.parameters())

    reference_model = AutoModelForCausalLM.from_pretrained(finetuned_dir)
    reference_finetuned = {n: t.detach() for n, t in reference_model.state_dict().items()}
    reference = autograd_mask_logits(reference_model, aligned, reference_finetuned, safety, **settings)
    assert lean.keys() == reference.keys() and len(lean) > 0
    # θ(s) is formed per loss and its two gradients reach s one by one, a float sum in another order; Adam divides
    # tiny gradients by their own size, which turns that rounding into up to ~1e-5 here (4 steps of lr 0.3: a
    # wrong gradient moves logits by about the learning rate)
    for n in lean:
        torch.testing.assert_close(lean[n], reference[n], rtol=0, atol=1e-4, msg=n)
    assert all(torch.equal(lean[n] > 0, reference[n] > 0) for n in lean)
    assert any(bool((lean[n] > 0).any()) for n in lean), "some coordinates were taken back: the test has teeth"


class HalfUsed(torch.nn.Module):
    """Probe's loss on `w`; `spare` differs between the models but no loss reads it."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(6))
        self.spare = torch.nn.Parameter(torch.zeros(3))

    def forward(self, x, target):
        return Output(((x @ self.w) - target).pow(2).mean())


def test_a_differing_tensor_no_loss_reads_still_takes_the_density_step():
    aligned = {"w": torch.tensor([1.0, -1.0, 0.5, 0.0, 0.0, 0.0]), "spare": torch.tensor([1.0, 2.0, 3.0])}
    finetuned = {"w": torch.tensor([-1.0, 1.0, -0.5, 2.0, -2.0, 3.0]), "spare": torch.zeros(3)}
    x = torch.randn(8, 6, generator=torch.Generator().manual_seed(0))
    batches = [{"x": x, "target": x @ aligned["w"]}]
    settings = dict(steps=3, lr=0.3, sparsity=2.0, init_logit=-0.5, retain_batches=batches)

    def model(values):
        probe = HalfUsed()
        with torch.no_grad():
            for n, p in probe.named_parameters():
                p.copy_(values[n])
        return probe

    lean = safety_mask_logits(model(finetuned), aligned, finetuned, batches, **settings)
    reference = autograd_mask_logits(model(finetuned), aligned, finetuned, batches, **settings)
    assert (lean["spare"] < -0.5).all(), "the density term pushed the unread tensor's logits down"
    for n in ("w", "spare"):
        torch.testing.assert_close(lean[n], reference[n], rtol=0, atol=1e-4, msg=n)


# --- SOMF as the official code does it: concrete mask, rescaled task vector, DPO


def test_concrete_sample_follows_the_relaxed_bernoulli_formula():
    logits = torch.tensor([0.0, 1.5, -20.0, 20.0])
    u = torch.rand(4, generator=torch.Generator().manual_seed(3)).clamp(1e-6, 1 - 1e-6)
    expected = torch.sigmoid((logits + torch.log(u) - torch.log(1 - u)) / 0.5)
    sample = concrete_sample(logits, 0.5, torch.Generator().manual_seed(3))
    assert torch.allclose(sample, expected)
    assert sample[2] < 1e-6 and sample[3] > 1 - 1e-6  # far logits are hard 0 and 1


def test_the_kept_task_vector_is_rescaled_by_the_mean_of_the_mask():
    aligned, tau = torch.ones(4), torch.tensor([2.0, 4.0, 6.0, 8.0])
    kept = torch.tensor([True, False, True, False])  # mean 0.5: the kept entries count double
    assert torch.equal(concrete_fusion(aligned, tau, kept), torch.tensor([5.0, 1.0, 13.0, 1.0]))
    assert torch.equal(concrete_fusion(aligned, tau, kept, rescale=False), torch.tensor([3.0, 1.0, 7.0, 1.0]))
    assert torch.equal(concrete_fusion(aligned, tau, torch.zeros(4, dtype=torch.bool)), aligned)
    assert export_mask(torch.tensor([-0.1, 0.0, 0.2])).tolist() == [False, False, True]


def test_dpo_loss_and_sequence_log_probabilities_by_hand():
    # β((−1 − −2) − (−3 − −2)) = 0.1 · 2: the loss is log(1 + e^−0.2)
    loss = dpo_loss(torch.tensor([-1.0]), torch.tensor([-3.0]), torch.tensor([-2.0]), torch.tensor([-2.0]), 0.1)
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-0.2)))
    logits = torch.tensor([[[0.0, math.log(3.0)], [5.0, 5.0]]])  # position 0 predicts token 1 with p = 3/4
    assert sequence_logprobs(logits, torch.tensor([[-100, 1]])).item() == pytest.approx(math.log(0.75))


class Scorer(torch.nn.Module):
    """Two prompts (0: harmful, reads w[0:3]; 1: benign look-alike, reads w[3:6]) and two answers (1: the
    preferred one); the answer's logit after the prompt is the prompt's features · w."""

    def __init__(self, w):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(w))
        self.register_buffer("features", torch.tensor([[1.0, 1, 1, 0, 0, 0], [0, 0, 0, 1, 1, 1]]))

    def forward(self, input_ids, attention_mask):
        score = self.features[input_ids[:, 0]] @ self.w
        zero = torch.zeros_like(score)
        first = torch.stack([zero, score], dim=-1)
        return Output(None, torch.stack([first, torch.zeros_like(first)], dim=1))


def test_the_concrete_mask_reverts_the_harmful_update_and_keeps_the_benign_one():
    """The fine-tune turned the harmful prompt's preference around (w[0:3]: 1 -> −1) and learnt the look-alike
    (w[3:6]: 0 -> 1). DPO on both pairs must drop the first part of τ and keep the second, rescaled by 1/mean."""
    aligned = {"w": torch.tensor([1.0, 1, 1, 0, 0, 0])}
    finetuned = {"w": torch.tensor([-1.0, -1, -1, 1, 1, 1])}
    chosen = {"input_ids": torch.tensor([[0, 1], [1, 1]]), "attention_mask": torch.ones(2, 2)}
    chosen["labels"] = torch.tensor([[-100, 1], [-100, 1]])
    rejected = {"input_ids": torch.tensor([[0, 0], [1, 0]]), "attention_mask": torch.ones(2, 2)}
    rejected["labels"] = torch.tensor([[-100, 0], [-100, 0]])
    kept = learn_concrete_mask(
        Scorer(finetuned["w"].tolist()), aligned, finetuned, [(chosen, rejected)], steps=200, lr=0.05
    )
    assert kept["w"].tolist() == [False, False, False, True, True, True]
    fused = concrete_fusion(aligned["w"], finetuned["w"] - aligned["w"], kept["w"])
    assert torch.equal(fused, torch.tensor([1.0, 1, 1, 2, 2, 2]))


def test_realign_stage_with_the_concrete_dpo_variant(tmp_path, tiny_base):
    import json

    from transformers import AutoModelForCausalLM

    from components.errors import InputError
    from components.safety.config import RealignConfig
    from components.safety.realign import realign_model
    from tests.model_helpers import fine_tune

    aligned, finetuned = fine_tune(tiny_base, tmp_path / "aligned", 1), fine_tune(tiny_base, tmp_path / "ft", 2)
    pairs = tmp_path / "pairs.jsonl"
    rows = [{"id": f"h{i}", "prompt": f"Do harm {i}", "chosen": "I can't help.", "rejected": "Sure."} for i in range(3)]
    rows.append({"id": "b0", "prompt": "How do I kill a process?", "chosen": "Use kill PID.", "rejected": "I can't."})
    pairs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = RealignConfig(model="ft", method="concrete_dpo", steps=4, lr=0.01, init_logit=0.0, batch_size=2)
    result = realign_model(aligned, finetuned, pairs, cfg, tmp_path / "out")
    a, f, out = (AutoModelForCausalLM.from_pretrained(p).state_dict() for p in (aligned, finetuned, tmp_path / "out"))
    name = "model.layers.0.mlp.up_proj.weight"
    back = out[name] == a[name]
    share_kept = 1 - back.float().mean()
    assert 0 < share_kept < 1
    # kept coordinates carry the task vector rescaled by 1 / (share kept)
    assert torch.allclose(out[name][~back], (a[name] + (f[name] - a[name]) / share_kept)[~back], atol=1e-5)
    card = json.loads((tmp_path / "out" / "realign_card.json").read_text())
    assert card["masked_per_tensor"][name] == int(back.sum()) and result.metrics["masked_weights"] > 0

    # without the rescale the kept coordinates are the fine-tuned model's own
    realign_model(aligned, finetuned, pairs, cfg.model_copy(update={"rescale": False}), tmp_path / "plain")
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "plain").state_dict()[name]
    back = plain == a[name]
    assert 0 < back.float().mean() < 1 and torch.allclose(plain[~back], f[name][~back], atol=1e-6)

    pairs.write_text(json.dumps({"id": "x", "prompt": "p", "completion": "c"}) + "\n")
    with pytest.raises(InputError, match=r"row 'x' has no chosen, rejected"):
        realign_model(aligned, finetuned, pairs, cfg, tmp_path / "other")


# --- RESTA, the training-free comparison: the safety vector added back


def test_resta_adds_the_safety_vector_by_hand():
    finetuned, aligned, base = (
        torch.tensor([1.0, 2.0, -1.0]),
        torch.tensor([0.5, 1.0, 0.0]),
        torch.tensor([0.0, 1.0, 1.0]),
    )
    # τ_safe = aligned − base = [0.5, 0, −1]; θ* = θ_ft + 2 τ_safe
    assert torch.equal(restore_safety(finetuned, aligned, base, 2.0), torch.tensor([2.0, 2.0, -3.0]))
    assert torch.equal(restore_safety(finetuned, base, base), finetuned)


def test_realign_stage_with_resta(tmp_path, tiny_base):
    import json

    from transformers import AutoModelForCausalLM

    from components.errors import InputError
    from components.safety.config import RealignConfig
    from components.safety.realign import realign_model
    from tests.model_helpers import fine_tune

    aligned, finetuned = fine_tune(tiny_base, tmp_path / "aligned", 1), fine_tune(tiny_base, tmp_path / "ft", 2)
    cfg = RealignConfig(model="ft", method="resta", scale=0.5)
    result = realign_model(aligned, finetuned, None, cfg, tmp_path / "out", tiny_base)
    a, f, b, out = (
        AutoModelForCausalLM.from_pretrained(p).state_dict() for p in (aligned, finetuned, tiny_base, tmp_path / "out")
    )
    for name in out:
        assert torch.allclose(out[name], f[name] + 0.5 * (a[name] - b[name]), atol=1e-6), name
    moved = [n for n in out if not torch.equal(a[n], b[n]) and n != "lm_head.weight"]  # tied to the embeddings
    assert result.metrics["safety_vector_tensors"] == len(moved) > 0
    assert json.loads((tmp_path / "out" / "realign_card.json").read_text())["base"] == str(tiny_base)
    with pytest.raises(InputError, match="base model"):
        realign_model(aligned, finetuned, None, cfg, tmp_path / "other")
    assert not (tmp_path / "other").exists()
