"""Per-sample features of a prediction and its label: what the loss network sees.

The loss network never sees the K-dimensional prediction, only a few scalars computed from
(log p, y). That is what lets one pretrained loss serve any class count, provided the features
*mean the same at every K*: the uniform prediction maps to the same feature vector whether K is
2 or 1000 (EDL_METHOD.md, "Class count matters").

Every feature is computed from log-probabilities (``log_softmax`` of the logits), so tails down
to p_y = 1e-30 stay finite and differentiable; logarithms are softly floored at ``LOG_FLOOR`` so
logits of +-1e4 still give finite features and gradients.

Each feature takes ``logp`` of shape (..., K) and ``labels`` of shape (..., L) and returns the
feature of every listed label, (..., L): L = 1 for ordinary (prediction, label) pairs, L = K for
every label at once (the expectation objective sums over labels), or L sampled labels.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

LOG_FLOOR = -40.0  # log-probabilities below this are softly floored (p < 4e-18 carries no news)
FEATURE_SCALE = 8.0  # log-domain features are divided by this so they sit roughly in [-5, 1]

Feature = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def soft_floor(x: torch.Tensor, floor: float = LOG_FLOOR) -> torch.Tensor:
    """``max(x, floor)`` with a smooth knee, so gradients fade instead of dropping to zero."""
    return floor + F.softplus(x - floor)


def _at_label(logp: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """log p_y for every listed label."""
    return logp.gather(-1, labels)


def _rival(logp: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """log max_{j != y} p_j: the best wrong class is the top class unless y is the top."""
    top2 = logp.topk(2, dim=-1)
    best, second = top2.values[..., :1], top2.values[..., 1:]
    return torch.where(labels == top2.indices[..., :1], second, best)


def log_kpy(logp: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """log(K p_y): 0 at the uniform prediction for every K, positive when y is favoured."""
    return (soft_floor(_at_label(logp, labels)) + math.log(logp.shape[-1])) / FEATURE_SCALE


def margin(logp: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """log p_y - log max_{j != y} p_j: the logit margin of the true class, K-free by construction."""
    return (soft_floor(_at_label(logp, labels)) - soft_floor(_rival(logp, labels))) / FEATURE_SCALE


def logit_margin(logp: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """z_y - max_{j != y} z_j, unfloored: monotone in every logit (up in z_y, down in each z_j)."""
    return (_at_label(logp, labels) - _rival(logp, labels)) / FEATURE_SCALE


def log_krival(logp: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """log(K max_{j != y} p_j): how strongly the best wrong class is favoured."""
    return (soft_floor(_rival(logp, labels)) + math.log(logp.shape[-1])) / FEATURE_SCALE


def entropy(logp: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Normalised entropy H(p) / log K in [0, 1]: 1 at the uniform prediction for every K."""
    h = -(logp.exp() * logp.clamp_min(-1e4)).sum(dim=-1, keepdim=True) / math.log(logp.shape[-1])
    return h.expand(labels.shape)


def p_y(logp: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """p_y itself (not K-free: its uniform value is 1/K; kept for comparison)."""
    return _at_label(logp, labels).exp()


def rank(logp: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Normalised rank of the true class, 0 = top. Piecewise constant: no gradient of its own."""
    above = (logp.unsqueeze(-2) > _at_label(logp, labels).unsqueeze(-1)).sum(dim=-1)
    return above.to(logp.dtype) / (logp.shape[-1] - 1)


FEATURES: dict[str, Feature] = {
    "log_kpy": log_kpy,
    "margin": margin,
    "logit_margin": logit_margin,
    "log_krival": log_krival,
    "entropy": entropy,
    "p_y": p_y,
    "rank": rank,
}

FREE_FEATURES: tuple[str, ...] = ("log_kpy", "margin", "entropy")  # the v0-v3 losses
# Features that never fall when z_y rises and never rise when a wrong logit rises. A loss that is
# non-increasing in each of them is monotone in every logit (``LossNetConfig(form="monotone")``).
# ``margin`` is not among them: near its soft floor a third class's logit can move it either way.
MONOTONE_FEATURES: tuple[str, ...] = ("log_kpy", "logit_margin", "p_y")
DEFAULT_FEATURES = MONOTONE_FEATURES  # v4: the monotone form


def check_feature_names(names: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """Validate a feature set early, with the list of valid names in the error."""
    names = tuple(names)
    if not names:
        raise ValueError("the loss network needs at least one feature; valid: " + ", ".join(FEATURES))
    unknown = [n for n in names if n not in FEATURES]
    if unknown:
        raise ValueError(f"unknown feature(s) {unknown}; valid features: {', '.join(FEATURES)}")
    if len(set(names)) != len(names):
        raise ValueError(f"feature names repeat in {list(names)}; list each once")
    if set(names) <= {"rank"}:
        raise ValueError("'rank' is piecewise constant: a loss of it alone has no gradient; add a smooth feature such as log_kpy")
    return names


def label_features(logp: torch.Tensor, labels: torch.Tensor, names: tuple[str, ...]) -> torch.Tensor:
    """Features of every listed label: logp (..., K), labels (..., L) -> (..., L, F)."""
    labels = labels.expand(*logp.shape[:-1], labels.shape[-1])
    return torch.stack([FEATURES[n](logp, labels) for n in names], dim=-1)


def compute_features(logp: torch.Tensor, target: torch.Tensor, names: tuple[str, ...]) -> torch.Tensor:
    """Features of (prediction, label) pairs: logp (..., K), target (...) -> (..., F)."""
    return label_features(logp, target.unsqueeze(-1), names).squeeze(-2)
