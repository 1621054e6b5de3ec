"""Temperature scaling (Guo et al., "On Calibration of Modern Neural Networks", ICML 2017).

A loss can change how confident a network is without changing what it predicts, and one
scalar fitted after training undoes most of that: divide the logits by T, with T chosen to
minimise the NLL on held-out data. Comparing losses on ECE and NLL *after* scaling asks what
the loss left that a user cannot fix for free; before scaling, what they get out of the box.
T is fitted on the validation split, never the test set, and does not change any prediction.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

ECE_BINS = 15  # equal-width confidence bins, top-label ECE (Guo et al., 2017)
LOG_T_RANGE = (math.log(0.05), math.log(20.0))  # temperatures beyond are a broken model, not calibration
GOLDEN_STEPS = 60  # the bracket shrinks by 0.618 a step: 60 steps leave ~1e-12 of it


def nll(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0) -> float:
    """Mean cross-entropy of ``logits / temperature`` (float64, so the fit is not rounding noise)."""
    return F.cross_entropy(logits.double() / temperature, labels).item()


def confidence_bins(confidence: torch.Tensor, hit: torch.Tensor, bins: int = ECE_BINS) -> torch.Tensor:
    """(3, bins) float64: per equal-width confidence bin, the count, the summed confidence and the
    summed hits. Sums, so a loader's batches add up to the whole set's (``lab.evaluate``) and the
    binning lives in one place."""
    confidence = confidence.double()
    index = (confidence * bins).long().clamp_max(bins - 1)
    out = torch.zeros(3, bins, dtype=torch.float64, device=confidence.device)
    for row, value in enumerate((torch.ones_like(confidence), confidence, hit.double())):
        out[row].index_add_(0, index, value)
    return out


def ece_of_bins(sums: torch.Tensor) -> float:
    """Top-label ECE from ``confidence_bins`` sums: sum over bins of |hits - confidence| / N."""
    return ((sums[2] - sums[1]).abs().sum() / sums[0].sum()).item()


def ece(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0, bins: int = ECE_BINS) -> float:
    """Top-label expected calibration error of ``logits / temperature`` over equal-width bins."""
    confidence, predicted = (logits.double() / temperature).softmax(1).max(1)
    return ece_of_bins(confidence_bins(confidence, predicted == labels, bins))


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The T in [0.05, 20] minimising the NLL of ``logits / T``: a golden-section search on log T.

    NLL is convex in 1/T, so it is unimodal in log T and the search finds the optimum; it is
    deterministic (same logits, same T), unlike a gradient fit from a start point.
    """
    if logits.ndim != 2 or labels.shape != logits.shape[:1] or labels.numel() == 0:
        raise ValueError(f"fit_temperature needs logits (N, K) and labels (N,) with N >= 1, "
                         f"got {tuple(logits.shape)} and {tuple(labels.shape)}")
    z, y = logits.detach().double().cpu(), labels.detach().cpu()
    lo, hi = LOG_T_RANGE
    ratio = (math.sqrt(5) - 1) / 2
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = nll(z, y, math.exp(a)), nll(z, y, math.exp(b))
    for _ in range(GOLDEN_STEPS):
        if fa <= fb:
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = nll(z, y, math.exp(a))
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = nll(z, y, math.exp(b))
    return math.exp((lo + hi) / 2)


def temperature_scaling(val_logits: torch.Tensor, val_labels: torch.Tensor, test_logits: torch.Tensor,
                        test_labels: torch.Tensor) -> dict[str, float]:
    """T fitted on validation, and the test NLL and ECE before and after dividing by it."""
    t = fit_temperature(val_logits, val_labels)
    return {"temperature": t,
            "test_nll_ts": nll(test_logits, test_labels, t), "test_ece_ts": ece(test_logits, test_labels, t),
            "val_nll_ts": nll(val_logits, val_labels, t)}
