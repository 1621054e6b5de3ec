"""EDLLoss takes what nn.CrossEntropyLoss takes: the same cases run through both modules.

Output shapes, reductions, ignored elements, CE's weighted-mean normalisation, label smoothing as a
soft target, N-d inputs, probability targets, and the errors for bad arguments. The losses'
*values* differ (that is the point); what must match is everything around them.
"""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn as nn

from edloss import EDLLoss
from edloss.lossnet import LossNet, LossNetConfig, init_scale


def edl(**kwargs) -> EDLLoss:
    cfg = LossNetConfig(form="monotone", features=("log_kpy", "logit_margin", "p_y"), activation="softsign")
    theta = torch.randn(cfg.num_params, generator=torch.Generator().manual_seed(1)) * init_scale(cfg)
    return EDLLoss(LossNet.from_flat(theta, cfg), scale=0.9, **kwargs)


CASES = {  # name -> (input shape, class-index target shape)
    "batch": ((6, 5), (6,)),
    "unbatched": ((5,), ()),
    "dense 2-d": ((3, 5, 4, 2), (3, 4, 2)),
    "sequence": ((2, 5, 7), (2, 7)),
}
REDUCTIONS = ("mean", "sum", "none")


def data(case: str, seed: int = 0, ignore: bool = True):
    shape, target_shape = CASES[case]
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=g) * 2).requires_grad_(True)
    t = torch.randint(0, shape[0 if len(shape) == 1 else 1], target_shape, generator=g)
    if ignore and t.numel() > 2:
        t.view(-1)[::3] = -100
    return x, t


def forward_backward(module: nn.Module, x: torch.Tensor, t: torch.Tensor):
    x = x.detach().clone().requires_grad_(True)
    out = module(x, t)
    out.sum().backward()
    return out, x.grad


@pytest.mark.parametrize("case,reduction", list(itertools.product(CASES, REDUCTIONS)))
def test_shapes_reductions_and_ignored_elements_match_ce(case, reduction):
    x, t = data(case)
    ce_out, _ = forward_backward(nn.CrossEntropyLoss(reduction=reduction), x, t)
    out, grad = forward_backward(edl(reduction=reduction), x, t)
    assert out.shape == ce_out.shape and out.dtype == ce_out.dtype
    assert torch.isfinite(out).all() and torch.isfinite(grad).all()
    ignored = t == -100
    if ignored.any():  # ignored elements contribute nothing, to the loss or the gradient
        grad_by_element = grad.movedim(1, -1) if grad.dim() > 1 else grad[None]
        assert (grad_by_element[ignored] == 0).all()
        if reduction == "none":
            assert (out[ignored] == 0).all()
    none = edl(reduction="none")(x, t)
    if reduction == "sum":
        torch.testing.assert_close(out, none.sum())
    if reduction == "mean":  # CE's mean counts only the targets it does not ignore
        torch.testing.assert_close(out, none.sum() / (~ignored).sum())


@pytest.mark.parametrize("case", list(CASES))
def test_weighted_mean_is_normalised_as_ce_does(case):
    x, t = data(case)
    w = torch.rand(x.shape[0 if x.dim() == 1 else 1], generator=torch.Generator().manual_seed(3)) + 0.1
    none = edl(weight=w, reduction="none")(x, t)
    unweighted = edl(reduction="none")(x, t)
    kept = t != -100
    safe = torch.where(kept, t, 0)
    torch.testing.assert_close(none, torch.where(kept, unweighted * w[safe], 0.0))
    torch.testing.assert_close(edl(weight=w)(x, t), none.sum() / w[safe][kept].sum())
    # the same normalisation rule as CE, checked on CE itself
    ce_none = nn.CrossEntropyLoss(weight=w, reduction="none")(x, t)
    torch.testing.assert_close(nn.CrossEntropyLoss(weight=w)(x, t), ce_none.sum() / w[safe][kept].sum())


def test_one_hot_probability_target_gives_the_class_index_result():
    x, t = data("dense 2-d", ignore=False)
    onehot = nn.functional.one_hot(t, 5).movedim(-1, 1).float()
    for reduction in REDUCTIONS:
        a, ga = forward_backward(edl(reduction=reduction), x, t)
        b, gb = forward_backward(edl(reduction=reduction), x, onehot)
        torch.testing.assert_close(a, b)
        torch.testing.assert_close(ga, gb)


def test_probability_target_is_the_expected_penalty():
    x, _ = data("batch")
    probs = torch.rand(6, 5, generator=torch.Generator().manual_seed(4)).softmax(1)
    every = torch.stack([edl(reduction="none")(x, torch.full((6,), c)) for c in range(5)], dim=1)
    torch.testing.assert_close(edl(reduction="none")(x, probs), (probs * every).sum(1))
    assert edl(reduction="none")(x, probs).shape == nn.CrossEntropyLoss(reduction="none")(x, probs).shape
    w = torch.rand(5) + 0.5  # CE: weights multiply each class's term, the mean divides by the rows
    torch.testing.assert_close(edl(weight=w)(x, probs), (probs * every * w).sum(1).mean())


@pytest.mark.parametrize("eps", [0.0, 0.1, 1.0])
def test_label_smoothing_is_a_soft_target(eps):
    x, t = data("batch")
    k = 5
    kept = t != -100
    soft = nn.functional.one_hot(torch.where(kept, t, 0), k).float() * (1 - eps) + eps / k
    smoothed = edl(label_smoothing=eps, reduction="none")(x, t)
    expected = edl(reduction="none")(x[kept], soft[kept])
    torch.testing.assert_close(smoothed[kept], expected)
    assert (smoothed[~kept] == 0).all()
    out, grad = forward_backward(edl(label_smoothing=eps), x, t)
    assert torch.isfinite(out) and torch.isfinite(grad).all()


def test_pretrained_and_from_file_take_the_same_arguments(tmp_path):
    w = torch.ones(10)
    for make in (lambda **kw: EDLLoss.pretrained(**kw), lambda **kw: EDLLoss.from_file(tmp_path, **kw)):
        EDLLoss.pretrained().save(tmp_path)
        loss = make(weight=w, ignore_index=3, reduction="sum", label_smoothing=0.1)
        assert (loss.reduction, loss.ignore_index, loss.label_smoothing) == ("sum", 3, 0.1)
        out = loss(torch.randn(4, 10), torch.tensor([0, 3, 5, 9]))
        assert out.shape == () and torch.isfinite(out)


def test_all_targets_ignored_gives_zero_not_nan():
    x = torch.randn(3, 4, requires_grad=True)
    out = edl()(x, torch.full((3,), -100))
    out.backward()
    assert out.item() == 0 and (x.grad == 0).all()


@pytest.mark.parametrize(
    "kwargs,call,match",
    [
        ({"weight": torch.ones(4)}, None, "weight has 4 entries"),
        ({"weight": torch.tensor([1.0, -1.0, 1.0, 1.0, 1.0])}, None, "finite and >= 0"),
        ({"weight": torch.tensor([1.0, float("nan"), 1.0, 1.0, 1.0])}, None, "finite and >= 0"),
        ({"weight": torch.ones(5, 1)}, None, "1-D"),
        ({"label_smoothing": 1.5}, None, r"label_smoothing must be a number in \[0, 1\]"),
        ({"label_smoothing": -0.1}, None, r"label_smoothing must be a number in \[0, 1\]"),
        ({}, "negative", "probability targets must be finite, >= 0 and sum to 1"),
        ({}, "unnormalised", "probability targets must be finite, >= 0 and sum to 1"),
        ({}, "wrong-shape", "must have the input's shape"),
    ],
)
def test_bad_arguments_get_clear_errors(kwargs, call, match):
    x = torch.randn(6, 5)
    targets = {
        None: torch.randint(0, 5, (6,)),
        "negative": torch.full((6, 5), 0.2) - torch.eye(6, 5) * 0.5,
        "unnormalised": torch.full((6, 5), 0.5),
        "wrong-shape": torch.full((6, 4), 0.25),
    }
    with pytest.raises(ValueError, match=match):
        edl(**kwargs)(x, targets[call])


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int16, torch.int32, torch.int64])
def test_any_integer_target_dtype(dtype):
    x = torch.randn(4, 6)
    t = torch.tensor([0, 5, 2, 1])
    torch.testing.assert_close(edl()(x, t.to(dtype)), edl()(x, t))


def test_ignore_index_none_ignores_nothing():
    x = torch.randn(4, 6)
    t = torch.tensor([0, 5, 2, 1])
    torch.testing.assert_close(edl(ignore_index=None)(x, t), edl()(x, t))
    with pytest.raises(ValueError, match=r"\[0, 6\)"):
        edl(ignore_index=None)(x, torch.tensor([0, -100, 2, 1]))
