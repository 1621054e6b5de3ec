"""EDLLoss(class_counts=...): the prior-aware (logit-adjusted) loss, and its input checks."""

import math

import pytest
import torch

from edloss import EDLLoss

COUNTS = [500, 200, 80, 30, 10]


def test_counts_adjust_the_logits_by_the_log_prior():
    z, y = torch.randn(64, 5, generator=torch.Generator().manual_seed(0)), torch.randint(0, 5, (64,))
    prior = torch.tensor(COUNTS, dtype=torch.float64)
    shifted = z + (prior / prior.sum()).log().float()
    torch.testing.assert_close(EDLLoss.pretrained(class_counts=COUNTS)(z, y), EDLLoss.pretrained()(shifted, y))
    torch.testing.assert_close(EDLLoss.pretrained(class_counts=torch.tensor(COUNTS), prior_strength=0.5)(z, y),
                               EDLLoss.pretrained()(z + 0.5 * (prior / prior.sum()).log().float(), y))


def test_equal_counts_change_nothing_and_gradients_match_the_unfused_path():
    z, y = torch.randn(32, 5, requires_grad=True), torch.randint(0, 5, (32,))
    torch.testing.assert_close(EDLLoss.pretrained(class_counts=[7] * 5)(z, y), EDLLoss.pretrained()(z, y))
    (fused,) = torch.autograd.grad(EDLLoss.pretrained(class_counts=COUNTS)(z, y), z)
    (plain,) = torch.autograd.grad(EDLLoss.pretrained(class_counts=COUNTS, fused=False)(z, y), z)
    torch.testing.assert_close(fused, plain, rtol=1e-5, atol=1e-6)


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
    torch.testing.assert_close(loss(z, y), EDLLoss.pretrained(class_counts=COUNTS)(z, y))
    assert not hasattr(build_loss_from_spec("edl"), "set_class_counts")  # the plain arm stays prior-blind
