"""The plain baselines of the lab's loss registry (``lab.losses``): cross-entropy and its classic
variants (label smoothing, focal, Poly-1) and the cosine loss, with the checks every formula loss
makes of its options. The noise-robust baselines are in ``lab.losses_noise``, the long-tail ones
in ``lab.losses_longtail``."""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F


def _target_logprob(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """log p_y per sample, computed stably from logits."""
    return F.log_softmax(logits.float(), dim=1).gather(1, target[:, None]).squeeze(1)


def _option(loss: str, option: str, value: Any, ok: Callable[[float], bool], valid: str,
            why: str = "") -> float:
    """``value`` as a float, or ValueError naming the loss, the option and its valid range."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{loss} {option} must be {valid}, got {value!r}")
    if not ok(float(value)):
        raise ValueError(f"{loss} {option} must be {valid}, got {value!r}{why}")
    return float(value)


class CrossEntropy(nn.Module):
    """-log p_y: the reference every other loss is compared against."""

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float(), target)


class LabelSmoothing(nn.Module):
    """Cross-entropy against (1 - eps) * onehot + eps / K (Szegedy et al. 2016)."""

    def __init__(self, eps: float = 0.1) -> None:
        super().__init__()
        self.eps = _option("label_smoothing", "eps", eps, lambda v: 0 <= v < 1, "a number in [0, 1)")

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float(), target, label_smoothing=self.eps)


class Focal(nn.Module):
    """-(1 - p_y)^gamma log p_y (Lin et al. 2017): down-weights examples already right."""

    def __init__(self, gamma: float = 2.0) -> None:
        super().__init__()
        self.gamma = _option("focal", "gamma", gamma, lambda v: v >= 0, "a number >= 0")

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logp = _target_logprob(logits, target)
        return (-(1 - logp.exp()).pow(self.gamma) * logp).mean()


class Poly1(nn.Module):
    """CE + epsilon * (1 - p_y) (Leng et al. 2022, PolyLoss with one extra term).

    d/dp_y = -1/p_y - epsilon, which is negative for every p_y in (0, 1] only if epsilon >= -1:
    below that the loss rises once p_y > -1/epsilon and training would push the right class
    down, so such an epsilon is refused.
    """

    def __init__(self, epsilon: float = 1.0) -> None:
        super().__init__()
        self.epsilon = _option("poly1", "epsilon", epsilon, lambda v: v >= -1, "a number >= -1",
                               ": below -1 the loss -log p_y + epsilon (1 - p_y) stops decreasing in "
                               "p_y (it rises for p_y > -1/epsilon), so it would reward a less likely "
                               "right answer")

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logp = _target_logprob(logits, target)
        return (-logp + self.epsilon * (1 - logp.exp())).mean()


class Cosine(nn.Module):
    """Cosine loss (Barz & Denzler, "Deep Learning on Small Datasets using Cosine Loss", WACV 2020):
    1 - cos(z, e_y), the angle between the network's output and the one-hot class embedding.

    It ignores the output's length, so it cannot buy a lower loss by growing the logits (CE's
    route to over-fitting a few images): the limited-data anchor of the field, where it beat CE
    by large margins on small sets. The prediction is argmax z as for every other loss; the
    logits' scale is arbitrary, so its NLL and ECE mean something only after temperature scaling.
    """

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        z = logits.float()
        return (1 - z.gather(1, target[:, None]).squeeze(1) / z.norm(dim=1).clamp_min(1e-12)).mean()
