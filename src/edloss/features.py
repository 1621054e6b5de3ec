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
from dataclasses import dataclass

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
    "log_krival": log_krival,
    "entropy": entropy,
    "p_y": p_y,
    "rank": rank,
}

DEFAULT_FEATURES: tuple[str, ...] = ("log_kpy", "margin", "entropy")


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


# ---------------------------------------------------------------------- closed-form logit gradients
# Every feature's gradient with respect to the logits lies in span{e_y, e_c, p, p * log p}, where c is
# the best wrong class: d log p_y / dz = e_y - p, d log p_c / dz = e_c - p, and
# d H / dz = -p * (log p + H). So a feature's gradient is four per-row coefficients, and the loss
# gradient is assembled with two scatters and two (N, K) products instead of an autograd graph.
@dataclass
class RowStats:
    """Per-row quantities shared by every feature and its gradient (rows = samples)."""

    logp: torch.Tensor  # (N, K)
    target: torch.Tensor  # (N,)
    p: torch.Tensor  # (N, K)
    logp_y: torch.Tensor  # (N,)
    logp_c: torch.Tensor  # (N,) best wrong class
    rival: torch.Tensor  # (N,) its index
    floor_y: torch.Tensor  # soft_floor(log p_y)
    floor_c: torch.Tensor
    slope_y: torch.Tensor  # d soft_floor(log p_y) / d log p_y, over FEATURE_SCALE
    slope_c: torch.Tensor


def row_stats(logp: torch.Tensor, target: torch.Tensor) -> RowStats:
    logp_y = logp.gather(1, target[:, None]).squeeze(1)
    logp_c, rival = logp.scatter(1, target[:, None], float("-inf")).max(dim=1)
    both = torch.stack([logp_y, logp_c])
    floors, slopes = soft_floor(both), torch.sigmoid(both - LOG_FLOOR) / FEATURE_SCALE
    return RowStats(logp, target, logp.exp(), logp_y, logp_c, rival, floors[0], floors[1], slopes[0], slopes[1])


Coefficients = dict[str, torch.Tensor]  # non-zero coefficients on "y" (e_y), "c" (e_c), "p", "plogp"


def feature_with_gradient(name: str, s: RowStats) -> tuple[torch.Tensor, Coefficients]:
    """A feature's value (N,) and the coefficients of its logit gradient on e_y, e_c, p, p * log p."""
    log_k = math.log(s.logp.shape[1])
    if name == "log_kpy":
        return (s.floor_y + log_k) / FEATURE_SCALE, {"y": s.slope_y, "p": -s.slope_y}
    if name == "log_krival":
        return (s.floor_c + log_k) / FEATURE_SCALE, {"c": s.slope_c, "p": -s.slope_c}
    if name == "margin":
        return (s.floor_y - s.floor_c) / FEATURE_SCALE, {"y": s.slope_y, "c": -s.slope_c, "p": s.slope_c - s.slope_y}
    if name == "entropy":
        h = -(s.p * s.logp.clamp_min(-1e4)).sum(dim=1) / log_k
        return h, {"p": -h, "plogp": torch.full_like(h, -1.0 / log_k)}
    if name == "p_y":
        py = s.logp_y.exp()
        return py, {"y": py, "p": -py}
    if name == "rank":
        return rank(s.logp, s.target[:, None]).squeeze(1), {}
    raise ValueError(f"unknown feature {name!r}")
