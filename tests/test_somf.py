"""SOMF on a model small enough to know the answer: a planted safety coordinate set that the mask must find."""

import torch

from components.safety.somf import fuse, learn_safety_mask


def test_fusion_takes_the_aligned_model_on_the_mask_and_the_fine_tuned_elsewhere():
    aligned, finetuned = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([10.0, 20.0, 30.0])
    mask = torch.tensor([True, False, True])
    assert torch.equal(fuse(aligned, finetuned, mask), torch.tensor([1.0, 20.0, 3.0]))


class Output:
    def __init__(self, loss):
        self.loss = loss


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


def test_identical_tensors_get_no_mask():
    same = {"w": torch.ones(6)}
    x = torch.ones(2, 6)
    assert learn_safety_mask(Probe(), same, dict(same), [{"x": x, "target": torch.zeros(2)}], steps=2) == {}


def test_realign_stage_writes_the_fusion_and_counts_the_mask(tmp_path, tiny_base):
    import json

    import pytest
    from transformers import AutoModelForCausalLM

    from components.config import RealignConfig
    from components.errors import InputError
    from components.safety.realign import realign_model
    from tests.test_merge import fine_tune

    aligned, finetuned = fine_tune(tiny_base, tmp_path / "aligned", 1), fine_tune(tiny_base, tmp_path / "ft", 2)
    data = tmp_path / "harmful.jsonl"
    data.write_text(
        "".join(
            json.dumps({"prompt": f"Do harm {i}", "completion": "I can't help with that."}) + "\n" for i in range(4)
        )
    )
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
    with pytest.raises(InputError, match="no safety rows"):
        realign_model(aligned, finetuned, data, cfg, tmp_path / "other")
    assert not (tmp_path / "other").exists()
