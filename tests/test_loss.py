"""The causal-LM loss with the head over labelled positions only: the paper-free definition by hand, and the same
gradient as the model's own loss, bit for bit."""

import math

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

from components.model.loss import head_cross_entropy, next_token_loss, plain_head


def test_the_loss_and_its_gradient_by_hand():
    hidden = torch.tensor([[[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]]], requires_grad=True)
    weight = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, -1.0]])
    labels = torch.tensor([[-100, 2, 0]])  # position 0 predicts token 2, position 1 token 0, position 2 nothing
    loss = head_cross_entropy(hidden, weight, labels)
    # logits W h: position 0 → (1, 0, 1), position 1 → (0, 2, −2)
    nll_0 = -(1 - math.log(math.e + 1 + math.e))
    nll_1 = -(0 - math.log(1 + math.e**2 + math.e**-2))
    assert loss.item() == pytest.approx((nll_0 + nll_1) / 2, rel=1e-6)
    loss.backward()
    p0 = torch.tensor([math.e, 1, math.e]) / (2 * math.e + 1)
    p1 = torch.tensor([1, math.e**2, math.e**-2]) / (1 + math.e**2 + math.e**-2)
    expected = torch.stack(
        [(p0 - torch.tensor([0, 0, 1.0])) @ weight, (p1 - torch.tensor([1.0, 0, 0])) @ weight, torch.zeros(2)]
    )
    assert torch.allclose(hidden.grad[0], expected / 2, atol=1e-6)
    # divided by the accumulated batch's label count where one is given, as under gradient accumulation
    assert head_cross_entropy(hidden, weight, labels, torch.tensor(8)).item() == pytest.approx(
        (nll_0 + nll_1) / 8, rel=1e-6
    )
    # no label at all: as the model's loss, a mean over nothing (nan), a sum over a given count (0)
    unlabelled = torch.full_like(labels, -100)
    assert head_cross_entropy(hidden, weight, unlabelled).isnan()
    assert head_cross_entropy(hidden, weight, unlabelled, torch.tensor(8)).item() == 0.0


def lora_model(seed: int = 0):
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=1000, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, tie_word_embeddings=True,
    )  # fmt: skip
    model = LlamaForCausalLM(config)
    return get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"]))


def a_batch() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 1000, (3, 17), generator=generator)
    attention = torch.ones_like(ids)
    attention[1, 12:] = 0  # a padded row
    labels = ids.masked_fill(attention == 0, -100)
    labels[:, :9] = -100  # a prompt: no loss on it
    return {"input_ids": ids, "attention_mask": attention, "labels": labels}


def gradients(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("num_items", [None, torch.tensor(40)])
def test_the_gradient_equals_the_model_losss_bit_for_bit(num_items):
    model = lora_model()
    assert plain_head(model) is not None
    batch = a_batch()
    extra = {} if num_items is None else {"num_items_in_batch": num_items}
    own = model(**batch, **extra).loss
    own.backward()
    expected = gradients(model)
    model.zero_grad()
    ours = next_token_loss(model, batch, num_items)
    ours.backward()
    assert torch.allclose(ours, own, rtol=1e-6)
    got = gradients(model)
    assert expected.keys() == got.keys() and all(torch.equal(got[n], expected[n]) for n in expected)


def test_slices_of_the_head_give_the_same_gradient():
    model = lora_model().get_base_model()
    batch = a_batch()
    hidden = model.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    leaf = hidden.detach().requires_grad_()
    head_cross_entropy(leaf, model.lm_head.weight, batch["labels"]).backward()
    whole = leaf.grad.clone()
    leaf.grad = None
    head_cross_entropy(leaf, model.lm_head.weight, batch["labels"], chunk_rows=8).backward()  # 19 rows: 3 slices
    assert torch.equal(leaf.grad, whole)


def test_a_head_that_is_trained_gets_the_models_own_loss():
    model = lora_model()
    model.get_output_embeddings().weight.requires_grad_(True)
    assert plain_head(model) is None
    batch = a_batch()
    assert torch.equal(next_token_loss(model, batch), model(**batch).loss)
