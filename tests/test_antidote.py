"""Antidote as its official code does it: the fine-tuning update's entries scored by Wanda, the top of each row
reverted to the aligned model; every case computed by hand."""

import json
import math

import pytest
import torch

from components.safety.antidote import (
    antidote_revert,
    collect_input_norms,
    revert,
    top_fraction_per_row,
    wanda_scores,
)


def test_wanda_score_of_the_update_by_hand():
    delta = torch.tensor([[1.0, -2.0], [0.5, 4.0]])
    norms = torch.tensor([3.0, 0.5])
    assert torch.equal(wanda_scores(delta, norms), torch.tensor([[3.0, 1.0], [1.5, 2.0]]))


def test_top_fraction_is_taken_in_each_row_ties_by_position():
    scores = torch.tensor([[3.0, 1.0, 2.0], [0.5, 4.0, 4.0]])
    assert torch.equal(top_fraction_per_row(scores, 0.34), torch.tensor([[True, False, False], [False, True, False]]))
    assert torch.equal(top_fraction_per_row(scores, 0.67), torch.tensor([[True, False, True], [False, True, True]]))
    assert not top_fraction_per_row(scores, 0.0).any()


def test_revert_takes_the_aligned_value_where_the_mask_is_set():
    finetuned, aligned = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([0.0, 0.0, 0.0])
    assert torch.equal(revert(finetuned, aligned, torch.tensor([False, True, False])), torch.tensor([1.0, 0.0, 3.0]))


class Block(torch.nn.Module):
    def __init__(self, weight):
        super().__init__()
        self.proj = torch.nn.Linear(2, 2, bias=False)
        with torch.no_grad():
            self.proj.weight.copy_(torch.tensor(weight))


class Body(torch.nn.Module):
    def __init__(self, second):
        super().__init__()
        self.layers = torch.nn.ModuleList([Block([[1.0, 0.0], [0.0, 1.0]]), Block(second)])


class TwoLayers(torch.nn.Module):
    """Named like a transformer (model.layers.<i>.proj), small enough to compute by hand."""

    def __init__(self, second):
        super().__init__()
        self.model = Body(second)

    def forward(self, input_ids, attention_mask):
        return self.model.layers[1].proj(self.model.layers[0].proj(input_ids))


ALIGNED = TwoLayers([[1.0, 1.0], [1.0, 1.0]]).state_dict()
FINETUNED = [[1.5, 3.0], [4.0, 1.2]]  # layer 1's update Δ = [[0.5, 2], [3, 0.2]]; layer 0 is not updated


def batch(tokens):
    return {"input_ids": torch.tensor([tokens]), "attention_mask": torch.ones(1, len(tokens))}


def test_input_norms_are_root_mean_squares_over_the_real_tokens():
    model = TwoLayers(FINETUNED)
    x = {
        "input_ids": torch.tensor([[[3.0, 0.0], [0.0, 4.0], [100.0, 100.0]]]),
        "attention_mask": torch.tensor([[1, 1, 0]]),
    }
    norms = collect_input_norms(model, [x], ["model.layers.0.proj"])
    assert torch.allclose(norms["model.layers.0.proj"], torch.tensor([3.0, 4.0]) / math.sqrt(2))


def test_the_top_update_entry_of_each_row_goes_back_to_the_aligned_weight():
    """Harmful tokens [3, 0] and [0, 1] reach layer 1 unchanged (layer 0 is the identity): ‖X‖ = [√4.5, √0.5].
    Scores |Δ|·‖X‖: row 0 [0.5·2.12, 2·0.71] = [1.06, 1.41] -> column 1; row 1 [3·2.12, 0.2·0.71] -> column 0."""
    model = TwoLayers(FINETUNED)
    reverted = antidote_revert(model, ALIGNED, [batch([[3.0, 0.0], [0.0, 1.0]])], ratio=0.5)
    assert reverted == {"model.layers.0.proj": 0, "model.layers.1.proj": 2}  # layer 0 has no update to revert
    assert torch.allclose(model.model.layers[1].proj.weight, torch.tensor([[1.5, 1.0], [1.0, 1.2]]))
    with pytest.raises(ValueError, match=r"prune ratio must be in \[0, 1\), got 1.0"):
        antidote_revert(model, ALIGNED, [], ratio=1.0)


def test_the_contrastive_score_keeps_what_benign_inputs_use_as_much():
    """Benign tokens [0, 2], [0, 2]: ‖X_benign‖ = [0, 2]; harmful minus benign = [2.12, −1.29]. Row 0's scores
    become [1.06, −2.59] -> column 0 now; row 1's [6.36, −0.26] -> column 0 still."""
    model = TwoLayers(FINETUNED)
    harmful, benign = batch([[3.0, 0.0], [0.0, 1.0]]), batch([[0.0, 2.0], [0.0, 2.0]])
    antidote_revert(model, ALIGNED, [harmful], ratio=0.5, benign_batches=[benign])
    assert torch.allclose(model.model.layers[1].proj.weight, torch.tensor([[1.0, 3.0], [1.0, 1.2]]))


def test_prune_stage_reverts_the_ratio_of_each_row_of_the_update_and_records_it(tmp_path, tiny_base):
    from transformers import AutoModelForCausalLM

    from components.errors import InputError
    from components.safety.config import PruneConfig
    from components.safety.prune import prune_model
    from tests.model_helpers import fine_tune

    aligned, finetuned = fine_tune(tiny_base, tmp_path / "aligned", 1), fine_tune(tiny_base, tmp_path / "ft", 2)
    calibration = tmp_path / "harmful.jsonl"
    calibration.write_text(
        "".join(
            json.dumps({"prompt": f"Harmful request {i}", "completion": f"Sure, step {i}..."}) + "\n" for i in range(4)
        )
    )
    result = prune_model(finetuned, aligned, calibration, PruneConfig(ratio=0.25, batch_size=2), tmp_path / "pruned")
    a, f, out = (
        AutoModelForCausalLM.from_pretrained(p).state_dict() for p in (aligned, finetuned, tmp_path / "pruned")
    )
    name = "model.layers.1.mlp.down_proj.weight"
    back = (out[name] == a[name]) & (a[name] != f[name])
    rows, columns = f[name].shape
    assert int(back.sum()) == rows * int(0.25 * columns)  # the fine-tune moved every entry of this layer
    assert bool(((out[name] == a[name]) | (out[name] == f[name])).all()), "each weight is one model's or the other's"
    assert torch.equal(out["model.embed_tokens.weight"], f["model.embed_tokens.weight"]), "only block linears"
    card = json.loads((tmp_path / "pruned" / "prune_card.json").read_text())
    assert card["reverted_per_layer"]["model.layers.1.mlp.down_proj"] == int(back.sum())
    assert result.metrics["reverted_share"] == pytest.approx(0.25, abs=0.02)

    calibration.write_text("")
    with pytest.raises(InputError, match="harmful calibration set is empty"):
        prune_model(finetuned, aligned, calibration, PruneConfig(), tmp_path / "other")
    assert not (tmp_path / "other").exists()
