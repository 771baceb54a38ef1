import pytest
import torch

from components.safety.antidote import antidote_prune, collect_input_norms, top_fraction_mask, wanda_scores


def test_wanda_score_by_hand():
    weight = torch.tensor([[1.0, -2.0], [0.5, 4.0]])
    norms = torch.tensor([3.0, 0.5])
    assert torch.equal(wanda_scores(weight, norms), torch.tensor([[3.0, 1.0], [1.5, 2.0]]))


def test_top_fraction_mask_picks_the_highest_scores():
    scores = torch.tensor([[3.0, 1.0], [1.5, 2.0]])
    assert torch.equal(top_fraction_mask(scores, 0.5), torch.tensor([[True, False], [False, True]]))
    assert not top_fraction_mask(scores, 0.0).any()


class Block(torch.nn.Module):
    def __init__(self, weight):
        super().__init__()
        self.proj = torch.nn.Linear(2, 2, bias=False)
        with torch.no_grad():
            self.proj.weight.copy_(torch.tensor(weight))


class Body(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = torch.nn.ModuleList([Block([[1.0, 1.0], [1.0, 1.0]]), Block([[0.1, 5.0], [0.2, 0.3]])])


class TwoLayers(torch.nn.Module):
    """Named like a transformer (model.layers.<i>.proj), small enough to compute by hand."""

    def __init__(self):
        super().__init__()
        self.model = Body()

    def forward(self, input_ids, attention_mask):
        return self.model.layers[1].proj(self.model.layers[0].proj(input_ids))


def test_input_norms_skip_padding_tokens():
    model = TwoLayers()
    x = torch.tensor([[[3.0, 0.0], [0.0, 4.0], [100.0, 100.0]]])  # the last token is padding
    norms = collect_input_norms(
        model, [{"input_ids": x, "attention_mask": torch.tensor([[1, 1, 0]])}], ["model.layers.0.proj"]
    )
    assert torch.allclose(norms["model.layers.0.proj"], torch.tensor([3.0, 4.0]))


def test_antidote_prunes_the_planted_harmful_weight():
    """Layer 1's input feature 1 carries the harmful activations and W[0, 1] = 5 is large: it must go first."""
    model = TwoLayers()
    x = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    # layer 0 outputs [1, 1] for both tokens, so layer 1's inputs have norms [sqrt 2, sqrt 2]
    pruned = antidote_prune(model, [{"input_ids": x, "attention_mask": torch.ones(1, 2)}], ratio=0.25)
    assert pruned == {"model.layers.0.proj": 1, "model.layers.1.proj": 1}
    second = model.model.layers[1].proj.weight.detach()
    assert second[0, 1] == 0 and second[0, 0].item() == pytest.approx(0.1) and second[1, 1].item() == pytest.approx(0.3)
    with pytest.raises(ValueError, match=r"prune ratio must be in \[0, 1\), got 1.0"):
        antidote_prune(model, [], ratio=1.0)


def test_prune_stage_zeroes_the_ratio_of_each_block_layer_and_records_it(tmp_path, tiny_base):
    import json

    from transformers import AutoModelForCausalLM

    from components.config import PruneConfig
    from components.errors import InputError
    from components.safety.prune import prune_model

    calibration = tmp_path / "harmful.jsonl"
    calibration.write_text(
        "".join(
            json.dumps({"prompt": f"Harmful request {i}", "completion": f"Sure, step {i}..."}) + "\n" for i in range(4)
        )
    )
    result = prune_model(tiny_base, calibration, PruneConfig(ratio=0.1, batch_size=2), tmp_path / "pruned")
    before = AutoModelForCausalLM.from_pretrained(tiny_base).state_dict()
    after = AutoModelForCausalLM.from_pretrained(tmp_path / "pruned").state_dict()
    name = "model.layers.1.mlp.down_proj.weight"
    newly_zero = (after[name] == 0) & (before[name] != 0)
    assert int(newly_zero.sum()) == int(0.1 * before[name].numel())
    assert torch.equal(after["model.embed_tokens.weight"], before["model.embed_tokens.weight"]), "only block linears"
    card = json.loads((tmp_path / "pruned" / "prune_card.json").read_text())
    assert card["pruned_per_layer"]["model.layers.1.mlp.down_proj"] == int(0.1 * before[name].numel())
    assert result.metrics["pruned_share"] == pytest.approx(0.1, abs=0.001)

    calibration.write_text("")
    with pytest.raises(InputError, match="harmful calibration set is empty"):
        prune_model(tiny_base, calibration, PruneConfig(), tmp_path / "other")
    assert not (tmp_path / "other").exists()


def test_utility_top_weights_are_spared():
    """Set difference (Wei et al.): the harmful top half minus the utility top quarter, by hand.

    Layer 1 sees inputs of equal norms, so both scores order its weights by |W|: harmful top half = W[0,1]=5 and
    W[1,1]=0.3; utility top quarter = W[0,1]. Only W[1,1] goes. Layer 0 (all ones, equal norms) keeps the
    first weight in position order, which both sets rank first, and prunes the second.
    """
    model = TwoLayers()
    x = {"input_ids": torch.tensor([[[1.0, 0.0], [0.0, 1.0]]]), "attention_mask": torch.ones(1, 2)}
    pruned = antidote_prune(model, [x], ratio=0.5, utility_batches=[x], keep_utility_top=0.25)
    assert pruned == {"model.layers.0.proj": 1, "model.layers.1.proj": 1}
    second = model.model.layers[1].proj.weight.detach()
    assert second[0, 1] == 5.0 and second[1, 1] == 0 and second[1, 0].item() == pytest.approx(0.2)
    first = model.model.layers[0].proj.weight.detach()
    assert first[0, 0] == 1.0 and first[0, 1] == 0
    with pytest.raises(ValueError, match="needs utility batches"):
        antidote_prune(model, [x], ratio=0.5, keep_utility_top=0.25)
