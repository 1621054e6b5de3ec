"""Near pairs: the second gate of ``edloss world-check``. Does the world get the *sign* of small
differences right, the ones a search makes?

A world can rank different losses in CIFAR's order (the first gate, Spearman over the panel) and
still be wrong about a loss against its start, or against itself at another gain, and those near
differences are exactly what an evolution strategy optimises. ``PAIRS`` holds pairs of losses that
differ by a little, each side with its recorded CIFAR result (mean last-epoch test accuracy over
its seeds, sample std, seed count, the run records under ``docs/figures/`` it comes from), as the
panel records its arms:

* **evolved vs start**: a loss a search found in a students world against the loss it started from
  (the start's numbers on the same seeds where the records have them);
* **gain**: a loss times G (the lab's ``gain=``) against itself at gain 1;
* **version / mutation / objective**: v3 against v4, v3 evolved with chaotic against Gaussian mutation,
  two severities of one noise loss, a noise loss made for K = 10 against the K-free one;
* **prior strength**: a prior-aware loss or logit adjustment at tau = 1.2 against tau = 1.

**Which pairs count.** A pair counts when both sides have at least ``MIN_SEEDS`` seeds and their
CIFAR difference exceeds seed noise: |mean_a - mean_b| > sqrt(std_a^2 / n_a + std_b^2 / n_b), the
standard error of the difference of two independent means. Pairs under it are listed, not counted:
CIFAR itself cannot tell their sign. **Agreement**: the world's difference (fitness of a minus
fitness of b, in the regime's world) has the sign of CIFAR's; a world difference of exactly 0
counts as wrong. The gate's number is the fraction of counted pairs the world gets right.

``tuned`` says whether a pair's CIFAR numbers come from issue 33's protocol (each loss at its own
learning rate picked on validation: the regime matrix's records) or from one shared learning rate
for every loss (the recipe's 0.1, every older record). The gate is meant to be judged against tuned
numbers; while most pairs are untuned, its verdict is provisional. No pair records a noise loss against its
neighbour rate's loss (e.g. the eta = 0.6 loss at eta = 0.4): no such CIFAR run exists yet.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

MIN_SEEDS = 3  # the "tuned protocol, >= 3 seeds"
# A pair one standard error apart is apart by chance about a third of the time when the two losses are
# equal, and a world cannot be right about chance: "firm" pairs, two standard errors apart, are the ones
# whose sign CIFAR itself establishes. Reported beside the gate, not instead of it.
FIRM = 2.0


@dataclass(frozen=True)
class Side:
    """One loss of a pair with its recorded CIFAR result (the regime's recipe)."""

    label: str
    spec: str  # a registry spec, "{panel}" standing for the lab's panel folder, as in PANEL
    cifar: float
    std: float
    seeds: int
    source: str  # run records under docs/figures/


@dataclass(frozen=True)
class Pair:
    kind: str  # "evolved vs start", "gain", "version", "mutation", "objective", "prior strength"
    a: Side
    b: Side
    tuned: bool = False  # CIFAR numbers at issue 33's tuned protocol; False: every loss at the recipe's one lr


FIG = "docs/figures/"
V4_012 = Side("edl-v4 (seeds 0-2)", "edl", 61.76, 0.75, 3, FIG + "cifar10-resnet20-v4-grid (seeds 0-2)")
V4_10 = Side("edl-v4", "edl", 61.31, 0.83, 10, FIG + "cifar10-resnet20-v4-grid")
V3 = Side("edl-v3", "edl:name=v3", 60.62, 1.90, 5, FIG + "cifar10-resnet20 (edl-kldcal)")
N04_K10 = Side("edl-noise-0.4-k10", "edl:noise_rate=0.4,num_classes=10", 39.92, 1.73, 3, FIG + "noise-cifar10-eta0.4")
N06_K10 = Side("edl-noise-0.6-k10", "edl:noise_rate=0.6,num_classes=10", 28.65, 0.64, 3, FIG + "noise-cifar10-eta0.6")
LT_PRIOR = Side("edl-prior", "edl:prior_aware=true", 33.16, 1.20, 3, FIG + "longtail/cifar10-rho100")
LT100_PRIOR = Side("edl-prior", "edl:prior_aware=true", 13.52, 0.54, 3, FIG + "longtail/cifar100-rho100")
STUDENTS = FIG + "students/cifar/"
REGIMES = FIG + "regimes/"  # issue 33's matrix: tuned numbers
LIMITED = REGIMES + "c10-limited-50"
V4_LIMITED = Side("edl-v4", "edl", 39.12, 1.42, 5, LIMITED)
BUDGET = REGIMES + "c10-budget"
V4_BUDGET = Side("edl-v4", "edl", 61.59, 1.51, 3, BUDGET)
V4_C100 = Side("edl-v4", "edl", 25.60, 2.38, 3, REGIMES + "c100-budget")
NOISE_TUNED = REGIMES + "c10-noise-0.4"
N04_K10_TUNED = Side("edl-noise-0.4-k10", "edl:noise_rate=0.4,num_classes=10", 42.12, 1.51, 3, NOISE_TUNED)
NOISE06_TUNED = REGIMES + "c10-noise-0.6"
N06_K10_TUNED = Side("edl-noise-0.6-k10", "edl:noise_rate=0.6,num_classes=10", 27.02, 1.04, 3, NOISE06_TUNED)

PAIRS: dict[str, list[Pair]] = {
    "clean": [
        Pair("evolved vs start", Side("edl-students-clean", "edl:{panel}/students-clean", 60.11, 0.14, 3, STUDENTS + "clean-students"), V4_012),
        Pair("evolved vs start", Side("edl-students-images", "edl:{panel}/students-images-clean", 60.00, 0.75, 3,
                                      STUDENTS + "clean-students-images"), V4_012),
        Pair("evolved vs start", Side("edl-students-robust", "edl:{panel}/students-robust-clean", 61.86, 0.30, 3,
                                      STUDENTS + "clean-students-robust"), V4_012),
        Pair("evolved vs start", Side("edl-students-robust-calibrated", "edl:{panel}/students-robust-calibrated-clean", 59.84, 1.13, 10,
                                      STUDENTS + "clean-students-robust-calibrated"), V4_10),
        Pair("version", V3, V4_10),
        Pair("mutation", V3, Side("edl-v3-gaussian", "edl:{panel}/v3-gaussian", 58.12, 1.76, 3, FIG + "cifar10-resnet20 (edl-kldcal-gaussian)")),
        # tuned: the regime matrix's c10-limited-50 (500 images, trained to convergence), each arm at its own pick,
        # on the seeds both sides finished (the near arms of c10-limited-50: Regime.arms in src/edloss/lab/regimes.py)
        Pair("version", Side("edl-v3", "edl:name=v3", 40.08, 1.58, 5, LIMITED), V4_LIMITED, tuned=True),
        Pair("gain", Side("edl-v4 gain 2", "edl:gain=2", 39.98, 1.20, 5, LIMITED), V4_LIMITED, tuned=True),
        Pair("gain", Side("edl-v4 gain 0.5", "edl:gain=0.5", 40.15, 0.63, 5, LIMITED), V4_LIMITED, tuned=True),
        # the same gains on c10-budget (8,000 images, 8 epochs), 3 seeds each at its pick: the default leads both there
        Pair("gain", Side("edl-v4 gain 2", "edl:gain=2", 60.60, 0.66, 3, BUDGET), V4_BUDGET, tuned=True),
        Pair("gain", Side("edl-v4 gain 0.5", "edl:gain=0.5", 60.91, 0.33, 3, BUDGET), V4_BUDGET, tuned=True),
        # the weight-decay check's baselines at gain 0.5 against gain 1 (session 21), each side at its own pick
        Pair("gain", Side("ce gain 0.5", "ce:gain=0.5", 39.72, 1.11, 5, LIMITED), Side("ce", "ce", 39.08, 1.19, 5, LIMITED), tuned=True),
        Pair("gain", Side("poly1 gain 0.5", "poly1:gain=0.5", 39.78, 0.77, 5, LIMITED),
             Side("poly1", "poly1", 39.98, 0.84, 5, LIMITED), tuned=True),
        Pair("gain", Side("ce gain 0.5", "ce:gain=0.5", 59.25, 1.11, 3, BUDGET), Side("ce", "ce", 58.79, 0.57, 3, BUDGET), tuned=True),
        Pair("gain", Side("poly1 gain 0.5", "poly1:gain=0.5", 61.86, 0.48, 3, BUDGET),
             Side("poly1", "poly1", 60.79, 0.72, 3, BUDGET), tuned=True),
    ],
    "noise-0.4": [
        Pair("evolved vs start", Side("edl-students-noise", "edl:{panel}/students-noise-0.4", 34.82, 1.11, 3, STUDENTS + "noise-0.4-students"), N04_K10),
        Pair("evolved vs start", Side("edl-students-noise-long", "edl:{panel}/students-noise-0.4-long", 37.53, 3.30, 3,
                                      STUDENTS + "noise-0.4-students-long"), N04_K10),
        Pair("gain", Side("edl-noise-0.4-k10 gain 0.25", "edl:name=noise-0.4-k10,gain=0.25", 38.70, 1.76, 3, STUDENTS + "noise-0.4-gain0.25"), N04_K10),
        Pair("objective", Side("edl-noise-kld", "edl:{panel}/noise-kld-0.4", 34.05, 2.36, 3, FIG + "noise-cifar10-eta0.4 (edl-noise)"),
             Side("edl-noise-tv", "edl:noise_rate=0.4", 34.04, 2.36, 2, FIG + "noise-cifar10-eta0.4 (edl-tv)")),
        Pair("objective", N04_K10, Side("edl-noise-tv", "edl:noise_rate=0.4", 34.04, 2.36, 2, FIG + "noise-cifar10-eta0.4 (edl-tv)")),
        # tuned (session 22): the regime matrix's c10-noise-0.4, the same recipe, each arm at its own pick, 3 seeds
        Pair("evolved vs start", Side("edl-students-noise-long", "edl:{panel}/students-noise-0.4-long", 39.48, 2.19, 3,
                                      NOISE_TUNED), N04_K10_TUNED, tuned=True),
        Pair("objective", N04_K10_TUNED, Side("edl-noise-tv", "edl:noise_rate=0.4", 39.69, 2.40, 3, NOISE_TUNED), tuned=True),
    ],
    "noise-0.6": [
        Pair("evolved vs start", Side("edl-students-noise-wide", "edl:{panel}/students-noise-0.6-wide", 28.18, 2.27, 3,
                                      STUDENTS + "noise-0.6-students-wide"), N06_K10),
        Pair("evolved vs start", Side("edl-students-noise-images-cal", "edl:{panel}/students-noise-0.6-images-calibrated", 27.44, 1.77, 3,
                                      STUDENTS + "noise-0.6-students-images-calibrated"), N06_K10),
        Pair("gain", Side("edl-noise-0.6-k10 gain 0.25", "edl:name=noise-0.6-k10,gain=0.25", 26.87, 0.63, 3, STUDENTS + "noise-0.6-gain0.25"), N06_K10),
        # tuned (session 24): the regime matrix's c10-noise-0.6, each arm at its own pick of 0.25-4x, 3 seeds
        Pair("evolved vs start", Side("edl-students-noise-wide", "edl:{panel}/students-noise-0.6-wide", 28.05, 0.72, 3,
                                      NOISE06_TUNED), N06_K10_TUNED, tuned=True),
    ],
    "longtail-100": [
        Pair("evolved vs start", Side("edl-students-lt", "edl:checkpoint={panel}/students-longtail-100,prior_aware=true", 35.77, 2.10, 3,
                                      FIG + "longtail/cifar10-rho100-students"), LT_PRIOR),
        Pair("evolved vs start", Side("edl-students-lt-hard", "edl:checkpoint={panel}/students-longtail-100-hard,prior_aware=true", 35.45, 1.03, 3,
                                      FIG + "longtail/cifar10-rho100-students-hard"), LT_PRIOR),
    ],
    "clean-k100": [  # tuned: the regime matrix's c100-budget (CIFAR-100, 20,000 images, 5 epochs), each arm at its pick
        Pair("objective", Side("edl-k100", "edl:{panel}/edl-k100", 25.78, 1.16, 3, REGIMES + "c100-budget"), V4_C100, tuned=True),
        Pair("gain", Side("edl-v4 gain 2", "edl:gain=2", 24.66, 0.55, 3, REGIMES + "c100-budget"), V4_C100, tuned=True),
        Pair("gain", Side("edl-v4 gain 0.5", "edl:gain=0.5", 26.22, 1.34, 3, REGIMES + "c100-budget"), V4_C100, tuned=True),
        Pair("gain", Side("ce gain 0.5", "ce:gain=0.5", 25.90, 1.47, 3, REGIMES + "c100-budget"),
             Side("ce", "ce", 25.42, 1.88, 3, REGIMES + "c100-budget"), tuned=True),
        Pair("gain", Side("label_smoothing gain 0.5", "label_smoothing:0.1,gain=0.5", 25.39, 1.65, 3, REGIMES + "c100-budget"),
             Side("label_smoothing", "label_smoothing:0.1", 26.15, 2.22, 3, REGIMES + "c100-budget"), tuned=True),
    ],
    "longtail-100-k100": [
        Pair("evolved vs start", Side("edl-students-lt", "edl:checkpoint={panel}/students-longtail-100,prior_aware=true", 12.12, 0.59, 3,
                                      FIG + "longtail/cifar100-rho100"), LT100_PRIOR),
        Pair("evolved vs start", Side("edl-students-lt-hard", "edl:checkpoint={panel}/students-longtail-100-hard,prior_aware=true", 12.32, 0.18, 3,
                                      FIG + "longtail/cifar100-rho100"), LT100_PRIOR),
        Pair("prior strength", Side("edl-prior tau 1.2", "edl:prior_aware=true,prior_strength=1.2", 13.23, 0.67, 3,
                                    FIG + "longtail/cifar100-rho100-tau (seed 0) + cifar100-rho100-tau1.2 (seeds 1, 2)"), LT100_PRIOR),
        Pair("prior strength", Side("logit_adjusted tau 1.2", "logit_adjusted:tau=1.2", 12.31, 0.78, 3,
                                    FIG + "longtail/cifar100-rho100-tau (seed 0) + cifar100-rho100-tau1.2 (seeds 1, 2)"),
             Side("logit_adjusted", "logit_adjusted", 13.30, 0.91, 3, FIG + "longtail/cifar100-rho100")),
    ],
}


def seed_noise(pair: Pair) -> float:
    """The standard error of the CIFAR difference: sqrt(std_a^2 / n_a + std_b^2 / n_b)."""
    return math.sqrt(pair.a.std ** 2 / pair.a.seeds + pair.b.std ** 2 / pair.b.seeds)


def counts(pair: Pair, z: float = 1.0) -> bool:
    """Whether CIFAR can tell the pair's sign: both sides >= MIN_SEEDS seeds, |difference| > z x seed noise
    (z = 1: the issue's rule; z = FIRM: CIFAR itself sure of the sign, at about 95%)."""
    return min(pair.a.seeds, pair.b.seeds) >= MIN_SEEDS and abs(pair.a.cifar - pair.b.cifar) > z * seed_noise(pair)


def pair_specs(regime: str) -> list[str]:
    """Every spec the regime's pairs need a world score for, in order, once each."""
    return list(dict.fromkeys(s.spec for p in PAIRS.get(regime, []) for s in (p.a, p.b)))


def pair_gate(regime: str, world_score: dict[str, float], key: str = "fitness") -> dict[str, Any]:
    """The regime's near pairs judged by the world (``world_score``: spec -> its world score):
    each pair's CIFAR and world differences, whether it counts and whether the signs agree, and
    the gate: the fraction right among the pairs that count (None when none counts)."""
    rows = []
    for pair in PAIRS.get(regime, []):
        cifar = pair.a.cifar - pair.b.cifar
        a, b = world_score.get(pair.a.spec), world_score.get(pair.b.spec)
        world = None if a is None or b is None else a - b
        rows.append({"kind": pair.kind, "a": pair.a.label, "b": pair.b.label, "spec_a": pair.a.spec, "spec_b": pair.b.spec,
                     "cifar_a": pair.a.cifar, "cifar_b": pair.b.cifar, "seeds_a": pair.a.seeds, "seeds_b": pair.b.seeds,
                     "source_a": pair.a.source, "source_b": pair.b.source, "cifar_diff": cifar, "seed_noise": seed_noise(pair),
                     "counts": counts(pair) and world is not None, "firm": counts(pair, FIRM) and world is not None,
                     "world_diff": world, "tuned": pair.tuned,
                     "agrees": None if world is None else bool(world * cifar > 0)})
    counted = [r for r in rows if r["counts"]]
    right = sum(r["agrees"] for r in counted)
    firm = [r for r in rows if r["firm"]]
    return {"pairs": rows, "recorded": len(rows), "counted": len(counted), "right": right,
            "firm_counted": len(firm), "firm_right": sum(r["agrees"] for r in firm),
            "agreement": right / len(counted) if counted else None, "tuned": all(r["tuned"] for r in rows) if rows else None,
            "rule": f"counted: both sides >= {MIN_SEEDS} seeds and |CIFAR difference| > sqrt(std_a^2/n_a + std_b^2/n_b); "
                    "right: the world's difference has the same sign; firm: |CIFAR difference| > 2 x that noise"}
