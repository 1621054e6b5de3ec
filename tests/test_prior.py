"""EDLLoss(class_counts=...): the prior-aware (logit-adjusted) loss, and its input checks."""

import math

import pytest
import torch

from hypothesis import given, settings
from hypothesis import strategies as st

from edloss import EDLLoss
from edloss.loss import LONGTAIL_MIN_IMBALANCE, regime_loss_name

COUNTS = [500, 200, 80, 30, 10]
CIFAR10_LT = [4468, 2678, 1605, 962, 577, 345, 207, 124, 74, 44]  # CIFAR-10 at imbalance 100 after the validation cut


def test_counts_adjust_the_logits_by_the_log_prior():
    z, y = torch.randn(64, 5, generator=torch.Generator().manual_seed(0)), torch.randint(0, 5, (64,))
    prior = torch.tensor(COUNTS, dtype=torch.float64)
    shifted = z + (prior / prior.sum()).log().float()
    for name in ("default", "longtail-k10"):
        torch.testing.assert_close(EDLLoss.pretrained(name, class_counts=COUNTS)(z, y), EDLLoss.pretrained(name)(shifted, y))
        torch.testing.assert_close(EDLLoss.pretrained(name, class_counts=torch.tensor(COUNTS), prior_strength=0.5)(z, y),
                                   EDLLoss.pretrained(name)(z + 0.5 * (prior / prior.sum()).log().float(), y))


def test_equal_counts_change_nothing_and_gradients_match_the_unfused_path():
    z, y = torch.randn(32, 5, requires_grad=True), torch.randint(0, 5, (32,))
    torch.testing.assert_close(EDLLoss.pretrained(class_counts=[7] * 5)(z, y), EDLLoss.pretrained()(z, y))
    (fused,) = torch.autograd.grad(EDLLoss.pretrained(class_counts=COUNTS)(z, y), z)
    (plain,) = torch.autograd.grad(EDLLoss.pretrained(class_counts=COUNTS, fused=False)(z, y), z)
    torch.testing.assert_close(fused, plain, rtol=1e-5, atol=1e-6)


def _same_weights(a: EDLLoss, b: EDLLoss) -> bool:
    return all(torch.equal(p, q) for p, q in zip(a.net.state_dict().values(), b.net.state_dict().values())) and a.scale == b.scale


def test_long_tailed_counts_pick_the_loss_evolved_for_a_long_tail_at_its_class_count():
    longtail, default = EDLLoss.pretrained("longtail-k10"), EDLLoss.pretrained()
    assert not _same_weights(longtail, default)
    assert _same_weights(EDLLoss.pretrained(class_counts=CIFAR10_LT), longtail)  # 4468 : 44 over 10 classes
    assert _same_weights(EDLLoss.pretrained(class_counts=[300] + [10] * 9), longtail)  # exactly the threshold, 30
    assert _same_weights(EDLLoss.pretrained(class_counts=[299] + [10] * 9), default)  # milder: the default's weights
    assert _same_weights(EDLLoss.pretrained(class_counts=[4468, 3459, 2678, 2073, 1605, 1243, 962, 745, 577, 446]), default)  # CIFAR-10-LT at 10
    assert _same_weights(EDLLoss.pretrained(class_counts=[7] * 10), default)
    assert _same_weights(EDLLoss.pretrained(class_counts=COUNTS), default)  # 5 classes: no long-tail loss ships for K = 5
    assert _same_weights(EDLLoss.pretrained("default", class_counts=CIFAR10_LT), default)  # a name is obeyed
    noise = EDLLoss.pretrained(noise_rate=0.4, class_counts=CIFAR10_LT)
    assert _same_weights(noise, EDLLoss.pretrained("noise-0.4")) and noise.log_prior is not None


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(1, 10**6), min_size=2, max_size=12))
def test_the_choice_follows_the_class_count_and_the_largest_to_smallest_ratio(counts):
    long_tailed = len(counts) == 10 and max(counts) / min(counts) >= LONGTAIL_MIN_IMBALANCE
    assert regime_loss_name(counts) == ("longtail-k10" if long_tailed else "default")


def test_rare_classes_are_pushed_harder():
    z = torch.zeros(2, 5, requires_grad=True)
    loss = EDLLoss.pretrained(class_counts=COUNTS, reduction="none")(z, torch.tensor([0, 4]))
    assert loss[1] > loss[0]  # at equal logits a rare class's adjusted probability is smaller


def test_half_keeps_the_prior_exact():
    loss = EDLLoss.pretrained(class_counts=[10**6, 1]).half()
    assert loss.log_prior.dtype == torch.float32
    assert loss.log_prior[1].item() == pytest.approx(math.log(1 / (10**6 + 1)), rel=1e-6)


@pytest.mark.parametrize("counts, message", [
    ([10, 0, 5], "entry 1 is 0"), ([10, -3], "entry 1"), ([10, float("nan")], "entry 1"), ([10, 2.5], "whole numbers"),
    ([[1, 2], [3, 4]], "1-D"), ([5], "at least 2"), ("10,20", "sequence"), (["a", "b"], "sequence"),
])
def test_bad_counts_are_clear_errors(counts, message):
    with pytest.raises(ValueError, match=message):
        EDLLoss.pretrained(class_counts=counts)


def test_counts_of_the_wrong_length_for_the_logits_are_refused():
    with pytest.raises(ValueError, match="class_counts has 5 entries but the input has 3 classes"):
        EDLLoss.pretrained(class_counts=COUNTS)(torch.randn(4, 3), torch.zeros(4, dtype=torch.long))


@pytest.mark.parametrize("tau", [-1, float("nan"), 11, True, "1"])
def test_prior_strength_out_of_range_is_refused(tau):
    with pytest.raises(ValueError, match="prior_strength"):
        EDLLoss.pretrained(class_counts=COUNTS, prior_strength=tau)


def test_the_labs_prior_aware_edl_is_told_the_counts_by_the_trainer():
    from edloss.lab.losses import build_loss_from_spec

    loss = build_loss_from_spec("edl:prior_aware=true")
    z, y = torch.randn(8, 5), torch.randint(0, 5, (8,))
    with pytest.raises(ValueError, match="set_class_counts"):
        loss(z, y)
    loss.set_class_counts(torch.tensor(COUNTS))
    torch.testing.assert_close(loss(z, y), EDLLoss.pretrained("default", class_counts=COUNTS)(z, y))  # the records' arm
    shipped = build_loss_from_spec("edl:name=longtail-k10,prior_aware=true")
    shipped.set_class_counts(CIFAR10_LT)
    z10, y10 = torch.randn(8, 10), torch.randint(0, 10, (8,))
    torch.testing.assert_close(shipped(z10, y10), EDLLoss.pretrained(class_counts=CIFAR10_LT)(z10, y10))  # what a user gets
    assert not hasattr(build_loss_from_spec("edl"), "set_class_counts")  # the plain arm stays prior-blind
