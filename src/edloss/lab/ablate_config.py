"""What an ablation is: its arms, sigmas, seeds and budgets (``AblationConfig``), and the pretraining
run each (arm, sigma, seed) cell trains (``plan``). Shared by the runner, the CMA-ES arm, the
summary and the fitness-noise study."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path


from edloss.configs import check_fields
from edloss.evolve import MAX_SIGMA, ESConfig
from edloss.pretrain import (RUN_FILES, PretrainConfig)

ARMS = ("chaotic", "gaussian", "cmaes")
ES_ARMS = ("chaotic", "gaussian")
DEFAULT_SIGMAS = (0.03, 0.1, 0.3)
DEFAULT_SEEDS = tuple(range(10))
DEFAULT_LEVELS = (0.9, 0.93)  # under v3, reached by all 10 seeds at the best sigma in the default ablation (README)
DEFAULT_TRAIN_LEVELS = (0.93, 0.94)  # 0.95 (best of P, smoothed) was reached by few v3 seeds in 100 generations
DEFAULT_CMAES_SIGMAS = (0.1,)
DEFAULT_GENERATIONS = 100
DEFAULT_HELDOUT_EVERY = 5
METRICS = ("fitness", "value", "value_hard", "calibration", "gradient", "kendall_tau")
WORLD_METRICS = ("accuracy_delta", "nll_delta", "ece_delta", "diverged")  # a students-world ablation's, beside fitness
ABLATION_FILE = "ablation.json"
FORMAT_NAME = "edloss-ablation"
FORMAT_VERSION = 1
CMA_CHECKPOINT = "cma_checkpoint.pkl"
CMA_CHECKPOINT_VERSION = 1  # "elapsed_seconds" was added later, optional: older checkpoints still load
CMA_RUN_FILES = tuple(CMA_CHECKPOINT if name == "checkpoint.pt" else name for name in RUN_FILES)
DEFAULT_COMPARE_ARGS = "--seeds 0 1 2 --models resnet20"


@dataclass(frozen=True)
class AblationConfig:
    """The whole experiment: a base pretraining config and the arms x sigmas x seeds grid."""

    base: PretrainConfig = field(default_factory=lambda: default_base())
    arms: tuple[str, ...] = ARMS
    sigmas: tuple[float, ...] = DEFAULT_SIGMAS  # of the ES arms
    seeds: tuple[int, ...] = DEFAULT_SEEDS
    levels: tuple[float, ...] = DEFAULT_LEVELS  # held-out fitness levels for "generations to reach"
    train_levels: tuple[float, ...] = DEFAULT_TRAIN_LEVELS  # levels of the smoothed training fitness (best of P: biased up)
    smooth_window: int = 10  # running mean of the training fitness, in generations
    heldout_smooth: int = 3  # running mean of the held-out fitness, in held-out evaluations
    cmaes_sigmas: tuple[float, ...] = DEFAULT_CMAES_SIGMAS  # CMA-ES adapts its step size: its sigma0 values

    def arm_sigmas(self, arm: str) -> tuple[float, ...]:
        return self.cmaes_sigmas if arm == "cmaes" else self.sigmas

    def cells(self) -> list[tuple[str, float]]:
        """Every (arm, sigma) of the grid, sigmas ascending then arms in order."""
        sigmas = sorted(set(self.sigmas) | (set(self.cmaes_sigmas) if "cmaes" in self.arms else set()))
        return [(arm, s) for s in sigmas for arm in self.arms if s in self.arm_sigmas(arm)]

    def __post_init__(self) -> None:
        check_fields(self)
        object.__setattr__(self, "arms", tuple(self.arms))
        object.__setattr__(self, "sigmas", tuple(float(s) for s in self.sigmas))
        object.__setattr__(self, "seeds", tuple(int(s) for s in self.seeds))
        object.__setattr__(self, "levels", tuple(float(x) for x in self.levels))
        object.__setattr__(self, "train_levels", tuple(float(x) for x in self.train_levels))
        object.__setattr__(self, "cmaes_sigmas", tuple(float(s) for s in self.cmaes_sigmas))
        unknown = [a for a in self.arms if a not in ARMS]
        if unknown or not self.arms:
            raise ValueError(f"arms must be some of {ARMS}, got {list(self.arms)}")
        for name, values in (("arms", self.arms), ("sigmas", self.sigmas), ("seeds", self.seeds), ("cmaes_sigmas", self.cmaes_sigmas)):
            if len(set(values)) != len(values):
                raise ValueError(f"{name} repeat: {list(values)}")
        for name, values in (("sigmas", self.sigmas), ("cmaes_sigmas", self.cmaes_sigmas)):
            if not values or any(not (math.isfinite(s) and 0 < s <= MAX_SIGMA) for s in values):
                raise ValueError(f"{name} must be in (0, {MAX_SIGMA:g}] (at least one), got {list(values)}")
        if not self.seeds or any(s < 0 for s in self.seeds):
            raise ValueError(f"seeds must be >= 0, got {list(self.seeds)}")
        if any(not math.isfinite(x) for x in self.levels + self.train_levels):
            raise ValueError(f"levels must be finite, got {list(self.levels)}, {list(self.train_levels)}")
        if self.smooth_window < 1 or self.heldout_smooth < 1:
            raise ValueError(f"smooth_window and heldout_smooth must be >= 1, got {self.smooth_window}, {self.heldout_smooth}")


def default_base() -> PretrainConfig:
    """The ablation's default budget: ``edloss pretrain``'s config with 100 generations, held-out every 5."""
    return PretrainConfig(es=ESConfig(generations=DEFAULT_GENERATIONS), heldout_every=DEFAULT_HELDOUT_EVERY)


@dataclass(frozen=True)
class Task:
    arm: str
    sigma: float
    seed: int
    config: PretrainConfig
    out_dir: Path


def sigma_label(sigma: float) -> str:
    return f"sigma{sigma:g}"


def run_config(base: PretrainConfig, arm: str, sigma: float, seed: int) -> PretrainConfig:
    """The base config with this arm's mutation, seed and sigma (sigma_final keeps the base ratio)."""
    ratio = base.es.sigma_final / base.es.sigma_init
    mutation = arm if arm in ES_ARMS else "gaussian"  # unused by CMA-ES, whose sampling is Gaussian
    return replace(base, es=replace(base.es, mutation=mutation, seed=seed, sigma_init=sigma, sigma_final=sigma * ratio))


def plan(cfg: AblationConfig, out: Path) -> list[Task]:
    """Every run, seed outermost so a partial ablation covers every arm and sigma alike."""
    return [Task(arm, sigma, seed, run_config(cfg.base, arm, sigma, seed), Path(out) / arm / sigma_label(sigma) / f"seed{seed}")
            for seed in cfg.seeds for arm, sigma in cfg.cells()]
