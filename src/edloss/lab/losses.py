"""A registry of classification losses behind one call: ``build_loss(name, **options)``.

Every loss maps (logits (N, K), target (N,) int64) to the scalar mean over the batch, so the
trainer and the comparison grid treat EDL and its baselines alike. Losses are named by *spec
strings* so that a command line can carry options and checkpoints:

    ce                      cross-entropy
    label_smoothing:0.2     the loss's main option given bare (here eps)
    focal:gamma=3           options as key=value, comma-separated
    gce, sce, nce_rce       the noise-robust baselines (GCE q=0.7, SCE 0.1/1.0, NCE+RCE 1/1)
    forward:0.4             CE forward-corrected for symmetric noise at the known rate 0.4
    edl                     the shipped pretrained EDL loss
    edl:runs/x/loss         an EDL checkpoint (same as edl:checkpoint=runs/x/loss)
    logit_adjusted          the long-tail baselines, told the training set's class counts by the
    balanced_softmax        trainer (``set_class_counts``; LDAM-DRW also the epoch, ``set_epoch``):
    ldam_drw, cb_ce         logit adjustment (tau = 1), balanced softmax, LDAM with deferred
                            re-weighting, class-balanced CE with effective numbers
    gce:gain=0.5            any loss times a constant (``Gained``): its gradient, so its step
                            size under SGD, scaled; for asking whether a loss wins by its shape
                            or by its gradient's size

A comparison arm may carry a label: ``LABEL=SPEC``, e.g. ``edl-chaotic=edl:runs/x/loss``. The
text before the first ``=`` is a label only if it contains no ``:``, so ``focal:gamma=3`` is
an unlabelled spec and ``f3=focal:gamma=3`` a labelled one.
"""

from __future__ import annotations

import inspect
import json
import math
import re
import tempfile
from pathlib import Path
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


class MAE(nn.Module):
    """Mean absolute error between p and the one-hot label: sum_k |p_k - onehot_k| = 2 (1 - p_y).

    This is the L1 form of Ghosh et al. (2017), bounded in [0, 2] and robust to label noise
    but known to underfit on clean data (its gradient vanishes where p_y is small); it is
    here as a bounded, saturating reference point, not as a contender.
    """

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return (2 * (1 - _target_logprob(logits, target).exp())).mean()


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
        from edloss.objective import forward_corrected_nll  # the one formula, shared with pretraining

        return forward_corrected_nll(_target_logprob(logits, target), logits.shape[1], self.eta).mean()


# ----------------------------------------------------------------------------- long-tail baselines


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


def _edl(checkpoint: str | None = None, prior_aware: bool = False, prior_strength: Any = None, **options: Any) -> nn.Module:
    """The EDL loss: the shipped pretrained weights, or a checkpoint written by pretraining.

    ``prior_aware=true`` (``edl:prior_aware=true``) makes it the prior-aware loss
    ``EDLLoss(class_counts=...)`` with the counts the trainer reports (``PriorAwareEDL``), at
    ``prior_strength`` tau (default 1). Further options (e.g. ``check_inputs=false``) go to the
    ``EDLLoss`` constructor.
    """
    from edloss.loss import EDLLoss  # imported here so the baselines never depend on it

    if not isinstance(prior_aware, bool):
        raise ValueError(f"edl prior_aware must be true or false, got {prior_aware!r}")
    if prior_strength is not None and not prior_aware:  # else it would train prior-blind, silently
        raise ValueError(f"edl prior_strength={prior_strength!r} scales the class prior, which only the prior-aware loss is "
                         "told: add prior_aware=true (e.g. edl:prior_aware=true,prior_strength=2)")
    loss = EDLLoss.pretrained(**options) if checkpoint is None else EDLLoss.from_file(checkpoint, **options)
    return PriorAwareEDL(loss, prior_strength) if prior_aware else loss


class PriorAwareEDL(nn.Module):
    """An ``EDLLoss`` told the class prior by the trainer (``set_class_counts``): it then scores the
    logit-adjusted prediction softmax(z + tau log pi), as ``EDLLoss(class_counts=counts)`` does."""

    def __init__(self, loss: nn.Module, prior_strength: Any = None) -> None:
        from edloss.loss import _prior_strength

        super().__init__()
        self.loss = loss
        # checked now, not when the trainer reports the counts after the data has loaded
        self.prior_strength = 1.0 if prior_strength is None else _prior_strength(prior_strength)

    def set_class_counts(self, counts: Any) -> None:
        self.loss.set_prior(torch.as_tensor(counts).tolist(), self.prior_strength)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.loss.log_prior is None:
            raise ValueError("the prior-aware EDL loss needs the class counts of the training set: call "
                             "loss.set_class_counts(counts) first (edloss train does)")
        return self.loss(logits, target)


LOSSES: dict[str, Callable[..., nn.Module]] = {
    "ce": CrossEntropy,
    "label_smoothing": LabelSmoothing,
    "focal": Focal,
    "poly1": Poly1,
    "mae": MAE,
    "gce": GCE,
    "sce": SCE,
    "nce_rce": NCERCE,
    "forward": ForwardCorrected,
    "edl": _edl,
    "logit_adjusted": LogitAdjusted,
    "balanced_softmax": BalancedSoftmax,
    "ldam_drw": LDAMDRW,
    "cb_ce": ClassBalancedCE,
    "cosine": Cosine,
}
# the option a bare value after "name:" sets
PRIMARY_OPTION: dict[str, str] = {
    "label_smoothing": "eps", "focal": "gamma", "poly1": "epsilon", "edl": "checkpoint",
    "gce": "q", "forward": "eta", "logit_adjusted": "tau", "cb_ce": "beta", "ldam_drw": "drw",
}
_ALIASES = {"cross_entropy": "ce", "crossentropy": "ce", "ls": "label_smoothing",
            "labelsmoothing": "label_smoothing", "poly": "poly1", "la": "logit_adjusted",
            "logit_adjustment": "logit_adjusted", "bs": "balanced_softmax", "class_balanced": "cb_ce"}


def loss_names() -> list[str]:
    return list(LOSSES)


def register_loss(name: str, factory: Callable[..., nn.Module], primary: str | None = None) -> None:
    """Add a loss to the registry (for experiments and tests); ``factory(**options)``."""
    LOSSES[name] = factory
    if primary:
        PRIMARY_OPTION[name] = primary


def _canonical(name: str) -> str:
    key = name.strip().lower().replace("-", "_")
    return _ALIASES.get(key, key)


class Gained(nn.Module):
    """A loss times a constant ``gain`` (the ``gain=G`` option of every registry loss).

    Why: losses differ in the size of their gradient as much as in its shape (GCE's is 3-5 times
    smaller than CE's, the EDL losses are anchored to CE's at the uniform prediction), and with one
    learning rate for every arm the size acts as a step size. ``gain`` separates the two: the same
    shape at another size. Weight decay is not scaled, so this is close to, not exactly, a learning
    rate times G. Hooks of the wrapped loss (``set_class_counts``, ``set_epoch``, ...) pass through.
    """

    def __init__(self, loss: nn.Module, gain: float) -> None:
        super().__init__()
        self.loss = loss
        self.gain = gain

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["loss"], name)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.gain * self.loss(logits, target)


def build_loss(name: str, /, **options: Any) -> nn.Module:
    """A loss module by registry name with keyword options; unknown names/options: ValueError.
    Every loss takes ``gain`` (a positive number): the loss times it (``Gained``)."""
    key = _canonical(name)
    if key not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; valid names: {', '.join(LOSSES)}")
    if "gain" in options:
        gain = _option(key, "gain", options.pop("gain"), lambda v: v > 0, "a positive number (the loss is multiplied by it)")
        return Gained(build_loss(key, **options), gain)
    factory = LOSSES[key]
    inherits_module_init = getattr(factory, "__init__", None) is nn.Module.__init__
    try:  # a loss class with no __init__ of its own has nn.Module's (*args, **kwargs): it takes no option
        accepted = {} if inherits_module_init else inspect.signature(factory).parameters
    except (TypeError, ValueError):
        accepted = None
    if accepted is not None and not any(p.kind == p.VAR_KEYWORD for p in accepted.values()):
        unknown = sorted(set(options) - set(accepted))
        if unknown:
            valid = ", ".join(accepted) or "none"
            raise ValueError(f"loss {key!r} has no option {', '.join(unknown)}; "
                             f"its options: {valid}")
    return factory(**options)


def _parse_value(text: str) -> Any:
    """'3' -> 3, '0.1' -> 0.1, 'true' -> True, 'none' -> None; anything else stays a string."""
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def _is_edl_path(rest: str) -> bool:
    """Whether the text after ``edl:`` is a checkpoint path rather than ``key=value`` options: an
    existing path always is, and so is anything not starting with one of EDL's option names (a
    folder named ``my=loss`` is no option ``my``)."""
    if Path(rest).exists():
        return True
    match = re.match(r"^\s*([A-Za-z_]+)\s*=", rest)
    return match is None or match.group(1) not in _edl_option_names()


def _edl_option_names() -> set[str]:
    """Every option ``edl:`` takes: the lab's own and those of EDLLoss's constructors."""
    from edloss.loss import EDLLoss

    options = {"checkpoint", "prior_aware", "gain", "prior_strength"}
    for method in (EDLLoss.__init__, EDLLoss.pretrained, EDLLoss.from_file):
        options |= {p.name for p in inspect.signature(method).parameters.values()
                    if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return options - {"self", "cls", "net", "path"}


def _edl_path_options(rest: str, spec: str) -> dict[str, Any]:
    """``edl:PATH``: the path taken whole (it may hold ',' or '='), unless no such path exists and
    it ends in ``,option=value...`` with EDL's options: then the path and those options
    (``edl:runs/x/loss,gain=0.5``), instead of a missing checkpoint named ``runs/x/loss,gain=0.5``."""
    if not Path(rest).exists():
        for match in re.finditer(r",\s*([A-Za-z_]+)\s*=", rest):
            if match.group(1) in _edl_option_names():
                _, options = parse_loss_spec("edl:" + rest[match.start() + 1:])
                if "checkpoint" in options:
                    raise ValueError(f"loss spec {spec!r} names the checkpoint twice; give it once")
                return {"checkpoint": rest[:match.start()], **options}
    return {"checkpoint": rest}


def parse_loss_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """'focal:gamma=3' -> ('focal', {'gamma': 3}); 'edl:path' -> ('edl', {'checkpoint': 'path'})."""
    name, _, rest = spec.strip().partition(":")
    key = _canonical(name)
    if not key:
        raise ValueError(f"empty loss name in spec {spec!r}; write e.g. 'ce' or 'focal:gamma=3'")
    options: dict[str, Any] = {}
    if rest:
        if key == "edl" and _is_edl_path(rest):
            return key, _edl_path_options(rest, spec)
        for i, item in enumerate(rest.split(",")):
            opt, eq, value = item.partition("=")
            if not eq:
                if i > 0 or key not in PRIMARY_OPTION:
                    raise ValueError(f"loss spec {spec!r}: write options as key=value "
                                     f"(e.g. focal:gamma=3)")
                opt, value = PRIMARY_OPTION[key], item
            if opt.strip() in options:  # else the last value would win silently
                raise ValueError(f"loss spec {spec!r} sets {opt.strip()!r} twice"
                                 + (f" (the bare value after '{name}:' is its {opt.strip()})" if i > 0 and key in PRIMARY_OPTION
                                    and PRIMARY_OPTION[key] == opt.strip() else "") + "; give each option once")
            options[opt.strip()] = _parse_value(value.strip())
    return key, options


def build_loss_from_spec(spec: str) -> nn.Module:
    """``build_loss`` for a spec string like 'focal:gamma=3' or 'edl:runs/x/loss'."""
    name, options = parse_loss_spec(spec)
    return build_loss(name, **options)


def definition_sha256(loss: nn.Module) -> str | None:
    """The sha256 of what defines a learned loss (an EDLLoss's architecture, scale and weights: the
    ``definition_sha256`` its loss.json would carry), or None for a formula loss, which its spec
    string defines. A run stores it: the same spec ``edl:PATH`` names another loss once PATH is
    overwritten, and a resumed or reused run must not silently mix or swap the two."""
    from edloss.loss import CONFIG_FILE, EDLLoss

    if isinstance(loss, Gained):  # the gain is in the spec; the network inside is what a path can swap
        loss = loss.loss
    if isinstance(loss, PriorAwareEDL):  # tau is in the spec and the counts come from the data: hash the network
        loss = EDLLoss(loss.loss.net, scale=loss.loss.scale, metadata=loss.loss.metadata, trainable=loss.loss.trainable)
    if not isinstance(loss, EDLLoss):
        return None
    with tempfile.TemporaryDirectory() as folder:  # the checksum exactly as the file format defines it
        loss.save(folder)
        return json.loads((Path(folder) / CONFIG_FILE).read_text())["definition_sha256"]


def spec_definition(spec: str) -> str | None:
    """``definition_sha256`` of the loss a spec builds now (None for formula losses)."""
    return definition_sha256(build_loss_from_spec(spec))


_LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


def parse_loss_arm(text: str) -> tuple[str, str]:
    """'LABEL=SPEC' -> (label, spec); a bare spec gets a label derived from it.

    Labels name output folders, so they are restricted to letters, digits and ``_.+-``.
    """
    head, eq, tail = text.partition("=")
    if eq and ":" not in head:
        label, spec = head.strip(), tail.strip()
        if not _LABEL.match(label):
            raise ValueError(f"loss label {label!r} in {text!r} may use only letters, digits "
                             "and _.+- (it names a folder)")
    else:
        spec = text.strip()
        label = re.sub(r"[^A-Za-z0-9_.+-]+", "_", spec.replace(":", "-")).strip("_") or "loss"
    parse_loss_spec(spec)  # fail early on malformed specs
    return label, spec
