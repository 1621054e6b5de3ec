"""The noise-robust baselines of the lab's loss registry (``lab.losses``): MAE, GCE, symmetric
CE, NCE+RCE, and CE forward-corrected for a known rate of symmetric label noise."""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from edloss.lab.losses_plain import _option, _target_logprob
from edloss.lossnet import forward_corrected_nll  # the one formula, shared with pretraining


class MAE(nn.Module):
    """Mean absolute error between p and the one-hot label: sum_k |p_k - onehot_k| = 2 (1 - p_y).

    This is the L1 form of Ghosh et al. (2017), bounded in [0, 2] and robust to label noise
    but known to underfit on clean data (its gradient vanishes where p_y is small); it is
    here as a bounded, saturating reference point, not as a contender.
    """

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return (2 * (1 - _target_logprob(logits, target).exp())).mean()


class GCE(nn.Module):
    """Generalized cross-entropy (Zhang & Sabuncu, NeurIPS 2018): (1 - p_y^q) / q.

    q -> 0 is CE, q = 1 is MAE; q = 0.7 is the paper's choice for CIFAR with noisy labels.
    Bounded, so a mislabelled sample the model disagrees with cannot pull arbitrarily hard.
    """

    def __init__(self, q: float = 0.7) -> None:
        super().__init__()
        self.q = _option("gce", "q", q, lambda v: 0 < v <= 1, "a number in (0, 1]")

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return ((1 - (self.q * _target_logprob(logits, target)).exp()) / self.q).mean()


RCE_LOG_ZERO = -math.log(1e-4)  # log 0 of the one-hot label, clamped at 1e-4 as in the reference code


def _rce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Reverse cross-entropy -sum_k p_k log onehot_k with log 0 := log 1e-4: = -log(1e-4) (1 - p_y)."""
    return RCE_LOG_ZERO * (1 - _target_logprob(logits, target).exp())


class SCE(nn.Module):
    """Symmetric cross-entropy (Wang et al., ICCV 2019): alpha * CE + beta * RCE, with RCE the
    reverse cross-entropy whose one-hot label is clamped at 1e-4 (so RCE = -log(1e-4) (1 - p_y)).
    alpha = 0.1, beta = 1.0: the paper's CIFAR-10 setting."""

    def __init__(self, alpha: float = 0.1, beta: float = 1.0) -> None:
        super().__init__()
        self.alpha = _option("sce", "alpha", alpha, lambda v: v >= 0, "a number >= 0")
        self.beta = _option("sce", "beta", beta, lambda v: v >= 0, "a number >= 0")

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return (-self.alpha * _target_logprob(logits, target) + self.beta * _rce(logits, target)).mean()


class NCERCE(nn.Module):
    """Active-passive loss NCE + RCE (Ma et al., ICML 2020): alpha * NCE + beta * RCE, with the
    normalised CE  NCE = log p_y / sum_k log p_k  (in [0, 1]) and RCE as in SCE. alpha = beta = 1
    (the paper's CIFAR-10 setting)."""

    def __init__(self, alpha: float = 1.0, beta: float = 1.0) -> None:
        super().__init__()
        self.alpha = _option("nce_rce", "alpha", alpha, lambda v: v >= 0, "a number >= 0")
        self.beta = _option("nce_rce", "beta", beta, lambda v: v >= 0, "a number >= 0")

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logp = F.log_softmax(logits.float(), dim=1)
        nce = logp.gather(1, target[:, None]).squeeze(1) / logp.sum(dim=1)
        return (self.alpha * nce + self.beta * _rce(logits, target)).mean()


class ForwardCorrected(nn.Module):
    """Forward-corrected CE (Patrini et al., CVPR 2017) for symmetric noise at a known rate eta:
    -log (T^T p)_y with T = (1 - eta) I + eta / (K - 1) (11^T - I), i.e.
    -log((1 - eta K / (K - 1)) p_y + eta / (K - 1)). Proper for the noisy labels; bounded as
    p_y -> 0. It knows the true noise rate, as EDL pretrained for that rate does: the fair rival."""

    def __init__(self, eta: float = 0.0) -> None:
        super().__init__()
        self.eta = _option("forward", "eta", eta, lambda v: 0 <= v < 1, "a noise rate in [0, 1)")

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return forward_corrected_nll(_target_logprob(logits, target), logits.shape[1], self.eta).mean()
