"""Learning-rate-invariant fitness in the students world: a loss is scored on its *shape*, not on
the step size it happens to give.

Every student trains at one learning rate, so a loss that pushes harder than cross-entropy is, in
part, a larger step: an under-trained world rewards that, and a user who tunes CE's learning rate
gets it for free. Two world options (``edloss.students.WorldConfig``) take the size out; both are
off by default, and then the world is what it was, bit for bit.

* ``lr_grid`` = multipliers of ``world.lr``, e.g. (0.5, 1, 2). Every loss (each candidate of the
  population and the CE reference alike) trains its students at every multiplier, on the same
  tasks, from the same initial weights, in the same minibatch order (common random numbers): the
  multipliers are one more factor of the batch of students, ``groups x multipliers x tasks``.
  **Selection**: each loss keeps the multiplier of best mean accuracy over its tasks on a
  **validation set** (per task, ``test_points_per_class`` fresh points of each class from the
  task's own distribution, with clean labels and balanced, as the CIFAR lab's validation slice is;
  drawn after everything else, so the training and test data are the plain world's). Ties go to
  the multiplier nearest 1, then the smaller (``edloss compare --lr-grid``'s rule). **Score**: the
  students of that multiplier on the task's **test** points, which play no part in the choice.
  The fitness is then (this loss at its best rate) - (CE at its own best rate).
* ``normalize_gradient``: at every step each student's gradient with respect to its minibatch's
  logits, G (B x K), is rescaled to the Frobenius norm of CE's gradient at the same logits and
  labels, ||softmax(z) - onehot(y)||_F / B (the labels the student trains on, so noisy ones under
  label noise), before it flows back into the network: the loss chooses the direction of the step,
  CE's magnitude sets its length, per student and per minibatch. CE's reference students train
  unchanged (their ratio is 1).

This module holds the options' checks and the arithmetic (the rates per student, the rescaled
gradient, the choice by validation); ``edloss.students`` calls it and never the other way round.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch

LR_MAX = 10.0  # world.lr's own upper bound: no multiplier may take the rate past it


def parse_lr_grid(values: str | Iterable[Any], where: str = "world.lr_grid", rate: str = "world.lr") -> tuple[float, ...]:
    """``"0.5,1,2"`` or a list -> the sorted multipliers of ``rate``, or a one-line ValueError before
    any work: a grid needs at least two distinct finite numbers > 0 (one value is no choice: change
    ``rate`` instead; an empty grid is no grid). The lab's ``edloss compare --lr-grid`` parses with it too."""
    if isinstance(values, str):
        parts = [p.strip() for p in values.split(",")] if values.strip() else []
    else:
        parts = list(values)
    out: list[float] = []
    for part in parts:
        try:
            value = float(part)
        except (TypeError, ValueError):
            raise ValueError(f"{where}: {part!r} is not a number; give multipliers of {rate}, e.g. 0.5,1,2") from None
        if isinstance(part, bool) or not math.isfinite(value) or value <= 0:
            raise ValueError(f"{where}: every multiplier must be a finite number > 0, got {part!r}")
        out.append(value)
    repeated = sorted({v for v in out if out.count(v) > 1})
    if repeated:
        raise ValueError(f"{where} repeats {', '.join(f'{v:g}' for v in repeated)}: give each multiplier once")
    if len(out) < 2:
        raise ValueError(f"{where} needs at least two multipliers (got {len(out)}); one value is no choice: "
                         f"set {rate} instead, without a grid")
    return tuple(sorted(out))


def check_lr_options(cfg: Any) -> None:
    """The options' checks, from ``WorldConfig.__post_init__``: ``()`` is no grid (the default);
    any other grid must parse (``parse_lr_grid``) and be given sorted, and keep every rate in
    ``world.lr``'s range."""
    if cfg.lr_grid == ():
        return
    grid = parse_lr_grid(cfg.lr_grid)
    if grid != tuple(cfg.lr_grid):
        raise ValueError(f"world.lr_grid must be in increasing order, got {list(cfg.lr_grid)} (sorted: {list(grid)})")
    if cfg.lr * grid[-1] > LR_MAX:
        raise ValueError(f"world.lr_grid: world.lr {cfg.lr:g} x {grid[-1]:g} = {cfg.lr * grid[-1]:g} is above the "
                         f"largest learning rate a world takes ({LR_MAX:g}); lower world.lr or the grid")


def multipliers(cfg: Any) -> tuple[float, ...]:
    """The multipliers every loss trains at: ``world.lr_grid``, or (1,) without a grid."""
    return tuple(cfg.lr_grid) or (1.0,)


def student_rates(cfg: Any, groups: int, tasks: int) -> float | torch.Tensor:
    """The learning rate of each of the groups x L x T students (group-major, then multiplier,
    then task, as ``students._expand`` lays them out): the plain float ``world.lr`` without a grid
    (so the step is the one the world always took), else a (G L T,) tensor."""
    if not cfg.lr_grid:
        return cfg.lr
    grid = torch.tensor(cfg.lr_grid, dtype=torch.float32) * cfg.lr
    return grid.repeat_interleave(tasks).repeat(groups)


def take_step(p: torch.Tensor, v: torch.Tensor, rate: float | torch.Tensor) -> None:
    """p -= rate * v, with a per-student rate broadcast over each student's parameters."""
    if isinstance(rate, torch.Tensor):
        p.sub_(rate.reshape(-1, *[1] * (v.dim() - 1)) * v)
    else:
        p.sub_(rate * v)


def ce_scaled_gradient(grad: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor, batch_size: int) -> torch.Tensor:
    """A loss's logit gradient (S, B, K) rescaled, per student, to the Frobenius norm of CE's at the
    same logits and labels (S, B): ``grad * ||softmax(z) - onehot(y)||_F / B / ||grad||_F``. A
    student whose loss gives no gradient (norm 0) keeps its zero; a non-finite one stays
    non-finite, so the world's divergence check still sees it."""
    ce = torch.softmax(logits.detach(), -1)
    ce = ce - torch.nn.functional.one_hot(labels, logits.shape[-1]).to(ce.dtype)
    target = ce.flatten(1).norm(dim=1) / batch_size
    norm = grad.flatten(1).norm(dim=1)
    ratio = torch.where(norm > 0, target / norm.clamp_min(1e-30), torch.zeros_like(norm))
    return grad * ratio.reshape(-1, *[1] * (grad.dim() - 1))


def pick(validation: torch.Tensor, grid: tuple[float, ...]) -> torch.Tensor:
    """Each group's multiplier index from its mean validation accuracy over tasks (G, L): the best,
    ties to the multiplier nearest 1, then the smaller (as ``edloss compare --lr-grid`` picks)."""
    preference = sorted(range(len(grid)), key=lambda i: (abs(math.log(grid[i])), grid[i]))
    order = torch.tensor(preference)
    ranked = validation[:, order]  # columns in order of preference: argmax takes the first of equals
    first = (ranked == ranked.max(1, keepdim=True).values).double().argmax(1)
    return order[first]


def select(results: dict[str, torch.Tensor], validation: torch.Tensor, groups: int, grid: tuple[float, ...]) -> dict[str, torch.Tensor]:
    """Per-student metrics of G x L runs ((G L, T) each) and validation accuracy (G L, T) -> each
    group's students at its chosen multiplier ((G, T) each), with ``lr_multiplier`` and the
    chosen students' ``validation_accuracy``. Without a grid the results pass unchanged."""
    if len(grid) == 1 and validation.numel() == 0:
        return results
    L = len(grid)
    val = validation.reshape(groups, L, -1)
    chosen = pick(val.mean(-1), grid)  # (G,)
    out = {}
    for name, value in {**results, "validation_accuracy": validation}.items():
        v = value.reshape(groups, L, -1)
        out[name] = v[torch.arange(groups), chosen]
    out["lr_multiplier"] = torch.tensor(grid, dtype=torch.float64)[chosen][:, None].expand_as(out["accuracy"]).clone()
    return out
