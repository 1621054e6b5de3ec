"""The long-tail baselines of the lab's loss registry (``lab.losses``), told the training set's
class counts by the trainer: logit adjustment, balanced softmax, class-balanced CE with effective
numbers, LDAM with deferred re-weighting, and post-hoc logit adjustment."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from edloss.lab.losses_plain import _option


def check_class_counts(counts: Any, num_classes: int | None = None) -> torch.Tensor:
    """Per-class training counts as a float64 tensor (K,), or ValueError saying what is wrong:
    not a 1-D sequence of at least two numbers, NaN/Inf, non-integers, zeros or negatives, or a
    length other than ``num_classes``."""
    try:
        values = torch.as_tensor(counts.tolist() if isinstance(counts, torch.Tensor) else list(counts),
                                 dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(f"class counts must be a sequence of per-class training counts, got {counts!r}") from None
    if values.ndim != 1 or values.numel() < 2:
        raise ValueError(f"class counts must be one count per class (at least 2), got shape {tuple(values.shape)}")
    if not torch.isfinite(values).all():
        raise ValueError(f"class counts must be finite, got {values.tolist()}")
    if (values != values.round()).any():
        raise ValueError(f"class counts must be whole numbers of images, got {values.tolist()}")
    if (values <= 0).any():
        bad = int((values <= 0).nonzero()[0])
        raise ValueError(f"class counts must be positive (a class without training images has no prior to "
                         f"adjust for): class {bad} has {int(values[bad])}")
    if num_classes is not None and values.numel() != num_classes:
        raise ValueError(f"{values.numel()} class counts for logits of {num_classes} classes")
    return values


def effective_number_weights(counts: torch.Tensor, beta: float) -> torch.Tensor:
    """Cui et al. (2019): w_c = (1 - beta) / (1 - beta^n_c), normalised to sum to K."""
    w = (1 - beta) / (1 - torch.pow(torch.as_tensor(beta, dtype=torch.float64), counts))
    return w / w.sum() * counts.numel()


class _PriorLoss(nn.Module):
    """A loss that needs the class counts n_c of the training set: ``edloss train`` calls
    ``set_class_counts(counts)`` once the data is loaded (counts of the labels as trained on);
    in Python pass ``class_counts=`` or call it yourself. Calling the loss before: ValueError."""

    name = "prior loss"

    def __init__(self, class_counts: Any = None) -> None:
        super().__init__()
        self.counts: torch.Tensor | None = None
        if class_counts is not None:
            self.set_class_counts(class_counts)

    def set_class_counts(self, counts: Any) -> None:
        self.counts = check_class_counts(counts)

    def _counts(self, logits: torch.Tensor) -> torch.Tensor:
        if self.counts is None:
            raise ValueError(f"{self.name} needs the class counts of the training set: call "
                             "loss.set_class_counts(counts) first (edloss train does)")
        if self.counts.numel() != logits.shape[1]:
            raise ValueError(f"{self.counts.numel()} class counts for logits of {logits.shape[1]} classes")
        return self.counts.to(logits.device)

    def extra_repr(self) -> str:
        counts = "not set" if self.counts is None else f"{self.counts.numel()} classes, {int(self.counts.sum())} images"
        return f"class_counts: {counts}"


class LogitAdjusted(_PriorLoss):
    """Logit-adjusted loss (Menon et al., "Long-tail learning via logit adjustment", ICLR 2021):

        l(z, y) = -log softmax(z + tau * log pi)_y,   pi_c = n_c / sum_k n_k,

    i.e. CE on logits shifted by the log prior; tau = 1 is the paper's CIFAR-LT setting and makes
    the loss Fisher-consistent for the balanced error. Uniform counts: exactly CE."""

    name = "logit_adjusted"

    def __init__(self, tau: float = 1.0, class_counts: Any = None) -> None:
        super().__init__(class_counts)
        self.tau = _option("logit_adjusted", "tau", tau, lambda v: v >= 0, "a number >= 0")

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        counts = self._counts(logits)
        log_prior = (counts / counts.sum()).log().float()
        return F.cross_entropy(logits.float() + self.tau * log_prior, target)


class BalancedSoftmax(_PriorLoss):
    """Balanced softmax (Ren et al., "Balanced Meta-Softmax for Long-Tailed Visual Recognition",
    NeurIPS 2020):

        l(z, y) = -log( n_y exp(z_y) / sum_c n_c exp(z_c) ) = CE(z + log n, y).

    The same function as the logit-adjusted loss at tau = 1 (log n and log pi differ by a
    constant the softmax ignores); it is listed apart because the literature reports it apart.
    Uniform counts: exactly CE."""

    name = "balanced_softmax"

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float() + self._counts(logits).log().float(), target)


class ClassBalancedCE(_PriorLoss):
    """Class-balanced CE with effective numbers (Cui et al., "Class-Balanced Loss Based on
    Effective Number of Samples", CVPR 2019):

        l = (1/N) sum_i w_{y_i} * (-log p_{y_i}),   w_c = (1 - beta) / (1 - beta^n_c), scaled so sum_c w_c = K,

    beta = 0.9999 (the paper's CIFAR-LT choice). Uniform counts: w_c = 1, exactly CE."""

    name = "cb_ce"

    def __init__(self, beta: float = 0.9999, class_counts: Any = None) -> None:
        super().__init__(class_counts)
        self.beta = _option("cb_ce", "beta", beta, lambda v: 0 <= v < 1, "a number in [0, 1)")

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        weights = effective_number_weights(self._counts(logits), self.beta).float()
        return (weights[target] * F.cross_entropy(logits.float(), target, reduction="none")).mean()


class LDAMDRW(_PriorLoss):
    """LDAM with deferred re-weighting (Cao et al., "Learning Imbalanced Datasets with
    Label-Distribution-Aware Margin Loss", NeurIPS 2019), as in the authors' code:

        l = sum_i w_{y_i} CE(z_i - s * Delta_{y_i} e_{y_i}, y_i) / sum_i w_{y_i},
        Delta_c = max_m * n_c^(-1/4) / max_k n_k^(-1/4)      (max margin 0.5),

    where z = s * cos(theta) are the logits of a cosine classifier of scale s = 30 (normalised
    features and weights): the trainer gives the model that head when ``cosine_head`` is true
    (``edloss train`` does, for this loss only), so the loss is their CE(s (cos - Delta_y e_y)).
    DRW: w_c = 1 for the first ``drw`` share of the epochs (0.8: from epoch 160 of 200), then the
    effective-number weights of Cui et al. (beta = 0.9999, summing to K); ``drw=1``: never
    re-weighted (plain LDAM). The trainer calls ``set_epoch(epoch, epochs)`` (0-based) before each
    epoch. With ``cosine_head=false`` the margin s * Delta_y is subtracted from the model's own
    logits (then s = 1 is the sensible scale). Uniform counts: every margin is max_m, so the loss
    is CE with the true logit lowered by s * max_m: not CE (the margin is the method)."""

    name = "ldam_drw"

    def __init__(self, max_m: float = 0.5, s: float = 30.0, drw: float = 0.8, beta: float = 0.9999,
                 cosine_head: bool = True, class_counts: Any = None) -> None:
        super().__init__(class_counts)
        self.max_m = _option("ldam_drw", "max_m", max_m, lambda v: v >= 0, "a number >= 0")
        self.s = _option("ldam_drw", "s", s, lambda v: v > 0, "a number > 0")
        self.drw = _option("ldam_drw", "drw", drw, lambda v: 0 <= v <= 1,
                           "the share of epochs before re-weighting, in [0, 1]")
        self.beta = _option("ldam_drw", "beta", beta, lambda v: 0 <= v < 1, "a number in [0, 1)")
        if not isinstance(cosine_head, bool):
            raise ValueError(f"ldam_drw cosine_head must be true or false, got {cosine_head!r}")
        self.cosine_head = cosine_head
        self.reweight = False

    @property
    def cosine_head_scale(self) -> float | None:
        """The scale of the cosine classifier the model should end in (None: keep its head)."""
        return self.s if self.cosine_head else None

    def set_epoch(self, epoch: int, epochs: int) -> None:
        """Re-weight from epoch int(drw * epochs) on (0-based): 160 of 200 at drw = 0.8."""
        self.reweight = self.drw < 1 and epoch >= int(self.drw * epochs)

    def margins(self, counts: torch.Tensor) -> torch.Tensor:
        m = counts.pow(-0.25)
        return m * (self.max_m / m.max())

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        counts = self._counts(logits)
        margin = (self.s * self.margins(counts)).float()[target]
        shifted = logits.float().scatter_add(1, target[:, None], -margin[:, None])
        weight = effective_number_weights(counts, self.beta).float() if self.reweight else None
        return F.cross_entropy(shifted, target, weight=weight)

    def extra_repr(self) -> str:
        return (f"max_m={self.max_m}, s={self.s}, drw={self.drw}, beta={self.beta}, cosine_head={self.cosine_head}, "
                f"{super().extra_repr()}")


def posthoc_adjusted(logits: torch.Tensor, counts: Any, tau: float = 1.0) -> torch.Tensor:
    """Post-hoc logit adjustment (Menon et al. 2021): predict argmax_c z_c - tau * log pi_c from a
    model trained with plain CE; returns the adjusted logits."""
    counts = check_class_counts(counts, logits.shape[1]).to(logits.device)
    return logits.float() - tau * (counts / counts.sum()).log().float()
