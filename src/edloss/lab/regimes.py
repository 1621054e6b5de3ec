"""The regime matrix: every loss at its own best learning rate, across the regimes users are in.

A loss chosen in one regime (CIFAR-10, 8k images, 8 epochs, one shared learning rate) can win
there by what that regime rewards. The matrix asks the question again where it matters: little
data trained to convergence, 100 classes, today's CPU budget and the full training set. Each
regime is a tuned comparison (``edloss compare --lr-grid``): every arm, CE included, picks its
learning rate from the same grid on validation and then runs its test seeds at its pick; a regime
too long to sweep (``c10-full``) runs each arm at the pick it made in a calibration regime
(``Regime.picks_from``).

The regimes are split, before any choice is made, into **calibration** regimes (where losses
are chosen) and **held-out** regimes (where the choice is only reported). ``edloss regimes``
runs any of them into ``OUT/<regime>/`` (resumable: finished runs are skipped, interrupted ones
resume from their last epoch) and writes ``OUT/matrix.md`` / ``matrix.json`` / ``matrix.png``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from edloss.files import atomic_write_text, save_figure
from edloss.lab.data import get_spec
from edloss.lab.recipe import TrainConfig
from edloss.lab.tuning import at_edge, carried

ROLES = ("calibration", "held-out")
DEFAULT_GRID = (0.5, 1.0, 2.0)
# the anchors: CE, the two hand-made losses the default has to beat, the limited-data anchor (cosine), EDL
DEFAULT_ARMS = ("ce", "ls=label_smoothing:0.1", "poly1", "cosine", "edl")
# The arms of this repository's record beyond the anchors, each added before its runs (docs/results/regimes.md).
# A candidate's weights that do not ship live in the matrix folder: ``{out}`` is the ``--out`` folder.
K100_CANDIDATE = ("edl-k100=edl:{out}/candidates/edl-k100",)  # pretrained at K = 100 (issue 34), not shipped
# Near pairs for the students worlds' second gate (issue 34): v3 and the default times 2 and 0.5, each at its pick.
# Default candidates (session 20): the default at gain 2 and 0.5 tied Poly-1 on c10-limited-50 where the default
# trailed it. The rule, fixed before their runs (benchmarks/default_rule.py applies it): a candidate replaces the
# default if its worst calibration regime's validation gap to the best baseline beats the default's worst (-0.72)
# by more than 0.1 points. v3 is not a candidate: it is not monotone.
CANDIDATE_ARMS = ("edl-gain2=edl:gain=2", "edl-gain0.5=edl:gain=0.5")
NEAR_ARMS = ("edl-v3=edl:name=v3",) + CANDIDATE_ARMS
# Near pairs at eta = 0.4 (session 21, after the regime's first five tuning runs, one rate an arm, unread): the
# eta = 0.4 students world passed both of issue 34's gates on untuned records; these put its two untuned near
# pairs on the tuned protocol: the loss made for every K against the K = 10 one (a shape pair), and the world's
# evolved loss against its start (labelled as in world-check's panel). Reported only.
NOISE_NEAR_ARMS = ("edl-noise-anyk=edl:noise_rate=0.4", "edl-students-noise-long=edl:{panel}/students-noise-0.4-long")
# The weight-decay check (session 20, fixed before its runs): a gain g at rate m x lr is the same SGD as the loss at
# m g x lr with weight decay / g, so gain 0.5 is also "twice the weight decay", a knob no baseline had. CE and each
# calibration regime's best baseline get the same gain, and the rule is applied again with them as baselines.
WD_CHECK_K10 = ("ce-gain0.5=ce:gain=0.5", "poly1-gain0.5=poly1:gain=0.5")
WD_CHECK_K100 = ("ce-gain0.5=ce:gain=0.5", "ls-gain0.5=label_smoothing:0.1,gain=0.5")
# Its held-out part (session 21, before the rule's verdict and before any run of these regimes): the default at
# gain 0.5 and CE at gain 0.5 in the CIFAR-10 held-out regimes not yet started, reported whatever the verdict.
WD_HELD_OUT = ("edl-gain0.5=edl:gain=0.5", "ce-gain0.5=ce:gain=0.5")
TRAIN_PER_CLASS = {"cifar10": 5000, "cifar100": 500}  # training images per class before validation is cut


@dataclass(frozen=True)
class Regime:
    """One cell of the matrix: data, model, budget and seeds; everything else is the lab's recipe."""

    name: str
    role: str
    about: str
    dataset: str = "cifar10"
    model: str = "resnet20"
    per_class: int | None = None  # training images per class (class-balanced); None: every image left
    steps: int | None = None  # optimiser step budget; None: ``epochs``
    epochs: int | None = None
    val_size: int = 5000
    val_every: int = 1
    seeds: tuple[int, ...] = (0, 1, 2)
    tune_seeds: tuple[int, ...] = (0,)
    augment: bool = True
    label_noise: float = 0.0
    imbalance: float | None = None
    # the anchors, plus the record's candidates and checks; the noise and long-tail regimes bring their field's baselines
    arms: tuple[str, ...] = DEFAULT_ARMS
    grid: tuple[float, ...] = DEFAULT_GRID  # widened where the arms' picks sit at its edge (the same for every arm)
    # multipliers of the weight decay tuned with the rate (compare --wd-grid); None: the recipe's decay. The
    # matrix's regimes were fixed before it existed: their doubled-decay arms are the gain-0.5 ones
    wd_grid: tuple[float, ...] | None = None
    # torch.compile the model, for every arm alike: the long regimes' ResNet-20 steps ran 1.29x faster on one
    # CPU thread (0.564 vs 0.726 s at batch 128, after a ~40 s compile); set before any of their runs started
    compile: bool = False
    # bf16 autocast on the CPU (TrainConfig.cpu_amp), for every arm alike: compiled ResNet-20 steps ran 1.6-1.8x faster
    # on one thread (benchmarks/bench_cpu_amp.py); set in session 21 for the regimes with no finished run
    cpu_amp: bool = False
    # a held-out regime too long to sweep runs every arm at the pick it made in this calibration regime
    picks_from: str | None = None

    def train_images(self) -> int:
        k = get_spec(self.dataset).num_classes
        per_class = self.per_class or TRAIN_PER_CLASS[self.dataset] - self.val_size // k
        return per_class * k

    def epochs_for(self, batch_size: int) -> int:
        """The epoch count that gives the step budget (at least one epoch)."""
        if self.steps is None:
            return int(self.epochs)
        per_epoch = max(1, math.ceil(self.train_images() / batch_size))
        return max(1, round(self.steps / per_epoch))

    def recipe(self, base: TrainConfig) -> TrainConfig:
        """``base`` (the lab's defaults, the data folder, the device) with this regime's data and budget."""
        subset = None if self.per_class is None else self.per_class * get_spec(self.dataset).num_classes
        return replace(base, dataset=self.dataset, model=self.model, train_subset=subset,
                       balanced_subset=subset is not None, val_size=self.val_size, val_every=self.val_every,
                       epochs=self.epochs_for(base.batch_size), augment=self.augment, label_noise=self.label_noise,
                       imbalance=self.imbalance, compile=self.compile or base.compile,
                       cpu_amp=self.cpu_amp or base.cpu_amp)


REGIMES: dict[str, Regime] = {r.name: r for r in (
    Regime("c10-budget", "calibration", "today's CPU recipe: CIFAR-10, 8,000 images, 8 epochs",
           per_class=800, epochs=8, arms=DEFAULT_ARMS + CANDIDATE_ARMS + WD_CHECK_K10,
           grid=(0.25, 0.5, 1.0, 2.0)),  # widened: CE and LS picked 0.5x, the edge, on validation
    Regime("c10-limited-50", "calibration", "CIFAR-10, 50 images per class, trained to convergence",
           per_class=50, steps=400, val_size=1000, val_every=5, seeds=(0, 1, 2, 3, 4),
           arms=DEFAULT_ARMS + NEAR_ARMS + WD_CHECK_K10,
           grid=(0.25, 0.5, 1.0, 2.0)),  # widened: CE, LS and Poly-1 picked 0.5x, the edge, on validation
    Regime("c100-budget", "calibration", "CIFAR-100 (K = 100), 20,000 images, 5 epochs",
           dataset="cifar100", per_class=200, epochs=5,
           arms=DEFAULT_ARMS + K100_CANDIDATE + CANDIDATE_ARMS + WD_CHECK_K100,
           grid=(0.5, 1.0, 2.0, 4.0)),  # widened: CE picked 2x, the edge, on validation (train acc 23%: under-trained)
    Regime("c10-limited-250", "held-out", "CIFAR-10, 250 images per class, trained to convergence",
           per_class=250, steps=2000, val_size=1000, val_every=5, seeds=(0, 1, 2, 3, 4), compile=True, cpu_amp=True,
           arms=DEFAULT_ARMS + WD_HELD_OUT,
           grid=(0.25, 0.5, 1.0, 2.0)),  # c10-limited-50's grid, set before any of its runs: picks there sat at 0.5x
    # 2,000 steps = 100 epochs, as c10-limited-50's 400: a first try at 1,200 left CE at 0.25x at 88% train
    # accuracy and still rising ~4 points per 10 epochs, so it was discarded before any other run
    # 1,600 steps do not converge here (CE's train accuracy 40% at 0.5x, rising ~1 point an epoch); ~4-5x the
    # steps would, out of the CPU budget (about 45 min a run): reported as limited data, under-trained
    Regime("c100-limited", "held-out", "CIFAR-100, 50 images per class, 1,600 steps (short of convergence)",
           dataset="cifar100", per_class=50, steps=1600, val_size=2000, val_every=5, seeds=(0, 1, 2, 3, 4), compile=True,
           arms=DEFAULT_ARMS + K100_CANDIDATE,
           # widened in session 23, on seed 0's validation, before any test run: five arms picked 2x, the edge
           # of 0.5-2x (CE 25.3 / 27.9 / 28.0, label smoothing 25.5 / 26.5 / 28.1, cosine 12.9 / 16.5 / 21.1), the
           # sixth (EDL: 25.9 / 27.0) still running
           grid=(0.5, 1.0, 2.0, 4.0)),
    # an hour a run on one thread: each arm at its c10-budget pick (the same data at a smaller budget), so its
    # 3 seeds x 5 arms cost 15 runs, not 25; set before any of its runs
    Regime("c10-full", "held-out", "CIFAR-10, all 45,000 training images, 15 epochs (the confirmation)",
           epochs=15, compile=True, cpu_amp=True, picks_from="c10-budget",
           # Poly-1 x 2 wd, c10-budget's best arm on test, added after the verdict: a stronger baseline only
           arms=DEFAULT_ARMS + WD_HELD_OUT + ("poly1-gain0.5=poly1:gain=0.5",)),
    # the noise and long-tail verdicts, tuned: do they survive when every baseline may pick its rate?
    Regime("c10-noise-0.4", "held-out", "CIFAR-10, 40% symmetric label noise, 3,000 images, 15 epochs, no augmentation",
           per_class=300, epochs=15, val_size=1000, augment=False, label_noise=0.4,
           arms=("ce", "poly1", "gce", "sce", "edl-noise=edl:noise_rate=0.4,num_classes=10") + NOISE_NEAR_ARMS),
    # added in session 22, after c10-noise-0.4 finished: the eta = 0.6 verdict (second to GCE by 0.71 at one shared rate),
    # tuned the same way; held-out, nothing is chosen here. Near arm: the eta = 0.6 world's evolved loss
    Regime("c10-noise-0.6", "held-out", "CIFAR-10, 60% symmetric label noise, 3,000 images, 15 epochs, no augmentation",
           per_class=300, epochs=15, val_size=1000, augment=False, label_noise=0.6,
           arms=("ce", "poly1", "gce", "sce", "edl-noise=edl:noise_rate=0.6,num_classes=10",
                 "edl-students-noise-wide=edl:{panel}/students-noise-0.6-wide",
                 # session 24: evolved in the one world that passes issue 34's two gates (configs/students-noise-0.6-lr-grid.toml),
                 # added after the other arms finished; it runs the same grid and seeds
                 "edl-students-noise-lr-grid=edl:{out}/candidates/students-noise-0.6-lr-grid"),
           # widened in session 24, on seed 0's validation, before any test run: CE picked 0.5x, the edge (21.1 / 20.2 /
           # 9.5 at 0.5 / 1 / 2x), and GCE, SCE and the noise loss were all better at 0.5x than at 1x; then to 4x, still before
           # any test run, because GCE, the best baseline, picked 2x, the upper edge (27.8 / 30.1 / 26.9 / 32.5 at 0.25-2x).
           # Not widened below 0.25x, where CE and SCE picked: both trail GCE by 5-9 points of validation
           grid=(0.25, 0.5, 1.0, 2.0, 4.0)),
    Regime("c10-lt-100", "held-out", "CIFAR-10-LT, imbalance 100, ResNet-32, 5 epochs",
           model="resnet32", epochs=5, imbalance=100.0, cpu_amp=True,
           arms=("ce", "logit_adjusted", "balanced_softmax", "cb_ce", "edl-lt=edl:name=longtail-k10,prior_aware=true"),
           # widened in session 22, on seed 0's validation, before any test run: CE and logit adjustment picked 0.5x,
           # the edge (CE 29.5 / 25.4 / 14.5, LA 43.5 / 30.3 / 30.2 at 0.5 / 1 / 2x), and every arm's 0.5x beat its 2x
           grid=(0.25, 0.5, 1.0, 2.0)),
)}


def resolve(names: list[str]) -> list[Regime]:
    """Regime names (or ``all``, ``calibration``, ``held-out``) -> regimes, refusing unknown ones."""
    out: list[Regime] = []
    for name in names:
        if name == "all":
            chosen = list(REGIMES.values())
        elif name in ROLES:
            chosen = [r for r in REGIMES.values() if r.role == name]
        elif name in REGIMES:
            chosen = [REGIMES[name]]
        else:
            raise ValueError(f"unknown regime {name!r}; valid: {', '.join(REGIMES)}, or all, calibration, held-out")
        out += [r for r in chosen if r not in out]
    if not out:
        raise ValueError(f"no regime given; valid: {', '.join(REGIMES)}, or all, calibration, held-out")
    return out


def override(regime: Regime, per_class: int | None = None, steps: int | None = None) -> Regime:
    """``regime`` with another images-per-class count or step budget, refused with one line when
    the data cannot hold it or the budget is not a positive integer."""
    if steps is not None:
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"--steps must be an integer >= 1 (optimiser steps), got {steps!r}")
        regime = replace(regime, steps=steps, epochs=None)
    if per_class is not None:
        k = get_spec(regime.dataset).num_classes
        most = TRAIN_PER_CLASS[regime.dataset] - regime.val_size // k
        if isinstance(per_class, bool) or not isinstance(per_class, int) or not 1 <= per_class <= most:
            raise ValueError(f"--per-class must be an integer in [1, {most}] for {regime.name} ({regime.dataset} keeps "
                             f"{most} training images per class after its {regime.val_size}-image validation split), "
                             f"got {per_class!r}")
        regime = replace(regime, per_class=per_class)
    return regime


def run(regimes: list[Regime], out: Path, base: TrainConfig, arms: list[str] | None, grid: list[float] | None,
        progress: bool = True, threads: int | None = None, backfill: bool = False,
        wd_grid: list[float] | None = None) -> dict[str, Any]:
    """Run (or resume) each regime's tuned comparison into ``OUT/<regime>/``, then the matrix.
    ``arms`` None: each regime's own (the default arms, or its field's baselines); ``grid`` None:
    each regime's own learning-rate grid; ``wd_grid`` None: each regime's own weight-decay grid, if any. ``backfill``: help the process already running each
    regime instead, from the end of its runs (``edloss.lab.backfill``); no matrix is written."""
    from edloss.lab.backfill import backfill as backfill_regime
    from edloss.lab.compare import compare

    configs = {r.name: r.recipe(base) for r in regimes}
    for config in configs.values():
        config.validate()  # every regime's recipe is checked before the first one trains
    arms_of = {r.name: arms_for(r, out, arms) for r in regimes}
    check_losses(regimes, out, arms_of)
    check_carried(regimes, out, grid, arms_of, configs, wd_grid)
    for regime in regimes:
        _say(progress, f"== regime {regime.name} ({regime.role}){' backfill' if backfill else ''}: {regime.about}")
        wds = wd_grid or regime.wd_grid
        rates: dict[str, Any] = ({"carry_picks": out / regime.picks_from} if regime.picks_from
                                 else {"lr_grid": list(grid or regime.grid), "tune_seeds": list(regime.tune_seeds),
                                       "wd_grid": None if wds is None else list(wds)})
        if backfill:
            done = backfill_regime(configs[regime.name], arms_of[regime.name], list(regime.seeds), out / regime.name,
                                   progress=progress, **rates)
            _say(progress, f"== {regime.name}: {len(done['moved'])} runs moved into place; met the grid at {done['met']}")
            continue
        compare(configs[regime.name], arms_of[regime.name], list(regime.seeds), out / regime.name,
                progress=progress, threads=threads, **rates)
        write_matrix(out)
    return collect_matrix(out) if backfill else write_matrix(out)


def _as_recorded(path: Path) -> str:
    """``path`` relative to the working directory when under it (as the records name it, however
    ``--out`` was typed), else absolute: an arm's spec is part of its runs' configs."""
    path = path.absolute()
    return os.path.relpath(path) if path.is_relative_to(Path.cwd()) else str(path)


def arms_for(regime: Regime, out: Path, arms: list[str] | None = None) -> list[str]:
    """The arms ``regime`` runs (``arms``, else its own), with ``{out}`` naming the matrix folder,
    where candidates that do not ship keep their weights, and ``{panel}`` the lab's panel folder.
    Both are written relative to the working directory (the records were made from the repository's
    root; run from elsewhere, a finished run's spec no longer matches and it is refused, not rerun)."""
    from edloss.lab.world import PANEL_DIR

    out_text, panel_text = _as_recorded(out), _as_recorded(PANEL_DIR)
    return [arm.replace("{out}", out_text).replace("{panel}", panel_text) for arm in (arms or regime.arms)]


def check_losses(regimes: list[Regime], out: Path, arms_of: dict[str, list[str]]) -> None:
    """Before any work: every regime's losses load (a candidate's weights missing from ``OUT/candidates``
    would otherwise stop the call hours in, at its regime)."""
    from edloss.lab.grid import _check_arms, parse_arms

    for regime in regimes:
        try:
            _check_arms(parse_arms(arms_of[regime.name]), list(regime.seeds))
        except FileNotFoundError as err:
            raise FileNotFoundError(f"{regime.name}: {err}; a candidate's weights live in the matrix folder: copy "
                                    f"the repository's docs/figures/regimes/candidates to {out / 'candidates'}, or "
                                    "pass --arms without it") from None


def check_carried(regimes: list[Regime], out: Path, grid: list[float] | None, arms_of: dict[str, list[str]],
                  configs: dict[str, TrainConfig], wd_grid: list[float] | None = None) -> None:
    """Before any work: a regime that takes its picks from another needs that regime's tuned grid
    in ``out`` with a pick for each of its arms, or that regime earlier in this call; ``--lr-grid``
    does not apply to it. (A source run earlier in the call is checked when its turn comes.)"""
    from edloss.lab.grid import parse_arms

    for i, regime in enumerate(regimes):
        if not regime.picks_from:
            continue
        if grid is not None or wd_grid is not None:
            flag = "--lr-grid" if grid is not None else "--wd-grid"
            raise ValueError(f"{regime.name} runs each arm at its {regime.picks_from} pick; {flag} does not apply "
                             "to it (leave it out, or run the regime alone)")
        if any(r.name == regime.picks_from for r in regimes[:i]):
            continue
        if not (out / regime.picks_from / "summary.json").is_file():
            raise ValueError(f"{regime.name} takes each arm's learning rate from {regime.picks_from}, which has no "
                             f"records under {out}: run `edloss regimes {regime.picks_from}` there first")
        regime_arms = parse_arms(arms_of[regime.name])
        carried(out / regime.picks_from, out / regime.name, regime_arms, configs[regime.name].lr,
                configs[regime.name].weight_decay).require_picks(
            regime_arms, [regime.model], f"{regime.name} takes its rates from there; finish "
                                         f"`edloss regimes {regime.picks_from}` first")


def _say(progress: bool, message: str) -> None:
    if progress:
        print(message, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- the matrix


def is_baseline(spec: str) -> bool:
    """A hand-designed loss (CE, label smoothing, Poly-1, cosine, ...), not an EDL arm: the gap the
    issue's goal is about is an EDL loss against the best of these, not against another EDL candidate."""
    from edloss.lab.losses import parse_loss_spec

    try:
        return parse_loss_spec(spec)[0] != "edl"
    except ValueError:
        return spec.split(":", 1)[0].strip().lower() != "edl"


def collect_matrix(out: Path) -> dict[str, Any]:
    """Every regime folder under ``out`` with a summary: per arm its pick, seeds, test accuracy,
    calibration before and after temperature scaling, and its gap to the best baseline (the best
    hand-designed arm other than itself)."""
    cells = []
    for regime in REGIMES.values():
        path = out / regime.name / "summary.json"
        if not path.is_file():
            continue
        summary = json.loads(path.read_text())
        rows = [r for r in summary["rows"] if r.get("n")]
        grid = (summary.get("tuning") or {}).get("grid", [])
        for row in rows:
            others = [o for o in rows if o["label"] != row["label"] and o["test_mean"] is not None and is_baseline(o["spec"])]
            best = max(others, key=lambda o: o["test_mean"], default=None)
            cells.append({"regime": regime.name, "role": regime.role, "arm": row["label"], "spec": row["spec"],
                          "n": row["n"], "lr_pick": row.get("lr_pick"), "lr": row.get("lr"),
                          "lr_at_edge": row.get("lr_pick") is not None and at_edge(row["lr_pick"], grid),
                          **({"wd_pick": row["wd_pick"], "weight_decay": row.get("weight_decay"),
                              "wd_at_edge": at_edge(row["wd_pick"], (summary.get("tuning") or {}).get("wd_grid") or [])}
                             if row.get("wd_pick") is not None else {}),
                          "picks_from": regime.picks_from,  # then pick and spread are that regime's
                          "spread": row.get("spread"), "test_mean": row["test_mean"], "test_std": row["test_std"],
                          "val_mean": row["val_mean"], "ece_mean": row.get("ece_mean"),
                          "ece_ts_mean": row.get("ece_ts_mean"), "nll_ts_mean": row.get("nll_ts_mean"),
                          "best_baseline": None if best is None else best["label"],
                          "gap_to_best_baseline": None if best is None else row["test_mean"] - best["test_mean"],
                          **_paired_vs(summary, row["label"], None if best is None else best["label"])})
    return {"regimes": {r.name: {**asdict(r), "seeds": list(r.seeds), "tune_seeds": list(r.tune_seeds)}
                        for r in REGIMES.values() if (out / r.name / "summary.json").is_file()},
            "cells": cells}


def _paired_vs(summary: dict[str, Any], label: str, other: str | None) -> dict[str, Any]:
    """Paired (by seed) difference to ``other``: Wilcoxon signed-rank p and the paired t-test's p.
    Both, because with 5 seeds the two-sided Wilcoxon cannot go below p = 0.0625 however large the
    lead; the t-test can, under its normality assumption."""
    if other is None:
        return {}
    from edloss.lab.stats import wilcoxon_paired

    def by_seed(name: str) -> dict[int, float]:
        return {r["seed"]: 100 * r["test_acc"] for r in summary["runs"]
                if r["label"] == name and r["status"] == "finished" and r.get("test_acc") is not None}

    mine, theirs = by_seed(label), by_seed(other)
    seeds = sorted(set(mine) & set(theirs))
    diffs = [mine[s] - theirs[s] for s in seeds]
    if not diffs:
        return {}
    p = wilcoxon_paired([(mine[s], theirs[s]) for s in seeds])["p"] if len(diffs) > 1 else None
    t_p = None
    if len(diffs) > 1 and statistics.pstdev(diffs) > 0:
        from scipy.stats import ttest_rel

        t_p = float(ttest_rel([mine[s] for s in seeds], [theirs[s] for s in seeds]).pvalue)
    return {"paired_diff": statistics.fmean(diffs), "paired_n": len(diffs), "paired_wins": sum(d > 0 for d in diffs),
            "paired_p": p, "paired_t_p": t_p}


def render_matrix(matrix: dict[str, Any]) -> str:
    lines = ["# The regime matrix", "",
             "Every arm picked its peak learning rate on validation from the same grid of multipliers "
             "(`edloss regimes`; each regime's `summary.md` has the curves; `c10-full` runs each arm at its "
             "`c10-budget` pick). Test accuracy in percent, mean ± std "
             "over the seeds at the pick; gap: to the best *baseline* (the best hand-designed arm other than itself, "
             "paired by seed, Wilcoxon p); ECE before and "
             "after temperature scaling fitted on validation. Calibration regimes choose what ships; held-out "
             "regimes only report.", ""] + render_overview(matrix)
    for name, regime in matrix["regimes"].items():
        lines += [f"## {name} ({regime['role']})", "", f"{regime['about']}; model {regime['model']}.", "",
                  "| arm | seeds | lr pick | spread (val) | test acc | gap to best baseline | paired | ECE (%) "
                  "| ECE after TS (%) |", "|---|---|---|---|---|---|---|---|---|"]
        for c in (c for c in matrix["cells"] if c["regime"] == name):
            pick = "—" if c["lr_pick"] is None else f"{c['lr_pick']:g}× ({c['lr']:.3g})" + (" edge" if c.get("lr_at_edge") else "")
            if c.get("wd_pick") is not None:
                pick += f", wd {c['wd_pick']:g}× ({c['weight_decay']:.3g})" + (" edge" if c.get("wd_at_edge") else "")
            if c.get("picks_from") and c["lr_pick"] is not None:
                pick += f", {c['picks_from']}'s"
            gap = "—" if c["gap_to_best_baseline"] is None else f"{c['gap_to_best_baseline']:+.2f} vs {c['best_baseline']}"
            paired = "—" if c.get("paired_n") is None else (
                f"{c['paired_wins']}/{c['paired_n']} better"
                + ("" if c.get("paired_p") is None else f", Wilcoxon p = {c['paired_p']:.3g}")
                + ("" if c.get("paired_t_p") is None else f", t-test p = {c['paired_t_p']:.3g}"))
            lines.append(f"| {c['arm']} | {c['n']} | {pick} | {_num(c['spread'])} | {_num(c['test_mean'])} ± "
                         f"{_num(c['test_std'])} | {gap} | {paired} | {_num(c['ece_mean'])} | {_num(c['ece_ts_mean'])} |")
        lines.append("")
    return "\n".join(lines)


def render_overview(matrix: dict[str, Any]) -> list[str]:
    """One row a regime, one column an arm: test accuracy at the arm's pick (its multiplier and seeds
    beside it), the regime's best in bold: the table the README starts its results with."""
    cells = [c for c in matrix["cells"] if c["test_mean"] is not None]
    if not cells:
        return []
    arms = list(dict.fromkeys(c["arm"] for c in cells))
    lines = ["## Overview", "", "Test accuracy % at each arm's own pick (multiplier of the recipe's rate, seeds finished); "
             "bold: the regime's best; — : not run or not finished.", "",
             "| regime | role | " + " | ".join(arms) + " |", "|---|---|" + "---|" * len(arms)]
    for name, regime in matrix["regimes"].items():
        row = {c["arm"]: c for c in cells if c["regime"] == name}
        if not row:
            continue
        best = max(c["test_mean"] for c in row.values())
        texts = []
        for arm in arms:
            c = row.get(arm)
            if c is None:
                texts.append("—")
                continue
            value = f"{c['test_mean']:.2f}"
            texts.append((f"**{value}**" if c["test_mean"] == best else value)
                         + f" ({'?' if c['lr_pick'] is None else format(c['lr_pick'], 'g')}×, {c['n']})")
        lines.append(f"| {name} | {regime['role']} | " + " | ".join(texts) + " |")
    lines += ["", "Calibration at the same cells: test ECE % before → after temperature scaling (one temperature "
              "per run, fitted on validation).", "",
              "| regime | " + " | ".join(arms) + " |", "|---|" + "---|" * len(arms)]
    for name in matrix["regimes"]:
        row = {c["arm"]: c for c in cells if c["regime"] == name}
        if row:
            lines.append(f"| {name} | " + " | ".join(
                "—" if arm not in row else f"{_num(row[arm]['ece_mean'])} → {_num(row[arm]['ece_ts_mean'])}"
                for arm in arms) + " |")
    return lines + [""]


def _num(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"


def plot_matrix(matrix: dict[str, Any], path: Path) -> Path | None:
    """Test accuracy of every arm in every regime, as the gap to CE (points): one glance at where a
    loss helps and where it hurts. None before any regime has a CE row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n in matrix["regimes"] if any(c["regime"] == n and c["arm"] == "ce" for c in matrix["cells"])]
    if not names:
        return None
    arms = list(dict.fromkeys(c["arm"] for c in matrix["cells"] if c["arm"] != "ce"))
    fig, ax = plt.subplots(figsize=(1.6 * len(names) * max(1, len(arms)) / 3 + 3, 4.2))
    width = 0.8 / max(1, len(arms))
    for i, arm in enumerate(arms):
        gaps = []
        for name in names:
            cell = {c["arm"]: c for c in matrix["cells"] if c["regime"] == name}
            a, ce = cell.get(arm), cell.get("ce")
            gaps.append(math.nan if a is None or ce is None else a["test_mean"] - ce["test_mean"])
        ax.bar([x + i * width for x in range(len(names))], gaps, width, label=arm)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks([x + width * (len(arms) - 1) / 2 for x in range(len(names))], names)
    ax.set(ylabel="test accuracy − CE's (points), each at its own lr", title="the regime matrix (tuned)")
    ax.legend(fontsize="small")
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    save_figure(fig, path, dpi=120)
    return path


def write_matrix(out: Path) -> dict[str, Any]:
    matrix = collect_matrix(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "matrix.json", json.dumps(matrix, indent=2) + "\n")
    atomic_write_text(out / "matrix.md", render_matrix(matrix))
    plot_matrix(matrix, out / "matrix.png")
    return matrix


# ----------------------------------------------------------------------------- command line


def _cli(args: argparse.Namespace) -> int:
    from edloss.lab.recipe import apply_threads
    from edloss.lab.tuning import parse_lr_grid, parse_wd_grid

    if args.list:
        for r in REGIMES.values():
            rates = (f"each arm at its {r.picks_from} pick" if r.picks_from
                     else f"lr grid {', '.join(f'{m:g}' for m in r.grid)}x"
                     + (f", wd grid {', '.join(f'{w:g}' for w in r.wd_grid)}x" if r.wd_grid else ""))
            print(f"{r.name:16s} {r.role:12s} {r.about} ({rates})\n{'':29s} arms: {' '.join(r.arms)}")
        return 0
    regimes = [override(r, args.per_class, args.steps) for r in resolve(args.regimes or ["calibration"])]
    if args.no_compile:
        regimes = [replace(r, compile=False) for r in regimes]
    if args.no_cpu_amp:
        regimes = [replace(r, cpu_amp=False) for r in regimes]
    grid = None if args.lr_grid is None else parse_lr_grid(args.lr_grid)
    wd_grid = None if args.wd_grid is None else parse_wd_grid(args.wd_grid)
    out = Path(args.out)
    if args.matrix_only:
        print(render_matrix(write_matrix(out)))
        return 0
    apply_threads(args)
    base = TrainConfig(data_dir=args.data_dir, device=args.device)
    run(regimes, out, base, args.arms, grid, progress=not args.quiet, threads=args.threads, backfill=args.backfill,
        wd_grid=wd_grid)
    if not args.backfill:
        print((out / "matrix.md").read_text())
    return 0


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    """Register ``edloss regimes``."""
    p = subparsers.add_parser(
        "regimes", help="the tuned regime matrix: every loss at its own best learning rate in each regime",
        description=__doc__.split("\n\n")[1])
    p.add_argument("regimes", nargs="*", metavar="REGIME",
                   help=f"any of {', '.join(REGIMES)}, or all / calibration / held-out (default: calibration)")
    p.add_argument("--arms", nargs="+", default=None, metavar="[LABEL=]SPEC",
                   help=f"loss arms (default: each regime's own, see --list: {' '.join(DEFAULT_ARMS)} and the "
                        "record's candidates, or the noise and long-tail regimes' field baselines; {out} in a spec "
                        "is the --out folder, {panel} the lab's panel of losses that no longer ship)")
    p.add_argument("--lr-grid", default=None, metavar="M1,M2,...",
                   help="multipliers of the recipe's peak lr, the same for every arm (default: each regime's own, "
                        f"{','.join(f'{m:g}' for m in DEFAULT_GRID)} unless widened)")
    p.add_argument("--wd-grid", default=None, metavar="M1,M2,...",
                   help="multipliers of the recipe's weight decay, tuned with the rate for every arm (e.g. 1,2; "
                        "default: the regime's own, none in today's matrix)")
    p.add_argument("--no-compile", action="store_true",
                   help="train eagerly even where a regime compiles its model (torch.compile needs a C++ compiler on CPU)")
    p.add_argument("--no-cpu-amp", action="store_true",
                   help="float32 on the CPU even where a regime trains under bf16 autocast (on a CPU without bf16 "
                        "instructions bf16 can be slower; the numbers differ, so not beside the records)")
    p.add_argument("--per-class", type=int, default=None, help="override the regimes' images per class")
    p.add_argument("--steps", type=int, default=None, help="override the regimes' optimiser step budget")
    p.add_argument("--out", default="runs/regimes", help="matrix folder (default %(default)s)")
    p.add_argument("--data-dir", default=None, help="data folder (default: $EDLOSS_DATA, then ./data)")
    p.add_argument("--device", default="auto", help="cpu, cuda, ... (default %(default)s)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (one per job when two share the cores)")
    p.add_argument("--list", action="store_true", help="list the regimes and their roles")
    p.add_argument("--backfill", action="store_true",
                   help="help the process already running each regime: train its runs from the end, move each into "
                        "place if that process has not started it, stop where the two meet (a second core's job)")
    p.add_argument("--matrix-only", action="store_true", help="only rewrite matrix.md/json/png from the runs present")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=_cli)
