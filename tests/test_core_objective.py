import pytest
import torch

from edloss.lossnet import LossNetConfig, init_scale
from edloss.objective import (
    ObjectiveConfig,
    cross_entropy_penalty,
    evaluate,
    heldout_batches,
    mae_penalty,
    poly1_penalty,
    population_penalty,
    sample_batches,
)
from edloss.synthetic import ExpectationConfig

SMALL = {"evals_per_block": 1024, "min_items": 16}
KL = {"severity": "kl", "calibration_weight": 0.0}  # the objective under which CE is exactly optimal
SOFT = ExpectationConfig(one_hot_fraction=0.0)  # only soft truths: where properness shows most


def metrics(penalty, cfg, population=1):
    return {k: v[0].item() for k, v in evaluate(penalty, population, heldout_batches(cfg), cfg, all_metrics=True).items()}


def test_expectation_objective_recognises_cross_entropy_as_proper():
    cfg = ObjectiveConfig(expectation=SOFT, **KL, **SMALL)
    ce, mae = metrics(cross_entropy_penalty, cfg), metrics(mae_penalty, cfg)
    assert ce["value"] == 1.0 and ce["kendall_tau"] == 1.0  # E_q CE = H(q) + KL(q || p)
    assert mae["value"] < 0.7  # 1 - p_y is improper: it pays to over-predict the top class
    assert ce["anchor"] == pytest.approx(0.0, abs=1e-5)
    default = ObjectiveConfig(**KL, **SMALL)  # half the truths one-hot: MAE is consistent on those
    assert metrics(cross_entropy_penalty, default)["value"] == 1.0
    assert metrics(mae_penalty, default)["value"] < 0.85


def test_per_sample_objective_cannot_tell_good_losses_from_bad():
    """The paper read literally: any decreasing function of p_y scores perfectly."""
    cfg = ObjectiveConfig(kind="per_sample", severity="one_minus_py", **SMALL)
    assert metrics(cross_entropy_penalty, cfg)["value"] == pytest.approx(1.0, abs=1e-3)
    assert metrics(mae_penalty, cfg)["value"] == pytest.approx(1.0, abs=1e-3)


def test_soft_value_consistency_tracks_the_hard_one():
    cfg = ObjectiveConfig(**KL, soft=True, temperature=0.01, delta=1e-3, expectation=SOFT, **SMALL)  # soft scores need real gaps
    assert metrics(cross_entropy_penalty, cfg)["value"] > 0.9
    assert metrics(mae_penalty, cfg)["value"] < 0.75


def test_population_metrics_equal_one_at_a_time():
    net = LossNetConfig()
    theta = torch.randn(5, net.num_params, generator=torch.Generator().manual_seed(0)) * init_scale(net)
    cfg = ObjectiveConfig(gradient_weight=0.5, margin_weight=0.1, anchor_weight=0.1, **SMALL)
    batches = sample_batches(cfg, torch.Generator().manual_seed(1), class_counts=[3, 40])
    together = evaluate(population_penalty(theta, net), 5, batches, cfg)
    for i in range(5):
        alone = evaluate(population_penalty(theta[i : i + 1], net), 1, batches, cfg)
        for name in together:
            torch.testing.assert_close(together[name][i], alone[name][0], rtol=1e-4, atol=1e-5)


def test_fitness_is_the_weighted_sum_of_terms():
    net = LossNetConfig()
    theta = torch.randn(3, net.num_params, generator=torch.Generator().manual_seed(2)) * init_scale(net)
    cfg = ObjectiveConfig(value_weight=1.0, gradient_weight=0.5, anchor_weight=0.25, margin_weight=2.0, calibration_weight=0.75, **SMALL)
    m = evaluate(population_penalty(theta, net), 3, sample_batches(cfg, torch.Generator().manual_seed(3)), cfg)
    expected = m["value"] + 0.5 * m["gradient"] + 0.25 * m["anchor"] + 2.0 * m["margin"] + 0.75 * m["calibration"]
    torch.testing.assert_close(m["fitness"], expected)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"kind": "pairwise"}, "kind"),
        ({"severity": "one_minus_py"}, "not valid for the expectation"),
        ({"value_weight": 0.0, "calibration_weight": 0.0}, "not all zero"),
        ({"gradient_weight": -1.0}, ">= 0"),
        ({"classes": (1, 10)}, "classes"),
        ({"classes": (20, 10)}, "classes"),
        ({"temperature": 0.0}, "temperature"),
        ({"severity": "kl_disagreement", "disagreement_weight": -1.0}, "disagreement_weight"),
    ],
)
def test_bad_objective_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ObjectiveConfig(**kwargs)


def test_one_hot_truths_are_ranked_like_per_sample_labels():
    cfg = ObjectiveConfig(**KL, delta=1e-5, expectation=ExpectationConfig(one_hot_fraction=1.0), **SMALL)
    ce, mae = metrics(cross_entropy_penalty, cfg), metrics(mae_penalty, cfg)
    assert ce["value"] == 1.0
    assert mae["value"] > 0.99  # against a one-hot truth any decreasing function of p_y is consistent
    mixed = ObjectiveConfig(**KL, delta=1e-5, expectation=ExpectationConfig(one_hot_fraction=0.5), **SMALL)
    assert metrics(cross_entropy_penalty, mixed)["value"] == 1.0
    assert metrics(mae_penalty, mixed)["value"] < 0.9


def test_kl_disagreement_severity_is_ranked_perfectly_by_poly1_not_ce():
    """E_q Poly-1 = H(q) + 1 + KL(q || p) - q.p: Poly-1 is to kl_disagreement what CE is to KL."""
    cfg = ObjectiveConfig(severity="kl_disagreement", disagreement_weight=1.0, **SMALL)
    poly, ce = metrics(poly1_penalty, cfg), metrics(cross_entropy_penalty, cfg)
    assert poly["value"] == 1.0 and poly["kendall_tau"] == 1.0
    assert ce["value"] < 0.95
    zero = ObjectiveConfig(severity="kl_disagreement", disagreement_weight=0.0, **SMALL)
    assert metrics(cross_entropy_penalty, zero)["value"] == 1.0  # eps = 0 is plain KL


def test_calibration_is_zero_for_the_proper_loss_of_the_severity_only():
    cfg = ObjectiveConfig(severity="kl", calibration_weight=1.0, **SMALL)
    ce = metrics(cross_entropy_penalty, cfg)
    assert ce["calibration"] == pytest.approx(0.0, abs=1e-4)  # E_q CE differences are KL differences
    assert ce["fitness"] == pytest.approx(ce["value"] + ce["calibration"])
    squared = metrics(lambda logp, labels: cross_entropy_penalty(logp, labels) ** 2, cfg)
    assert squared["value"] > 0.8 and squared["calibration"] < -0.3  # mostly in order, wrong proportions
    poly = ObjectiveConfig(severity="kl_disagreement", calibration_weight=1.0, **SMALL)
    assert metrics(poly1_penalty, poly)["calibration"] == pytest.approx(0.0, abs=1e-4)


def test_label_noise_objective_prefers_the_noise_corrected_loss():
    """Labels through a symmetric channel, ranking by the clean severity: forward-corrected CE
    (proper for the noisy labels, minimised at the clean truth) must outrank plain CE, which is
    proper for the *noisy* label distribution and so prefers predictions smeared toward it."""
    import math

    from edloss.objective import ObjectiveConfig, cross_entropy_penalty, evaluate, noisy_label_distribution, sample_batches

    q = torch.softmax(torch.randn(5, 7), 1)
    noisy = noisy_label_distribution(q, 0.6)
    torch.testing.assert_close(noisy.sum(1), torch.ones(5))
    torch.testing.assert_close(noisy_label_distribution(q, 0.0), q)
    eta = 0.6
    cfg = ObjectiveConfig(classes=(10, 10), label_noise=eta, evals_per_block=2048, severity="kl", calibration_weight=0.0)

    def forward(logp, labels):
        k = logp.shape[-1]
        p_y = logp.gather(-1, labels.expand(*logp.shape[:-1], labels.shape[-1])).exp()
        return -torch.log((1 - eta * k / (k - 1)) * p_y + eta / (k - 1))

    batches = sample_batches(cfg, torch.Generator().manual_seed(0))
    ce = evaluate(cross_entropy_penalty, 1, batches, cfg)["value"].item()
    fc = evaluate(forward, 1, batches, cfg)["value"].item()
    assert fc > ce + 0.02, (fc, ce)
    with pytest.raises(ValueError, match="label_noise"):
        ObjectiveConfig(label_noise=1.5)
    with pytest.raises(ValueError, match="expectation objective"):
        ObjectiveConfig(kind="per_sample", severity="one_minus_py", label_noise=0.2)
    assert math.isfinite(fc)


def test_label_noise_draws_only_class_counts_where_labels_still_inform():
    from edloss.objective import ObjectiveConfig

    assert ObjectiveConfig(label_noise=0.4).class_range == (2, 1000)  # 0.4 < 1/2
    assert ObjectiveConfig(label_noise=0.6).class_range == (3, 1000)  # K = 2 at 0.6: labels mostly lie
    assert ObjectiveConfig(label_noise=0.8).class_range == (6, 1000)  # 0.8 < 5/6
    with pytest.raises(ValueError, match="needs K >= 6"):
        ObjectiveConfig(label_noise=0.8, classes=(2, 5))
