"""Merge methods against answers computed by hand on small tensors, following each paper's definition."""

import math

import pytest
import torch

from components.merge import methods

BASE = torch.tensor([1.0, 1.0, 1.0, 1.0])


def t(*values):
    return torch.tensor(values)


def test_task_arithmetic_by_hand():
    # τ1 = [1, 0, -1, 2], τ2 = [0, 2, 1, -2]; θ = base + λ(w1 τ1 + w2 τ2) with w = (1, 0.5), λ = 2
    experts = [BASE + t(1, 0, -1, 2), BASE + t(0, 2, 1, -2)]
    merged = methods.task_arithmetic(BASE, experts, [1.0, 0.5], lam=2.0)
    assert torch.allclose(merged, BASE + 2 * t(1, 1, -0.5, 1))


def test_magnitude_trim_keeps_the_top_k_by_absolute_value():
    assert torch.equal(methods.magnitude_trim(t(0.1, -3.0, 2.0, -0.5), 0.5), t(0, -3.0, 2.0, 0))
    assert torch.equal(methods.magnitude_trim(t(0.1, -3.0, 2.0, -0.5), 0.1), t(0, -3.0, 0, 0))  # at least one
    assert torch.equal(methods.magnitude_trim(t(1.0, 2.0), 1.0), t(1.0, 2.0))


def test_ties_by_hand():
    # τ1 = [ 3, -1,  2, 0.5]  trim 50% -> [ 3, 0, 2, 0]
    # τ2 = [-2, -4,  1, 0.1]  trim 50% -> [-2, -4, 0, 0]
    # τ3 = [ 1,  2, -3, 0.2]  trim 50% -> [ 0,  2, -3, 0]
    # weights 1: elected sign of the sums [1, -2, -1, 0] -> [+, -, -, +]
    # agreeing entries: col0 {3}; col1 {-4}; col2 {-3}; col3 none
    # disjoint mean: [3, -4, -3, 0]; λ = 0.5
    experts = [BASE + t(3, -1, 2, 0.5), BASE + t(-2, -4, 1, 0.1), BASE + t(1, 2, -3, 0.2)]
    merged = methods.ties(BASE, experts, [1, 1, 1], [0.5, 0.5, 0.5], lam=0.5)
    assert torch.allclose(merged, BASE + 0.5 * t(3, -4, -3, 0))


def test_ties_weights_enter_the_vote_and_the_mean():
    # τ1 = [2], τ2 = [-1] with w = (0.25, 1): weighted [0.5, -1], sign -, mean of agreeing w τ / w = -1 / 1
    merged = methods.ties(t(0.0), [t(2.0), t(-1.0)], [0.25, 1.0], [1.0, 1.0])
    assert torch.allclose(merged, t(-1.0))
    unnormalized = methods.ties(t(0.0), [t(2.0), t(-1.0)], [0.25, 1.0], [1.0, 1.0], normalize=False)
    assert torch.allclose(unnormalized, t(-1.0))


def test_pcb_scores_by_hand():
    # two tasks, d = 2 (so the outlier clip keeps everything but caps at the 1st of 2 sorted values)
    taus = torch.tensor([[1.0, 3.0], [2.0, -1.0]])
    clipped, beta = methods.pcb_scores(taus, ratio=1.0, outlier=0.0)
    # |τ| clip: row max capped at sorted[int(2*(1-0))-1] = the largest, so nothing changes
    assert torch.equal(clipped, taus)
    # intra: exp(n · minmax(|τ_i|)^2), n = 2: row 1 |τ| = [1, 3] -> [0, 1] -> [1, e^2]; row 2 [2, 1] -> [1, 0] -> [e^2, 1]
    intra = torch.tensor([[1.0, math.exp(2)], [math.exp(2), 1.0]])
    # inter: tanh(τ_i · Σ_j τ_j), Σ = [3, 2]: [[tanh 3, tanh 6], [tanh 6, tanh(-2)]]
    inter = torch.tanh(torch.tensor([[3.0, 6.0], [6.0, -2.0]]))
    scores = intra * inter
    # ratio 1 keeps all; each row min-max normalised
    expected = (scores - scores.min(1, keepdim=True).values) / (
        scores.max(1, keepdim=True).values - scores.min(1, keepdim=True).values
    )
    assert torch.allclose(beta, expected)


def test_pcb_drops_the_low_scores_and_rescales_the_rest():
    taus = torch.tensor([[1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 3.0, 4.0]])
    _, beta = methods.pcb_scores(taus, ratio=0.5, outlier=0.0)
    # identical rows: scores increase with |τ|; the lower half clamps to the 3rd smallest and normalises to 0
    assert torch.equal(beta[0, :3], torch.zeros(3)) and beta[0, 3] == 1.0
    merged = methods.pcb(torch.zeros(4), [taus[0], taus[1]], ratio=0.5, lam=1.0, outlier=0.0)
    # only the last entry survives; both tasks agree there, so the weighted mean is 4
    assert torch.allclose(merged, t(0, 0, 0, 4.0))


def test_whole_model_pcb_bounds_are_those_of_the_flattened_model():
    from components.merge.methods.pcb import balance, quantile_bounds, whole_model_bounds

    generator = torch.Generator().manual_seed(0)
    pieces = [torch.randn(2, size, generator=generator) for size in (7, 30, 3)]  # three tensors' task vectors
    magnitude, score = whole_model_bounds(lambda: iter(pieces), 40, 2, ratio=0.3, outlier=0.05)
    flat = torch.cat(pieces, dim=1)
    # the official code's clamp on the flattened model: |τ| at 0-based ranks ⌊40·0.05⌋ = 2 and ⌊40·0.95⌋ − 1 = 37
    ordered = flat.abs().sort(dim=1).values
    assert torch.equal(magnitude[0], ordered[:, 2:3]) and torch.equal(magnitude[1], ordered[:, 37:38])
    scores = balance(flat, magnitude)[1].sort(dim=1).values  # then its scores at rank ⌊40·0.7⌋ = 28, and their max
    assert torch.equal(score[0], scores[:, 28:29]) and torch.equal(score[1], scores[:, 39:40])
    assert torch.equal(torch.cat(quantile_bounds(flat.abs(), 0.05, 0.05), 1), torch.cat(magnitude, 1))


def test_lines_scales_linearly_with_depth():
    assert methods.lines_factor(0, 5, alpha=0.2, beta=0.8) == 0.2
    assert methods.lines_factor(4, 5, alpha=0.2, beta=0.8) == pytest.approx(1.0)
    assert methods.lines_factor(2, 5, alpha=0.2, beta=0.8) == pytest.approx(0.6)


def test_magnitude_trim_equals_a_stable_sort_with_many_equal_values():
    tau = torch.tensor([0.5, -0.5, 0.5, 2.0, -0.5, 0.1, 0.5, -3.0])
    for density in (0.25, 0.5, 0.625, 0.75):
        k = max(1, int(density * tau.numel()))
        keep = torch.argsort(tau.abs(), descending=True, stable=True)[:k]
        expected = torch.zeros_like(tau)
        expected[keep] = tau[keep]
        assert torch.equal(methods.magnitude_trim(tau, density), expected), density
