"""EDLLoss's input checks: what the forward pass accepts (CE's shapes, logits, class-index or
probability targets, class weights) and the class prior it may be told (per-class training
counts and tau), each refused with a message that says what was wrong and how to pass it.

Used by the loss module (``loss``), by the fused operator (``fused_op``), which checks the same
things under ``torch.compile`` when the graph runs, and by the shipped-loss registry, which picks
a loss by the class counts. It imports no other edloss module.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch


def _is_rate(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)


def _values_readable(x: torch.Tensor) -> bool:
    """False where a tensor's values cannot be read: ``torch.compile`` tracing, ``torch.func``
    transforms (grad, vmap, jacrev, ...) and the meta device. There the input checks (a host sync)
    are skipped (under compile the fused operator runs them), and outside compile the plain
    autograd path replaces the fused one (an operator these transforms have no rules for)."""
    return not (torch.compiler.is_compiling() or torch._C._are_functorch_transforms_active() or x.device.type == "meta")


# ---------------------------------------------------------------------- input handling
def _as_rows(input: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, tuple[int, ...], bool]:  # noqa: A002
    """CE's shapes -> (rows (M, C), targets (M,) or (M, C), the unreduced output shape, soft?).

    (C,) with () is one sample; (N, C) with (N,); (N, C, d1, ...) with (N, d1, ...); probability
    targets have the input's shape. The class dimension is moved last and the rest flattened."""
    if not isinstance(input, torch.Tensor) or not isinstance(target, torch.Tensor):
        raise TypeError(f"EDLLoss expects tensors (input, target), got {type(input).__name__}, {type(target).__name__}")
    if not input.is_floating_point():
        raise TypeError(f"input (logits) must be a floating-point tensor, got {input.dtype}")
    if input.dim() == 0:
        raise ValueError("input must have a class dimension: (C,), (N, C) or (N, C, d1, ...), got a scalar")
    soft = target.is_floating_point()
    if target.is_complex() or target.dtype == torch.bool:
        raise TypeError(f"target must hold class indices (an integer dtype) or class probabilities (float), got {target.dtype}")
    unbatched = input.dim() == 1
    x = input.unsqueeze(0) if unbatched else input
    t = target.unsqueeze(0) if unbatched else target
    k = x.shape[1]
    if k < 2:
        raise ValueError(f"need at least 2 classes, got input of shape {tuple(input.shape)} (classes are dimension {0 if unbatched else 1})")
    if soft:
        if t.shape != x.shape:
            raise ValueError(f"probability targets must have the input's shape {tuple(input.shape)}, got {tuple(target.shape)}")
    elif t.shape != (x.shape[0], *x.shape[2:]):
        expected = () if unbatched else (x.shape[0], *x.shape[2:])
        raise ValueError(
            f"class-index target must have shape {expected} for input of shape {tuple(input.shape)}, got {tuple(target.shape)} "
            "(for one-hot or soft labels pass float probabilities of the input's shape)"
        )
    if x.numel() == 0:  # deliberately an error, for every reduction: CE's NaN / 0 / [] would hide an empty loader
        raise ValueError(f"empty batch: input of shape {tuple(input.shape)} has no elements (CE would return NaN for the "
                         "mean); skip empty batches in the data loader, e.g. drop_last=True or a check on len(batch)")
    out_shape = tuple(t.shape[:0]) if unbatched else tuple(x.shape[:1] + x.shape[2:])
    if x.dim() > 2:
        x = x.movedim(1, -1).reshape(-1, k)
        t = t.movedim(1, -1).reshape(-1, k) if soft else t.reshape(-1)
    if not soft and t.dtype != torch.long:
        t = t.long()
    return x, t, out_shape, soft


# ---------------------------------------------------------------------- the class prior
MAX_CLASS_COUNT = 2.0 ** 53  # the largest whole number float64 holds exactly; their sum must stay finite too


def _counts_tensor(class_counts: Any) -> torch.Tensor:
    """Per-class training counts as a float64 CPU tensor, validated: 1-D, at least 2 classes, each a
    finite whole number in [1, 2^53]. Booleans are refused: a class mask is no count."""
    if isinstance(class_counts, (str, bytes, bool)):
        raise ValueError(f"class_counts must be a sequence or 1-D tensor of per-class training counts, got {class_counts!r}")
    try:
        raw = torch.as_tensor(class_counts).detach().cpu()
    except (TypeError, ValueError, RuntimeError) as err:
        raise ValueError(f"class_counts must be a sequence or 1-D tensor of per-class training counts, got {class_counts!r} ({err})") from None
    if raw.dtype == torch.bool or (isinstance(class_counts, (list, tuple)) and any(isinstance(c, bool) for c in class_counts)):
        raise ValueError("class_counts holds booleans (a class mask?); give the number of training examples of each class, "
                         "e.g. torch.bincount(train_labels, minlength=num_classes)")
    if raw.is_complex():
        raise ValueError(f"class_counts must be real whole numbers, got {raw.dtype}")
    counts = raw.to(torch.float64)
    if counts.dim() != 1 or counts.numel() < 2:
        raise ValueError(f"class_counts must be 1-D with one count per class (at least 2), got shape {tuple(counts.shape)}")
    bad = ~torch.isfinite(counts) | (counts <= 0) | (counts != counts.round()) | (counts > MAX_CLASS_COUNT)
    if bad.any():
        i = int(bad.nonzero()[0])
        raise ValueError(f"class_counts must be whole numbers in [1, 2^53] (a class with no training example has no prior); "
                         f"entry {i} is {counts[i].item()!r}")
    return counts


def log_prior(class_counts: Any) -> torch.Tensor | None:
    """log pi_c (float64) from per-class training counts, validated: one finite, positive, whole
    number per class. float64 because the loss adds it in the logits' dtype: float64 logits get
    the exact prior, float32 ones its rounding, as with every other part of the loss."""
    if class_counts is None:
        return None
    counts = _counts_tensor(class_counts)
    prior = (counts / counts.sum()).log()
    if not torch.isfinite(prior).all():  # counts near 2^53 each can sum past what the ratio resolves
        raise ValueError(f"class_counts are too large for their ratios to be computed (sum {float(counts.sum()):.3g}); "
                         "pass the actual per-class training counts")
    return prior


def _prior_strength(value: Any) -> float:
    """tau as a float in [0, 10]: Python, numpy and 0-d torch numbers alike (a bool is no strength)."""
    if not isinstance(value, (bool, int, float)) and tuple(getattr(value, "shape", (0,))) == () and hasattr(value, "item"):
        value = value.item()  # a 0-d tensor or numpy scalar; a bool or complex one stays refused below
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and 0 <= value <= 10):
        raise ValueError(f"prior_strength must be a number in [0, 10] (1: the logit-adjusted loss), got {value!r}")
    return float(value)


# ---------------------------------------------------------------------- class weights and values
def _check_weight(weight: torch.Tensor | None) -> torch.Tensor | None:
    if weight is None:
        return None
    if not isinstance(weight, torch.Tensor) or weight.dim() != 1 or not weight.is_floating_point():
        got = f"a tensor of shape {tuple(weight.shape)}, {weight.dtype}" if isinstance(weight, torch.Tensor) else repr(weight)
        raise ValueError(f"weight must be a 1-D float tensor with one entry per class, got {got}")
    if weight.device.type != "meta" and (not torch.isfinite(weight).all() or (weight < 0).any()):  # meta: no values
        raise ValueError(f"weight must be finite and >= 0, got {weight.tolist()}")
    return weight.detach().float() if weight.dtype != torch.float64 else weight.detach()


def _warn_if_probabilities(x: torch.Tensor) -> None:
    """The probabilities-instead-of-logits mistake, judged on the first row of the first call."""
    first = x[0].detach()
    if float(first.min()) >= 0 and float(first.max()) <= 1 and abs(float(first.sum()) - 1) < 1e-3:
        warnings.warn(
            "the first row of logits lies in [0, 1] and sums to 1: it looks like probabilities. "
            "EDLLoss applies log_softmax itself; pass raw logits (drop the softmax).",
            stacklevel=6,
        )


def _check_finite(x: torch.Tensor, per_row: torch.Tensor) -> None:
    """NaN or +-Inf anywhere in a row makes that row's log-probabilities (and loss) non-finite, so
    checking the per-row values finds bad logits without another pass over (M, C). -Inf in a
    wrong class is a mask, as in CE, and is allowed."""
    if math.isfinite(per_row.detach().sum().item()) or bool(torch.isfinite(per_row).all()):  # the sum: one kernel, not isfinite's four
        return
    rows = (~torch.isfinite(per_row)).nonzero().flatten()[:5].tolist()
    raise ValueError(
        f"logits contain NaN or Inf (rows {rows}...), or a target's logit is -Inf; the model diverged or "
        "its inputs are bad - lower the learning rate or check the data"
    )


def _check_logits_finite(x: torch.Tensor) -> None:
    """NaN or +-Inf logits (-Inf in a wrong class allowed, as a mask), rows named; one host sync."""
    if not math.isfinite(x.detach().sum().item()):  # cheap; on overflow the exact test decides
        _check_finite(x, torch.logsumexp(x.detach(), dim=1))


def _check_probabilities(probs: torch.Tensor) -> None:
    """Finite, >= 0, rows summing to 1; on detached values, so a target that requires grad (a
    teacher's output) reads without torch's requires_grad-to-scalar warning."""
    probs = probs.detach()
    lo, total_err = probs.min(), (probs.sum(1) - 1).abs().max()
    if not bool(torch.isfinite(probs).all()) or float(lo) < 0 or float(total_err) > 1e-3:
        raise ValueError(
            "probability targets must be finite, >= 0 and sum to 1 over the class dimension "
            f"(found min {float(lo):.3g}, largest |sum - 1| {float(total_err):.3g}); for class indices pass an integer tensor"
        )
