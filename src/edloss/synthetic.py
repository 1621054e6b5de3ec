"""Synthetic prediction-label data: the only data EDL pretraining ever sees.

Two generators, both vectorised, any class count K >= 2, seeded through ``torch.Generator``:

* ``sample_mixture``: (logits, label) pairs from a controllable mixture of regimes (confident
  correct, confident wrong, uncertain, boundary, Dirichlet), each built in logit space so the
  extreme tails occur (p_y down to ~1e-10 and up to 1 - 1e-10). This is the paper's per-sample
  setting.
* ``sample_expectation``: synthetic "true" class distributions q ~ Dirichlet(alpha) and several
  predictions p = softmax(log q + sigma * eps) around each one, for the expectation objective
  (rank E_{y~q} l(p, y) by the divergence of p from q).

Sampling runs in float64 on the CPU (Dirichlet draws with alpha = 0.05 underflow float32);
callers cast the result.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from edloss.configs import check_fields, check_range

REGIMES = ("confident_correct", "confident_wrong", "uncertain", "boundary", "dirichlet")


@dataclass(frozen=True)
class MixtureConfig:
    """Weights of the per-sample regimes (normalised on use) and their ranges."""

    confident_correct: float = 0.15
    confident_wrong: float = 0.25
    uncertain: float = 0.10
    boundary: float = 0.30
    dirichlet: float = 0.20
    max_margin: float = 23.0  # logit gap of a confident prediction: p down to ~K * 1e-10
    dirichlet_alpha: tuple[float, float] = (0.05, 5.0)

    def __post_init__(self) -> None:
        check_fields(self)
        weights = self.weights()
        if any(w < 0 or not math.isfinite(w) for w in weights) or sum(weights) <= 0:
            raise ValueError(f"mixture weights must be finite, >= 0 and not all zero, got {dict(zip(REGIMES, weights))}")
        _check_range("dirichlet_alpha", self.dirichlet_alpha)
        check_range("max_margin", self.max_margin, 0, lo_open=True)

    def weights(self) -> list[float]:
        return [float(getattr(self, name)) for name in REGIMES]


@dataclass(frozen=True)
class ExpectationConfig:
    """How synthetic truths q and the predictions around them are drawn."""

    alpha: tuple[float, float] = (0.05, 2.0)  # Dirichlet concentration of q, log-uniform
    sigma: tuple[float, float] = (0.05, 4.0)  # logit noise around log q, log-uniform
    predictions_per_truth: int = 8
    one_hot_fraction: float = 0.5  # share of truths made one-hot at their top class, as real labels are

    def __post_init__(self) -> None:
        check_fields(self)
        _check_range("alpha", self.alpha)
        _check_range("sigma", self.sigma)
        if not 0.0 <= self.one_hot_fraction <= 1.0:
            raise ValueError(f"one_hot_fraction must be in [0, 1], got {self.one_hot_fraction}")
        if self.predictions_per_truth < 2:
            raise ValueError(f"predictions_per_truth must be >= 2 (rankings compare predictions of one truth), got {self.predictions_per_truth}")


def _check_range(name: str, bounds: tuple[float, float]) -> None:
    lo, hi = bounds
    if not (0 < lo <= hi and math.isfinite(hi)):
        raise ValueError(f"{name} must be a range (lo, hi) with 0 < lo <= hi, got {bounds}")


def log_uniform(lo: float, hi: float, size: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    u = torch.rand(size, generator=gen, dtype=torch.float64)
    return torch.exp(math.log(lo) + u * (math.log(hi) - math.log(lo)))


def sample_class_count(lo: int, hi: int, gen: torch.Generator) -> int:
    """K log-uniform over [lo, hi]: small and large class counts both get their share."""
    return int(round(float(log_uniform(lo, hi + 0.999, (1,), gen).floor().clamp(lo, hi))))


def log_gamma(alpha: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """log of Gamma(alpha, 1) draws, exact for any alpha > 0 and finite even when alpha -> 0.

    Marsaglia-Tsang for shape alpha + 1 (vectorised rejection: accepted slots are kept, the rest
    redrawn; acceptance is > 95% so a few rounds suffice), then the boost
    Gamma(alpha) = Gamma(alpha + 1) * U^(1/alpha), taken in log space so tiny alphas don't underflow.
    """
    a = alpha.to(torch.float64) + 1.0
    d = a - 1.0 / 3.0
    c = 1.0 / torch.sqrt(9.0 * d)
    out = torch.empty_like(a)
    todo = torch.ones_like(a, dtype=torch.bool)
    while bool(todo.any()):
        x = torch.randn(a.shape, generator=gen, dtype=torch.float64)
        v = (1.0 + c * x) ** 3
        u = torch.rand(a.shape, generator=gen, dtype=torch.float64)
        ok = (v > 0) & (torch.log(u) < 0.5 * x * x + d - d * v + d * torch.log(v.clamp_min(1e-300)))
        take = ok & todo
        out = torch.where(take, torch.log(d * v.clamp_min(1e-300)), out)
        todo = todo & ~ok
    u = torch.rand(a.shape, generator=gen, dtype=torch.float64).clamp_min(1e-300)
    return out + torch.log(u) / alpha.to(torch.float64)


def log_dirichlet(alpha: torch.Tensor, k: int, gen: torch.Generator) -> torch.Tensor:
    """log of Dirichlet(alpha_i * 1_K) draws, one row per entry of ``alpha``: (n,) -> (n, K)."""
    g = log_gamma(alpha[:, None].expand(-1, k), gen)
    return g - torch.logsumexp(g, dim=1, keepdim=True)


def _random_other(labels: torch.Tensor, k: int, gen: torch.Generator) -> torch.Tensor:
    """A uniformly random class different from each label."""
    shift = torch.randint(1, k, labels.shape, generator=gen)
    return (labels + shift) % k


def _lift(logits: torch.Tensor, index: torch.Tensor, gap: torch.Tensor) -> torch.Tensor:
    """Set logits[i, index[i]] to (max of the row's other logits) + gap[i]."""
    others = logits.scatter(1, index[:, None], float("-inf")).amax(dim=1)
    return logits.scatter(1, index[:, None], (others + gap)[:, None])


def _regime_logits(regime: str, n: int, k: int, labels: torch.Tensor, cfg: MixtureConfig, gen: torch.Generator) -> torch.Tensor:
    spread = log_uniform(0.1, 3.0, (n, 1), gen)
    base = torch.randn((n, k), generator=gen, dtype=torch.float64) * spread
    uniform = lambda lo, hi: lo + (hi - lo) * torch.rand((n,), generator=gen, dtype=torch.float64)  # noqa: E731
    if regime == "confident_correct":
        return _lift(base, labels, uniform(2.0, cfg.max_margin))
    if regime == "confident_wrong":
        return _lift(base, _random_other(labels, k, gen), uniform(2.0, cfg.max_margin))
    if regime == "uncertain":
        return base / spread * log_uniform(1e-3, 0.3, (n, 1), gen)
    if regime == "boundary":  # y and one rival on top, nearly tied
        rival = _random_other(labels, k, gen)
        lifted = _lift(base, rival, uniform(0.0, 5.0))
        top = lifted.gather(1, rival[:, None]).squeeze(1)
        return lifted.scatter(1, labels[:, None], (top + uniform(-0.5, 0.5))[:, None])
    if regime == "dirichlet":
        return log_dirichlet(log_uniform(*cfg.dirichlet_alpha, (n,), gen), k, gen)
    raise ValueError(f"unknown regime {regime!r}; valid: {REGIMES}")


def sample_mixture(n: int, k: int, cfg: MixtureConfig, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """n (logits, label) pairs at class count k: returns logits (n, k) float64, labels (n,), regime ids (n,)."""
    if k < 2 or n < 1:
        raise ValueError(f"need n >= 1 pairs and k >= 2 classes, got n={n}, k={k}")
    weights = torch.tensor(cfg.weights(), dtype=torch.float64)
    regime = torch.multinomial(weights / weights.sum(), n, replacement=True, generator=gen)
    labels = torch.randint(0, k, (n,), generator=gen)
    logits = torch.empty((n, k), dtype=torch.float64)
    for index, name in enumerate(REGIMES):
        rows = (regime == index).nonzero().flatten()
        if rows.numel():
            logits[rows] = _regime_logits(name, rows.numel(), k, labels[rows], cfg, gen)
    return logits, labels, regime


def sample_expectation(n_truths: int, k: int, cfg: ExpectationConfig, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Truths q and R predictions around each: returns log q (T, K), logits (T*R, K), truth index (T*R,).

    With ``one_hot_fraction`` > 0 some truths become one-hot at their top class (log q = -inf
    elsewhere). Real training labels are one-hot; without such truths the search never sees that
    predicting p_y -> 1 is right, and it learns to push confident-correct predictions back.
    """
    if k < 2 or n_truths < 1:
        raise ValueError(f"need n_truths >= 1 and k >= 2 classes, got n_truths={n_truths}, k={k}")
    r = cfg.predictions_per_truth
    log_q = log_dirichlet(log_uniform(*cfg.alpha, (n_truths,), gen), k, gen)
    truth = torch.arange(n_truths).repeat_interleave(r)
    sigma = log_uniform(*cfg.sigma, (n_truths * r, 1), gen)
    noise = torch.randn((n_truths * r, k), generator=gen, dtype=torch.float64)
    logits = log_q[truth] + sigma * noise
    if cfg.one_hot_fraction > 0:  # the predictions stay where they were; the truth sharpens to e_top
        one_hot = torch.rand((n_truths, 1), generator=gen, dtype=torch.float64) < cfg.one_hot_fraction
        top = torch.full_like(log_q, float("-inf")).scatter_(1, log_q.argmax(1, keepdim=True), 0.0)
        log_q = torch.where(one_hot, top, log_q)
    return log_q, logits, truth


__all__ = [
    "REGIMES",
    "MixtureConfig",
    "ExpectationConfig",
    "sample_mixture",
    "sample_expectation",
    "sample_class_count",
    "log_dirichlet",
    "log_gamma",
    "log_uniform",
]
