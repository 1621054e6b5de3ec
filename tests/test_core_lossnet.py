import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from edloss.features import FEATURES, MONOTONE_FEATURES, check_feature_names, compute_features, label_features
from edloss.lossnet import LossNet, LossNetConfig, init_scale, population_forward


@given(
    k=st.integers(2, 60),
    n=st.integers(1, 20),
    population=st.integers(1, 6),
    hidden=st.lists(st.integers(1, 12), min_size=1, max_size=3),
    features=st.lists(st.sampled_from(sorted(FEATURES)), min_size=1, max_size=4, unique=True).filter(lambda f: f != ["rank"]),
    monotone=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_population_form_equals_module_form(k, n, population, hidden, features, monotone, seed):
    if monotone:
        features = [f for f in features if f in MONOTONE_FEATURES] or ["p_y"]
    cfg = LossNetConfig(features=tuple(features), hidden=tuple(hidden), form="monotone" if monotone else "free")
    g = torch.Generator().manual_seed(seed)
    theta = torch.randn(population, cfg.num_params, generator=g) * init_scale(cfg)
    logp = torch.log_softmax(torch.randn(n, k, generator=g) * 4, 1)
    target = torch.randint(0, k, (n,), generator=g)
    batched = population_forward(theta, compute_features(logp, target, cfg.features), cfg)
    for i in range(population):
        module = LossNet.from_flat(theta[i], cfg)
        base = -logp.gather(1, target[:, None]).squeeze(1) if monotone else 0.0  # the monotone form adds -log p_y
        torch.testing.assert_close(module(logp, target), batched[i] + base, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(module.flat(), theta[i])


def test_every_label_form_matches_one_label_form():
    logp = torch.log_softmax(torch.randn(9, 13) * 3, 1)
    names = tuple(FEATURES)
    every = label_features(logp, torch.arange(13), names)  # (9, 13, F)
    for y in range(13):
        one = compute_features(logp, torch.full((9,), y), names)
        torch.testing.assert_close(every[:, y], one)


@pytest.mark.parametrize("k", [2, 10, 100, 1000])
def test_k_free_features_do_not_depend_on_class_count_at_uniform(k):
    """log(K p_y), both margins and the normalised entropy mean the same at every K; p_y (in the
    default, so that Poly-1's 1 - p_y is representable) deliberately does not."""
    logp = torch.log_softmax(torch.zeros(1, k), 1)
    feats = compute_features(logp, torch.zeros(1, dtype=torch.long), ("log_kpy", "margin", "logit_margin", "entropy"))
    torch.testing.assert_close(feats, torch.tensor([[0.0, 0.0, 0.0, 1.0]]), atol=1e-5, rtol=0)


def test_bad_architecture_is_rejected():
    with pytest.raises(ValueError, match="unknown feature"):
        check_feature_names(["p_y", "nope"])
    with pytest.raises(ValueError, match="no gradient"):
        check_feature_names(["rank"])
    with pytest.raises(ValueError, match="hidden"):
        LossNetConfig(hidden=(0,))
    with pytest.raises(ValueError, match="activation"):
        LossNetConfig(activation="sigmoidish")
    with pytest.raises(ValueError, match="entries"):
        population_forward(torch.zeros(2, 5), torch.zeros(3, 3), LossNetConfig())


def test_parameter_count():
    cfg = LossNetConfig(features=("p_y", "margin"), hidden=(4,), form="free")
    assert cfg.num_params == 2 * 4 + 4 + 4 + 1
    assert init_scale(cfg)[:8].tolist() == pytest.approx([1 / math.sqrt(2)] * 8)
