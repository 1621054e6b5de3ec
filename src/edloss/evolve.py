"""An evolution strategy with Gaussian or chaotic (logistic-map) mutation, ask/tell style.

The state is explicit (``ESState``): population, chaotic states, generator state and generation
count, so a run can be checkpointed and resumed to continue exactly as an uninterrupted run.

Each generation: evaluate the whole population (elites included: under noisy fitness a stale
score lies, so elites are re-evaluated on the fresh batch); keep the top ``parents`` by fitness
(truncation selection); copy the top ``elites`` unchanged; fill the other slots with a parent
copy plus a mutation step scaled by a sigma schedule shared by both mutations.

Chaotic mutation keeps one logistic-map state c per offspring slot and gene, in a (P, D)
float64 tensor that persists across generations: c <- 4 c (1 - c), step = 2c - 1. Under the
map's invariant (arcsine) law, 2c - 1 has variance 1/2, so Gaussian mutation uses N(0, 1)/sqrt(2)
by default: the ablation then compares chaos against noise, not one step size against another.
In floating point the map can land exactly on 0, 0.25, 0.5, 0.75 or 1 and stick there (0 and
0.75 are fixed points; the others lead to them): such states are detected and reseeded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from edloss.configs import check_fields, check_range

MUTATIONS = ("chaotic", "gaussian")
SCHEDULES = ("cosine", "linear", "constant")
STUCK_VALUES = (0.0, 0.25, 0.5, 0.75, 1.0)
AVOID_RADIUS = 1e-3
MAX_GENERATIONS = 10**6  # days of CPU even at P = 16: a larger count is a typo, and 10**20 would run forever
# Genes start at scale ~1 (lossnet.init_scale): a step of 100 per gene is already no search, and a
# much larger one overflows float32 (1e300 -> inf weights -> a NaN fitness, reported as the objective's fault)
MAX_SIGMA = 100.0


def _low_period_points(max_period: int = 4, max_dyadic: int = 3) -> torch.Tensor:
    """Points of period <= max_period of x -> 4x(1-x), and those that reach 0 within a few steps.

    By the conjugacy x = sin^2(pi theta), theta -> 2 theta mod 1: periodic points have
    theta = j / (2^n - 1), and points that end at 0 have dyadic theta = j / 2^m.
    """
    thetas = {j / (2**n - 1) for n in range(1, max_period + 1) for j in range(2**n - 1)}
    thetas |= {j / 2**m for m in range(max_dyadic + 1) for j in range(2**m + 1)}
    points = {math.sin(math.pi * t) ** 2 for t in thetas} | set(STUCK_VALUES)
    return torch.tensor(sorted(points), dtype=torch.float64)


AVOID = _low_period_points()


@dataclass(frozen=True)
class ESConfig:
    """Evolution strategy settings; ``seed`` fixes everything the strategy draws."""

    population: int = 64
    parents: int | None = None  # default: population // 4
    elites: int | None = None  # default: population // 16 (at least 1, at most parents)
    mutation: str = "chaotic"
    sigma_init: float = 0.1
    sigma_final: float = 0.01
    schedule: str = "cosine"
    generations: int = 500
    match_variance: bool = True  # Gaussian step N(0,1)/sqrt(2): same variance as 2c - 1
    seed: int = 0

    def __post_init__(self) -> None:
        """Every field is checked here, naming it and its valid range, so a bad config fails before a run starts."""
        check_fields(self)
        if self.mutation not in MUTATIONS:
            raise ValueError(f"mutation must be one of {MUTATIONS}, got {self.mutation!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        check_range("population", self.population, 2)
        if self.parents is None:
            object.__setattr__(self, "parents", max(1, self.population // 4))
        if not 1 <= self.parents <= self.population:
            raise ValueError(f"parents must be in [1, population={self.population}], got {self.parents}")
        if self.elites is None:  # the elites are the best parents, so never more of them than parents
            object.__setattr__(self, "elites", min(max(1, self.population // 16), self.parents))
        if not 0 <= self.elites <= self.parents or self.elites >= self.population:
            raise ValueError(f"elites must be in [0, min(parents={self.parents}, population - 1={self.population - 1})] "
                             f"(elites are the best parents, copied unchanged), got {self.elites}")
        check_range("generations", self.generations, 1, MAX_GENERATIONS)
        check_range("sigma_init", self.sigma_init, 0, MAX_SIGMA, lo_open=True)
        check_range("sigma_final", self.sigma_final, 0, MAX_SIGMA, lo_open=True)
        if not 0 <= self.seed < 2**63:
            raise ValueError(f"seed must be in [0, 2**63), got {self.seed}")


@dataclass
class ESState:
    """Everything a generation needs: checkpoint this and the run continues bit for bit."""

    generation: int
    population: torch.Tensor  # (P, D) float32
    chaos: torch.Tensor  # (P, D) float64 logistic-map states, one sequence per slot and gene
    rng_state: torch.Tensor  # torch.Generator state (uint8)
    reseeds: int = 0  # chaotic states found stuck and redrawn so far

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("generation", "population", "chaos", "rng_state", "reseeds")}

    @classmethod
    def from_dict(cls, d: dict) -> ESState:
        return cls(**{k: d[k] for k in ("generation", "population", "chaos", "rng_state", "reseeds")})


def sigma_at(cfg: ESConfig, generation: int) -> float:
    """Mutation scale at a generation; the same schedule serves both mutations."""
    if cfg.schedule == "constant":
        return cfg.sigma_init
    frac = min(generation / max(cfg.generations - 1, 1), 1.0)
    if cfg.schedule == "linear":
        return cfg.sigma_init + (cfg.sigma_final - cfg.sigma_init) * frac
    return cfg.sigma_final + 0.5 * (cfg.sigma_init - cfg.sigma_final) * (1 + math.cos(math.pi * frac))


def draw_chaos(shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    """Initial logistic-map states in (0, 1), at least AVOID_RADIUS from low-period points."""
    c = torch.rand(shape, generator=gen, dtype=torch.float64)
    while True:
        bad = (c.unsqueeze(-1) - AVOID).abs().min(dim=-1).values < AVOID_RADIUS
        if not bool(bad.any()):
            return c
        c = torch.where(bad, torch.rand(shape, generator=gen, dtype=torch.float64), c)


def logistic_step(c: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, int]:
    """One step of c <- 4c(1-c); states that landed on a sticking value are redrawn."""
    c = 4.0 * c * (1.0 - c)
    stuck = (c <= 0) | (c >= 1) | (c == 0.25) | (c == 0.5) | (c == 0.75)
    n = int(stuck.sum())
    if n:
        c = c.clone()
        c[stuck] = draw_chaos((n,), gen)
    return c, n


def init(cfg: ESConfig, scale: torch.Tensor) -> ESState:
    """A fresh population N(0, scale^2) per gene, and fresh chaotic states."""
    gen = torch.Generator().manual_seed(cfg.seed)
    d = scale.numel()
    population = torch.randn((cfg.population, d), generator=gen) * scale
    chaos = draw_chaos((cfg.population, d), gen)
    return ESState(0, population, chaos, gen.get_state())


def ask(state: ESState) -> torch.Tensor:
    """The individuals to evaluate this generation (elites from the last one included)."""
    return state.population


def tell(state: ESState, fitness: torch.Tensor, cfg: ESConfig) -> ESState:
    """Select on this generation's fitness and produce the next population."""
    p, d = state.population.shape
    if fitness.shape != (p,):
        raise ValueError(f"fitness must have shape ({p},), got {tuple(fitness.shape)}")
    if not bool(torch.isfinite(fitness).all()):
        raise ValueError("fitness contains NaN or Inf; check the objective configuration")
    gen = torch.Generator()
    gen.set_state(state.rng_state)
    order = torch.sort(fitness, descending=True, stable=True).indices
    parents = state.population[order[: cfg.parents]]
    n_children = p - cfg.elites
    parent_of = torch.arange(n_children) % cfg.parents
    chaos, reseeded = state.chaos, 0
    if cfg.mutation == "chaotic":
        chaos, reseeded = logistic_step(state.chaos, gen)
        step = (2.0 * chaos[cfg.elites :] - 1.0).float()
    else:
        step = torch.randn((n_children, d), generator=gen)
        if cfg.match_variance:
            step = step / math.sqrt(2.0)
    children = parents[parent_of] + sigma_at(cfg, state.generation) * step
    population = torch.cat([state.population[order[: cfg.elites]], children])
    return ESState(state.generation + 1, population, chaos, gen.get_state(), state.reseeds + reseeded)
