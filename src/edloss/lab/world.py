"""``edloss world-check``: does a synthetic world predict real training? The gate before evolving in it.

A world (``edloss.students.WorldConfig``) is a hypothesis: "a loss whose students do well here
trains better ResNets on CIFAR". This module tests it against what this project has measured.
A **panel** of losses with recorded CIFAR results (``PANEL``: each arm's mean last-epoch test
accuracy over its training seeds, copied from the run records under ``docs/figures/``, with the
folder it comes from) is scored in the world, and the Spearman correlation between world score
and CIFAR accuracy is reported per regime, beside the same correlation for the ranking
objective's held-out fitness (at the regime's K, the regime's severity), which is what pretraining
optimised until now. That is the first gate. The second (``world_pairs``) asks the world for the
sign of near differences, a loss against its start or its own gain, counted over pairs whose
recorded CIFAR difference exceeds seed noise; the report puts both gates side by side per regime.
Two regimes are at 100 classes (CIFAR-100 records; the regime sets world.classes to (100, 100)):
give them with --regimes, they are not in the default list. Learning-rate-invariant scoring
(world.lr_grid, world.normalize_gradient; --lr-grid, --normalize-gradient) is described in
``edloss.world_lr``.

Knobs are chosen on half of each regime's arms and judged on the other half: arms are sorted by
CIFAR accuracy and alternate between the halves (ranks 0, 2, 4, ... **calibration**; 1, 3, 5, ...
**held-out**), so both halves span the range. Report the held-out correlation.

EDL losses that no longer ship come with the lab (``edloss/lab/panel/``, written by
``benchmarks/panel_losses.py`` from git history or regenerated with the code of the commit the
CIFAR arm ran with), each with its source in its provenance.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from edloss.configs import from_dict, load_file, to_dict, versions
from edloss.files import RunLock, append_jsonl, atomic_write_json, check_output_path, read_jsonl
from edloss.lab.world_pairs import PAIRS, pair_gate, pair_specs
from edloss.students import WorldConfig, check_memory, combine_metrics, reference_results, sample_tasks, score_module, variants
from edloss.world_lr import parse_lr_grid

# each regime's knobs, set in the world before its panel is scored: every knob its CIFAR records
# fix (balanced classes for the clean and noise panels, clean labels for the long-tail one), so a
# world file's own noise or imbalance never leaks into a regime labelled otherwise
REGIMES: dict[str, dict[str, Any]] = {
    "clean": {"label_noise": 0.0, "imbalance": 1.0},
    "noise-0.4": {"label_noise": 0.4, "imbalance": 1.0},
    "noise-0.6": {"label_noise": 0.6, "imbalance": 1.0},
    "longtail-100": {"label_noise": 0.0, "imbalance": 100.0},  # exponential profile, balanced test: balanced accuracy
    "clean-k100": {"label_noise": 0.0, "imbalance": 1.0, "classes": (100, 100)},
    "longtail-100-k100": {"label_noise": 0.0, "imbalance": 100.0, "classes": (100, 100)},
}
DEFAULT_REGIMES = ["clean", "noise-0.4", "noise-0.6", "longtail-100"]  # the K = 100 ones are asked for by name
PANEL_SEED = 20261205  # the tasks the panel is scored on: the same for every loss and every world


@dataclass(frozen=True)
class Arm:
    """One loss with its recorded CIFAR-10 result (the regime's recipe: ResNet-20; ResNet-32 for the long tail)."""

    label: str
    spec: str  # a registry spec; "{panel}" stands for the lab's panel folder (PANEL_DIR)
    cifar: float  # mean last-epoch test accuracy (%)
    std: float
    seeds: int
    source: str  # the run records under docs/figures/


CLEAN = "cifar10-resnet20 (8k images, 8 epochs)"
V4GRID = "cifar10-resnet20-v4-grid (same recipe, 10 seeds)"
N04 = "noise-cifar10-eta0.4 (3k images, 15 epochs, no augmentation)"
N06 = "noise-cifar10-eta0.6 (same recipe)"
LT100 = "longtail/cifar10-rho100 (CIFAR-10-LT rho 100, ResNet-32, 5 epochs, balanced test accuracy)"
EVOLVED = "students/cifar (the regime's recipe, seeds 0-2): losses the search found in a world"
C100 = "cifar100-resnet20-grid (CIFAR-100, ResNet-20, 8k images, 8 epochs, seeds 0-2)"
LT100_K100 = "longtail/cifar100-rho100 (CIFAR-100-LT rho 100, ResNet-32, 5 epochs, balanced test accuracy)"
PANEL: dict[str, list[Arm]] = {
    "clean": [
        Arm("ce", "ce", 59.62, 1.67, 10, V4GRID),
        Arm("poly1", "poly1", 60.63, 1.27, 10, V4GRID),
        Arm("edl-v4", "edl", 61.31, 0.83, 10, V4GRID),
        Arm("label_smoothing", "label_smoothing:0.1", 58.95, 1.66, 3, CLEAN),
        Arm("focal", "focal:2", 54.21, 1.80, 3, CLEAN),
        Arm("edl-v3", "edl:name=v3", 60.62, 1.90, 5, CLEAN),
        Arm("edl-v3-gaussian", "edl:{panel}/v3-gaussian", 58.12, 1.76, 3, CLEAN),
        Arm("edl-v2", "edl:{panel}/v2-chaotic", 56.88, 2.06, 3, CLEAN),
        Arm("edl-v0", "edl:{panel}/v0-chaotic", 52.06, 4.91, 3, CLEAN),
        # the v2 / v0 Gaussian arms (42.95, 54.95) are left out: their commits do not remake the files they trained with
        Arm("edl-students-clean", "edl:{panel}/students-clean", 60.11, 0.14, 3, EVOLVED),
    ],
    "noise-0.4": [
        Arm("ce", "ce", 31.86, 1.50, 3, N04),
        Arm("poly1", "poly1", 33.49, 1.37, 3, N04),
        Arm("gce", "gce", 41.77, 1.12, 3, N04),
        Arm("sce", "sce", 39.91, 1.37, 3, N04),
        Arm("nce_rce", "nce_rce", 17.23, 0.46, 3, N04),
        Arm("mae", "mae", 23.36, 5.12, 3, N04),
        Arm("forward", "forward:0.4", 34.03, 0.81, 3, N04),
        Arm("edl-v4", "edl", 29.62, 0.36, 3, N04),
        Arm("edl-noise-kld", "edl:{panel}/noise-kld-0.4", 34.05, 2.36, 3, N04),
        Arm("edl-noise-tv-k10", "edl:noise_rate=0.4,num_classes=10", 39.92, 1.73, 3, N04),
        Arm("edl-noise-tv", "edl:noise_rate=0.4", 34.04, 2.36, 2, N04),
        Arm("edl-students-noise", "edl:{panel}/students-noise-0.4", 34.82, 1.11, 3, EVOLVED),
        Arm("edl-students-noise-long", "edl:{panel}/students-noise-0.4-long", 37.53, 3.30, 3, EVOLVED),
    ],
    "noise-0.6": [
        Arm("ce", "ce", 23.00, 3.53, 3, N06),
        Arm("poly1", "poly1", 25.19, 3.94, 3, N06),
        Arm("gce", "gce", 29.36, 1.33, 3, N06),
        Arm("sce", "sce", 24.61, 1.26, 3, N06),
        Arm("nce_rce", "nce_rce", 10.00, 0.00, 3, N06),
        Arm("mae", "mae", 18.00, 2.21, 3, N06),
        Arm("forward", "forward:0.6", 25.89, 0.55, 3, N06),
        Arm("edl-v4", "edl", 23.03, 3.97, 3, N06),
        Arm("edl-noise-tv-k10", "edl:noise_rate=0.6,num_classes=10", 28.65, 0.64, 3, N06),
        Arm("edl-students-noise-wide", "edl:{panel}/students-noise-0.6-wide", 28.18, 2.27, 3, EVOLVED),
        Arm("edl-students-noise-images-cal", "edl:{panel}/students-noise-0.6-images-calibrated", 27.44, 1.77, 3, EVOLVED),
    ],
    # The losses that read the class counts are told the world's (per task, as the trainer tells them
    # CIFAR's). LDAM-DRW is left out: its CIFAR arm trains a cosine head of scale 30 and re-weights
    # by epoch, neither of which a students world has.
    "longtail-100": [  # means of seeds 0-2 (ResNet-32, 5 epochs, balanced test)
        Arm("ce", "ce", 26.66, 0.42, 3, LT100),
        Arm("poly1", "poly1", 26.30, 0.98, 3, LT100),
        Arm("edl-v4", "edl", 27.12, 0.61, 3, LT100),
        Arm("edl-prior", "edl:prior_aware=true", 33.16, 1.20, 3, LT100),
        Arm("logit_adjusted", "logit_adjusted", 32.24, 3.02, 3, LT100),
        Arm("balanced_softmax", "balanced_softmax", 32.48, 3.19, 3, LT100),
        Arm("cb_ce", "cb_ce", 39.14, 0.33, 3, LT100),
        Arm("edl-students-lt", "edl:checkpoint={panel}/students-longtail-100,prior_aware=true", 35.77, 2.10, 3, LT100),
        Arm("edl-students-lt-hard", "edl:checkpoint={panel}/students-longtail-100-hard,prior_aware=true", 35.45, 1.03, 3, LT100),
    ],
    # CIFAR-100: the four arms the records hold (halves of two: only the all-arms Spearman has a value)
    "clean-k100": [
        Arm("ce", "ce", 18.56, 0.52, 3, C100),
        Arm("poly1", "poly1", 18.91, 1.09, 3, C100),
        Arm("label_smoothing", "label_smoothing:0.1", 17.88, 1.10, 3, C100),
        Arm("edl-v4", "edl", 18.49, 1.08, 3, C100),
    ],
    "longtail-100-k100": [  # LDAM-DRW left out as at K = 10
        Arm("ce", "ce", 11.18, 1.01, 3, LT100_K100),
        Arm("poly1", "poly1", 10.88, 0.96, 3, LT100_K100),
        Arm("edl-v4", "edl", 10.90, 0.57, 3, LT100_K100),
        Arm("edl-prior", "edl:prior_aware=true", 13.52, 0.54, 3, LT100_K100),
        Arm("logit_adjusted", "logit_adjusted", 13.30, 0.91, 3, LT100_K100),
        Arm("balanced_softmax", "balanced_softmax", 12.91, 0.87, 3, LT100_K100),
        Arm("cb_ce", "cb_ce", 6.48, 0.39, 3, LT100_K100),
        Arm("edl-students-lt", "edl:checkpoint={panel}/students-longtail-100,prior_aware=true", 12.12, 0.59, 3, LT100_K100),
        Arm("edl-students-lt-hard", "edl:checkpoint={panel}/students-longtail-100-hard,prior_aware=true", 12.32, 0.18, 3, LT100_K100),
    ],
}
PANEL_DIR = Path(__file__).with_name("panel")  # losses that no longer ship (benchmarks/panel_losses.py wrote them)


def halves(arms: list[Arm]) -> tuple[list[Arm], list[Arm]]:
    """(calibration, held-out): arms sorted by CIFAR accuracy, alternating, so both span the range."""
    ordered = sorted(arms, key=lambda a: a.cifar)
    return ordered[0::2], ordered[1::2]


def build_panel_loss(arm: Arm, panel_dir: Path = PANEL_DIR) -> torch.nn.Module:
    """The arm's loss module (``world_loss`` of its spec)."""
    return world_loss(arm.spec, panel_dir)


def world_loss(spec: str, panel_dir: Path = PANEL_DIR) -> torch.nn.Module:
    """A registry spec's loss module for scoring in a world ("{panel}" is ``panel_dir``); EDL losses
    without input checks, so a diverging student is scored, not raised."""
    from edloss.lab.losses import build_loss, parse_loss_spec

    name, options = parse_loss_spec(spec.replace("{panel}", str(panel_dir)))
    if name == "edl":
        options["check_inputs"] = False
    return build_loss(name, **options)


def available(arm: Arm, panel_dir: Path = PANEL_DIR) -> bool:
    """Whether the arm's loss is at hand (a panel file may be missing from a partial checkout)."""
    from edloss.lab.losses import parse_loss_spec

    if "{panel}" not in arm.spec:
        return True
    _, options = parse_loss_spec(arm.spec.replace("{panel}", str(panel_dir)))
    return (Path(options["checkpoint"]) / "loss.json").is_file()


def told_counts(module: torch.nn.Module, tasks: Any) -> torch.nn.Module:
    """A loss that reads the class counts (logit adjustment, balanced softmax, the prior-aware EDL, ...)
    told the training counts of ``tasks`` (None: ten equal classes, what the ranking objective sees),
    as ``edloss train`` tells it CIFAR's; other losses unchanged."""
    if hasattr(module, "set_class_counts"):
        counts = [1] * (tasks or 10) if isinstance(tasks, (int, type(None))) else torch.bincount(tasks.y_clean[0], minlength=tasks.num_classes).tolist()
        module.set_class_counts(counts)
    return module


def ranking_fitness(module: torch.nn.Module, label_noise: float, k: int = 10) -> float:
    """The ranking objective's held-out fitness of a loss module at K = ``k`` (severity: the default
    KL + disagreement when clean, total variation under noise, as `edloss pretrain` picks)."""
    from edloss.objectives.ranking import ObjectiveConfig, evaluate, heldout_batches

    cfg = ObjectiveConfig(classes=(k, k), label_noise=label_noise, severity="tv" if label_noise > 0 else "kl_disagreement")
    per_row = _per_row_loss(module)

    def penalty(logp: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        labels = labels.expand(*logp.shape[:-1], labels.shape[-1])
        rows = logp.unsqueeze(-2).expand(*labels.shape, logp.shape[-1])
        k = logp.shape[-1]
        return per_row(rows.reshape(-1, k), labels.reshape(-1)).reshape(labels.shape)

    return float(evaluate(penalty, 1, heldout_batches(cfg), cfg)["fitness"][0])


def _per_row_loss(module: torch.nn.Module) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Per-sample losses of a mean-reduced module: EDL unreduced directly, the others by vmap over rows."""
    from edloss.loss import EDLLoss

    if isinstance(module, EDLLoss):
        return EDLLoss(module.net, scale=module.scale, reduction="none", check_inputs=False, fused=False)
    return torch.func.vmap(lambda z, y: module(z[None], y[None]))


def pair_arms(regime: str) -> list[Arm]:
    """The near pairs' losses the panel does not hold, as arms (label "pair:SPEC") to be scored in
    the same draws; their rows carry ``role = "pair"`` and stay out of the panel's correlations."""
    panel = {a.spec for a in PANEL[regime]}
    sides = {s.spec: s for p in PAIRS.get(regime, []) for s in (p.a, p.b)}
    return [Arm(f"pair:{spec}", spec, sides[spec].cifar, sides[spec].std, sides[spec].seeds, sides[spec].source)
            for spec in pair_specs(regime) if spec not in panel]


def score_regime(world: WorldConfig, regime: str, repeats: int, with_ranking: bool, progress: bool,
                 done: dict[str, dict[str, Any]] | None = None, record: Callable[[dict[str, Any]], None] | None = None,
                 arms: list[Arm] | None = None) -> list[dict[str, Any]]:
    """Every arm of the regime scored in the world (the regime's noise rate set in it): mean over
    ``repeats`` draws of ``world.tasks`` tasks, the same draws for every arm (a mixture: over every
    world of ``world.mix``, each drawn as it is alone, and combined as the search combines them). Arms in ``done``
    (rows of an interrupted check of the same world) are kept; each new row goes to ``record``."""
    from edloss.lab.losses import definition_sha256

    cfg = regime_world(world, regime)
    done = done or {}
    draws: list[tuple[Any, Any]] = []
    rows = []
    for arm in PANEL[regime] if arms is None else arms:
        if not available(arm):
            print(f"  {regime:10s} {arm.label:18s} skipped: {arm.spec} is missing (benchmarks/panel_losses.py writes it)", file=sys.stderr)
            continue
        try:
            module = build_panel_loss(arm)
        except FileNotFoundError:  # a near pair's loss outside this panel folder: the pair goes uncounted
            if arms is None:
                raise
            print(f"  {regime:10s} {arm.label:18s} skipped: its loss is missing", file=sys.stderr)
            continue
        definition = definition_sha256(module)
        earlier = done.get(arm.label)
        if reusable(earlier, arm, cfg, definition, with_ranking):
            # the world's score is kept; the CIFAR record is the panel's as it is now (seeds land over time)
            kept = {k: v for k, v in earlier.items() if with_ranking or k != "ranking_fitness"}
            rows.append({**kept, "cifar": arm.cifar, "cifar_std": arm.std, "cifar_seeds": arm.seeds})
            continue
        if not draws:  # the tasks and their CE students in every world of the mixture, made once the first arm needs them
            for name, world in variants(cfg):
                for r in range(repeats):
                    tasks = sample_tasks(world, torch.Generator().manual_seed(PANEL_SEED + r))
                    draws.append((name, world, tasks, reference_results(tasks, world)))
        start = time.perf_counter()
        scores = [score_module(told_counts(module, tasks), tasks, world, ref) for _, world, tasks, ref in draws]
        row = {"regime": regime, "label": arm.label, "spec": arm.spec, "cifar": arm.cifar, "cifar_std": arm.std, "cifar_seeds": arm.seeds,
               **({"role": "pair"} if arms is not None else {}),
               **combined_scores(cfg, draws, scores), "seconds": time.perf_counter() - start,
               "definition_sha256": definition, "regime_world": to_dict(cfg)}
        if with_ranking:
            k = cfg.classes[1]
            row["ranking_fitness"] = ranking_fitness(told_counts(module, k), REGIMES[regime]["label_noise"], k)
        if progress:
            print(f"  {regime:10s} {arm.label:18s} world {100 * row['fitness']:+7.2f}  CIFAR {arm.cifar:6.2f}"
                  + (f"  ranking {row['ranking_fitness']:.4f}" if with_ranking else ""), file=sys.stderr)
        rows.append(row)
        if record is not None:
            record(row)
    return rows


def regime_world(world: WorldConfig, regime: str) -> WorldConfig:
    """The world with the regime's knobs set, validated (a knob the regime makes invalid, such as
    noise 0.6 at K = 2, is named with the regime)."""
    try:
        return replace(world, **REGIMES[regime])
    except ValueError as err:
        raise ValueError(f"regime {regime}: {err}") from None


def reusable(earlier: dict[str, Any] | None, arm: Arm, cfg: WorldConfig, definition: str | None, with_ranking: bool) -> bool:
    """Whether a stored row still scores this arm: the same spec, the same loss behind it (a panel
    file upgraded or edited in place is scored again), the same regime world, and the ranking
    fitness if asked for. Rows written before the definition and world were stored are rescored."""
    return (earlier is not None and earlier.get("spec") == arm.spec and earlier.get("definition_sha256", "?") == definition
            and earlier.get("regime_world") == to_dict(cfg) and ("ranking_fitness" in earlier or not with_ranking))


def combined_scores(cfg: WorldConfig, draws: list[tuple[Any, ...]], scores: list[dict[str, float]]) -> dict[str, float]:
    """Each world's scores averaged over its draws, then combined as the search combines them
    (``students.combine_metrics``: the mean over worlds, or the worst with ``combine = "min"``)."""
    per_world = []
    for name, _ in variants(cfg):
        mine = [s for (n, *_), s in zip(draws, scores) if n == name]
        per_world.append((name, {k: torch.tensor([sum(s[k] for s in mine) / len(mine)], dtype=torch.float64) for k in mine[0]}))
    return {k: float(v[0]) for k, v in combine_metrics(per_world, cfg.combine).items()}


def correlations(rows: list[dict[str, Any]], key: str) -> dict[str, Any]:
    """Spearman of ``key`` against CIFAR accuracy: all arms, calibration half, held-out half."""
    from scipy.stats import spearmanr

    arms = {a.label: a for a in PANEL[rows[0]["regime"]]}
    calibration, heldout = halves(list(arms.values()))  # fixed by the whole panel, whichever arms were scored
    out: dict[str, Any] = {}
    for name, subset in (("all", list(arms)), ("calibration", [a.label for a in calibration]), ("heldout", [a.label for a in heldout])):
        chosen = [r for r in rows if r["label"] in subset and r.get(key) is not None]
        rho, p = spearmanr([r[key] for r in chosen], [r["cifar"] for r in chosen]) if len(chosen) > 2 else (float("nan"), float("nan"))
        out[name] = {"spearman": float(rho), "p": float(p), "n": len(chosen), "arms": [r["label"] for r in chosen]}
    return out


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """World score (and ranking fitness) against CIFAR accuracy, one column per regime."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    regimes = list(dict.fromkeys(r["regime"] for r in rows))
    keys = [k for k in ("fitness", "ranking_fitness") if all(k in r for r in rows)]
    fig, axes = plt.subplots(len(keys), len(regimes), figsize=(4.5 * len(regimes), 3.8 * len(keys)), squeeze=False)
    for j, regime in enumerate(regimes):
        sub = [r for r in rows if r["regime"] == regime and r.get("role") != "pair"]
        _, heldout = halves(PANEL[regime])
        held = {a.label for a in heldout}
        for i, key in enumerate(keys):
            ax = axes[i][j]
            for r in sub:
                x = 100 * r[key] if key == "fitness" else r[key]
                ax.scatter(x, r["cifar"], marker="o" if r["label"] in held else "s", color="C1" if r["label"] in held else "C0")
                ax.annotate(r["label"], (x, r["cifar"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
            rho = correlations(sub, key)
            ax.set_title(f"{regime}: Spearman all {rho['all']['spearman']:.2f}, held-out {rho['heldout']['spearman']:.2f}", fontsize=9)
            ax.set_xlabel("world score (accuracy points vs CE's students)" if key == "fitness" else "ranking objective, held-out fitness (K = 10)")
            ax.set_ylabel("CIFAR-10 test accuracy (%)")
    fig.suptitle("Does the world predict CIFAR? circles: held-out arms, squares: calibration arms", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def world_check(world: WorldConfig, regimes: list[str], out: Path, repeats: int = 2, with_ranking: bool = True,
                progress: bool = True, command: str = "") -> dict[str, Any]:
    """Score the panel of every regime in the world; write ``world_check.json`` and ``world_check.png``."""
    check_world(world, regimes)
    out.mkdir(parents=True, exist_ok=True)
    with RunLock(out, "world-check"):  # two checks appending to one rows.jsonl would duplicate rows
        return _world_check_locked(world, regimes, out, repeats, with_ranking, progress, command)


def check_world(world: WorldConfig, regimes: list[str]) -> None:
    """Everything that can be refused, before the first arm is scored: repeated regimes (each arm
    would count twice in the correlations), ``world.select`` (world-check scores ``world.mix``; a
    selection has no meaning here), each regime's world, and the memory its students need."""
    repeated = sorted({r for r in regimes if regimes.count(r) > 1})
    if repeated:
        raise ValueError(f"--regimes names {', '.join(repeated)} more than once; each regime's arms would be scored and "
                         "correlated twice. Name each regime once")
    unknown = [r for r in regimes if r not in REGIMES]
    if unknown:
        raise ValueError(f"unknown regime(s) {unknown}; valid: {list(REGIMES)}")
    if world.select:
        raise ValueError(f"world.select {list(world.select)} picks the exported loss in pretraining; world-check scores "
                         "world.mix (or the world alone) and would ignore it: remove select from the world file")
    for regime in regimes:
        check_memory(regime_world(world, regime), 1)


def _world_check_locked(world: WorldConfig, regimes: list[str], out: Path, repeats: int, with_ranking: bool,
                        progress: bool, command: str) -> dict[str, Any]:
    start = time.perf_counter()
    partial = out / "rows.jsonl"  # each finished arm, so an interrupted check resumes where it stopped
    key = {"world": to_dict(world), "repeats": repeats, "panel_seed": PANEL_SEED}
    earlier = [r for r in read_jsonl(partial, repair=True) if r.get("key") == key] if partial.exists() else []

    def record(row: dict[str, Any]) -> None:
        append_jsonl(partial, {**row, "key": key})

    rows, pair_rows = [], []  # the panel's arms; the near pairs' losses the panel lacks (gate 2 only)
    for regime in regimes:
        done = {r["label"]: {k: v for k, v in r.items() if k != "key"} for r in earlier if r["regime"] == regime}
        rows += score_regime(world, regime, repeats, with_ranking, progress, done, record)
        pair_rows += score_regime(world, regime, repeats, False, progress, done, record, arms=pair_arms(regime))
    result: dict[str, Any] = {"world": to_dict(world), "repeats": repeats, "panel_seed": PANEL_SEED, "rows": rows, "pair_rows": pair_rows, "regimes": {},
                              "command": command, "versions": versions(), "wall_seconds": time.perf_counter() - start,
                              "halves": "arms sorted by CIFAR accuracy alternate: ranks 0, 2, 4, ... calibration; 1, 3, 5, ... held-out"}
    for regime in regimes:
        sub = [r for r in rows if r["regime"] == regime]
        result["regimes"][regime] = {"world": correlations(sub, "fitness")}
        scored = {r["spec"]: r["fitness"] for r in sub + [r for r in pair_rows if r["regime"] == regime]}
        result.setdefault("pairs", {})[regime] = pair_gate(regime, scored)
        if with_ranking:
            result["regimes"][regime]["ranking"] = correlations(sub, "ranking_fitness")
    try:  # the figure first: a failure never leaves a new world_check.json beside an old figure
        plot(rows, out / "world_check.png")
    except ModuleNotFoundError:
        (out / "world_check.png").unlink(missing_ok=True)
    atomic_write_json(out / "world_check.json", result)
    return result


def format_result(result: dict[str, Any]) -> str:
    lines = ["| regime | score | Spearman, all arms | calibration half | held-out half |", "|---|---|---|---|---|"]
    for regime, by in result["regimes"].items():
        for name, c in by.items():
            cells = [f"{c[h]['spearman']:+.2f} (n = {c[h]['n']}, p = {c[h]['p']:.3f})" for h in ("all", "calibration", "heldout")]
            lines.append(f"| {regime} | {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines + ["", format_gates(result)])


def format_gates(result: dict[str, Any]) -> str:
    """Both gates side by side per regime: held-out Spearman (gate 1) and near-pair sign agreement
    (gate 2), with how many pairs are recorded and how many count (CIFAR difference above seed noise),
    and the firm pairs (above two standard errors) beside."""
    lines = ["| regime | gate 1: held-out Spearman | gate 2: near pairs right | pairs counted / recorded "
             "| firm pairs right (> 2 SE) | CIFAR numbers |", "|---|---|---|---|---|---|"]
    for regime, by in result["regimes"].items():
        held = by["world"]["heldout"]
        gate = result.get("pairs", {}).get(regime, {"recorded": 0, "counted": 0, "agreement": None, "right": 0, "tuned": None})
        share = "—" if gate["agreement"] is None else f"{100 * gate['agreement']:.0f}% ({gate['right']} of {gate['counted']})"
        firm = "—" if not gate.get("firm_counted") else f"{gate['firm_right']} of {gate['firm_counted']}"
        tuned = {None: "—", True: "tuned", False: "one shared lr (untuned)"}[gate["tuned"]]
        lines.append(f"| {regime} | {held['spearman']:+.2f} (n = {held['n']}) | {share} | {gate['counted']} / {gate['recorded']} "
                     f"| {firm} | {tuned} |")
    return "\n".join(lines)


# ---------------------------------------------------------------------- CLI
def add_cli(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("world-check", help="does a synthetic students world predict CIFAR? Spearman against recorded results",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--world", metavar="FILE", help="JSON or TOML with a [world] section (default: the built-in world)")
    p.add_argument("--family", choices=("gaussian", "images"), help="task family (overrides the file)")
    p.add_argument("--regimes", nargs="+", choices=list(REGIMES), default=DEFAULT_REGIMES,
                   help=f"default: {' '.join(DEFAULT_REGIMES)}; clean-k100 and longtail-100-k100 score CIFAR-100 arms at K = 100")
    p.add_argument("--lr-grid", metavar="M,M,...", help="world.lr_grid: multipliers of world.lr (e.g. 0.5,1,2); every loss, CE's "
                   "reference too, trains at each and is scored on the test points at the one of best validation accuracy")
    p.add_argument("--normalize-gradient", action="store_true", help="world.normalize_gradient: each student's logit gradient "
                   "rescaled per minibatch to the Frobenius norm of CE's at the same logits and labels")
    p.add_argument("--repeats", type=int, default=2, help="draws of world.tasks tasks per regime (default 2)")
    p.add_argument("--no-ranking", action="store_true", help="skip the ranking objective's correlation")
    p.add_argument("--out", default="runs/world-check")
    p.add_argument("--threads", type=int)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_main)


# top-level keys a world file may hold beside [world]: a pretraining config's, so one file serves both
PRETRAIN_SECTIONS = ("lossnet", "objective", "es", "heldout_every", "checkpoint_every", "heldout_seed", "heldout_evals_per_block", "start")


def world_from_args(args: argparse.Namespace) -> WorldConfig:
    data = world_table(Path(args.world)) if args.world else {}
    if args.family:
        data["family"] = args.family
    if getattr(args, "lr_grid", None) is not None:
        data["lr_grid"] = list(parse_lr_grid(args.lr_grid, "--lr-grid"))
    if getattr(args, "normalize_gradient", False):
        data["normalize_gradient"] = True
    return from_dict(WorldConfig, data, "world")


def world_table(path: Path) -> dict[str, Any]:
    """The ``[world]`` table of a world file; a file without one (or with a misspelled table) is
    refused, since scoring the built-in world instead would answer another question."""
    data = load_file(path, sections=("world",))
    unknown = sorted(set(data) - {"world", *PRETRAIN_SECTIONS})
    if unknown:
        raise ValueError(f"{path}: unknown top-level key(s) {unknown}; a world file holds a [world] table "
                         "(and may hold a pretraining config's sections)")
    if "world" not in data:
        raise ValueError(f"{path} has no [world] table, so there is no world to check; put the knobs under [world] "
                         "(or leave --world out for the built-in world)")
    return dict(data["world"]) if isinstance(data["world"], dict) else data["world"]


def _main(args: argparse.Namespace) -> int:
    out = check_output_path(args.out)
    if args.repeats < 1 or args.repeats > 100:
        raise ValueError(f"--repeats must be in [1, 100], got {args.repeats}")
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    world = world_from_args(args)
    check_world(world, args.regimes)
    command = "edloss " + shlex.join(sys.argv[1:])
    result = world_check(world, args.regimes, out, args.repeats, not args.no_ranking, not args.quiet, command)
    print(format_result(result))
    print(f"wrote {out / 'world_check.json'} and world_check.png ({result['wall_seconds']:.0f} s)")
    return 0
