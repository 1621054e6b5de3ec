import math

import pytest
import torch

from edloss.synthetic import REGIMES, ExpectationConfig, MixtureConfig, log_dirichlet, log_gamma, sample_class_count, sample_expectation, sample_mixture


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_gamma_matches_moments_even_for_tiny_alpha():
    for alpha in (0.05, 0.5, 3.0):
        x = log_gamma(torch.full((100_000,), alpha), gen()).exp()
        assert torch.isfinite(x).all()
        assert x.mean().item() == pytest.approx(alpha, rel=0.05)
        assert x.var().item() == pytest.approx(alpha, rel=0.1)


def test_dirichlet_rows_sum_to_one_and_mean_is_uniform():
    log_q = log_dirichlet(torch.full((20_000,), 0.3), 7, gen())
    q = log_q.exp()
    assert torch.allclose(q.sum(1), torch.ones(20_000, dtype=torch.float64))
    assert torch.allclose(q.mean(0), torch.full((7,), 1 / 7, dtype=torch.float64), atol=0.01)


@pytest.mark.parametrize("k", [2, 10, 1000])
def test_mixture_covers_extreme_tails_and_every_regime(k):
    logits, labels, regime = sample_mixture(4000, k, MixtureConfig(), gen(k))
    assert logits.shape == (4000, k) and labels.shape == (4000,)
    assert torch.isfinite(logits).all()
    assert set(regime.tolist()) == set(range(len(REGIMES)))
    p_y = logits.softmax(1).gather(1, labels[:, None]).squeeze(1)
    assert p_y.min() < 1e-8
    assert (1 - p_y).min() < 1e-7
    assert ((labels >= 0) & (labels < k)).all()


def test_mixture_weights_control_the_regimes():
    only_wrong = MixtureConfig(confident_correct=0, confident_wrong=1, uncertain=0, boundary=0, dirichlet=0)
    logits, labels, regime = sample_mixture(500, 10, only_wrong, gen())
    assert (regime == REGIMES.index("confident_wrong")).all()
    assert (logits.argmax(1) != labels).all()


def test_same_seed_same_samples():
    a = sample_mixture(100, 10, MixtureConfig(), gen(5))
    b = sample_mixture(100, 10, MixtureConfig(), gen(5))
    assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_expectation_samples_predictions_around_each_truth():
    log_q, logits, truth = sample_expectation(6, 20, ExpectationConfig(predictions_per_truth=4), gen())
    assert log_q.shape == (6, 20) and logits.shape == (24, 20)
    assert truth.tolist() == [t for t in range(6) for _ in range(4)]
    assert torch.allclose(log_q.exp().sum(1), torch.ones(6, dtype=torch.float64))


def test_class_count_is_log_uniform_in_range():
    ks = [sample_class_count(2, 1000, gen(i)) for i in range(400)]
    assert min(ks) >= 2 and max(ks) <= 1000
    small = sum(k <= math.sqrt(2 * 1000) for k in ks) / len(ks)
    assert 0.35 < small < 0.65  # half the mass below the geometric midpoint


@pytest.mark.parametrize(
    "kwargs", [{"confident_wrong": -1.0}, {"confident_correct": 0, "confident_wrong": 0, "uncertain": 0, "boundary": 0, "dirichlet": 0}, {"dirichlet_alpha": (0.0, 1.0)}]
)
def test_bad_mixture_config_is_rejected(kwargs):
    with pytest.raises(ValueError):
        MixtureConfig(**kwargs)


def test_one_hot_truths_keep_their_predictions():
    cfg = ExpectationConfig(predictions_per_truth=3, one_hot_fraction=1.0)
    log_q, logits, truth = sample_expectation(50, 6, cfg, gen(1))
    soft_q, soft_logits, _ = sample_expectation(50, 6, ExpectationConfig(predictions_per_truth=3), gen(1))
    assert torch.equal(logits, soft_logits)  # the same predictions, only the truth sharpened
    q = log_q.exp()
    assert torch.equal(q.max(1).values, torch.ones(50, dtype=torch.float64))
    assert torch.equal(q.argmax(1), soft_q.argmax(1))
    with pytest.raises(ValueError, match="one_hot_fraction"):
        ExpectationConfig(one_hot_fraction=1.5)
