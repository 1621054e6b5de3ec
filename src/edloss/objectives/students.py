"""The students objective: a loss's fitness is how well the networks it trains do, in the students
world (``edloss.students``: synthetic tasks, small student networks, the regime's label noise and
class imbalance), minus cross-entropy's students on the same tasks.

One of the two pretraining objectives (``objectives``): ``StudentsObjective`` is what ``pretrain``
calls. The world itself (its config, tasks, students and their training, its memory estimate)
lives in ``edloss.students``, which the lab's world checks and the benchmarks use too.
"""

from __future__ import annotations

from typing import Any

import torch

from edloss.start import start_parameters
from edloss.students import (Heldout, Tasks, WorldConfig, check_memory, evaluate_heldout_worlds, evaluate_worlds, heldout_worlds,
                             sample_worlds)

HeldoutWorlds = list[tuple[str, WorldConfig, Heldout]]


class StudentsObjective:
    """The students objective as ``pretrain`` runs it (an ``objectives.Objective``): each generation
    fresh tasks in every world of ``cfg.world``'s mixture, every individual training one student per
    task; held-out tasks in the selection worlds, where the export's candidate is chosen (the start
    loss among them). ``cfg``: the run's ``PretrainConfig``."""

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg

    def check(self, population: int) -> None:
        """Knobs that pass one by one can together need tens of GB: refuse the world before allocating."""
        check_memory(self.cfg.world, population)

    def check_evaluator(self, evaluator: Any) -> None:
        """The students train in this process: an evaluator (Ray) scores ranking batches only."""
        if evaluator is not None:
            raise ValueError("the students objective runs in this process; --ray is for the ranking objectives")

    def heldout(self) -> HeldoutWorlds:
        return heldout_worlds(self.cfg.world, self.cfg.heldout_seed)

    def sample(self, gen: torch.Generator) -> list[Tasks]:
        return sample_worlds(self.cfg.world, gen)

    def evaluate(self, theta: torch.Tensor, data: list[Tasks], evaluator: Any = None) -> dict[str, torch.Tensor]:
        """World metrics of every individual of ``theta`` (P, D): each trains one student per task."""
        return evaluate_worlds(theta, self.cfg.lossnet, data, self.cfg.world)

    def heldout_scores(self, theta: torch.Tensor, heldout: HeldoutWorlds) -> dict[str, torch.Tensor]:
        return evaluate_heldout_worlds(theta, self.cfg.lossnet, heldout, self.cfg.world.combine)

    def shortlist(self, candidates: torch.Tensor, heldout: HeldoutWorlds) -> tuple[torch.Tensor, dict[str, Any], int | None]:
        """The candidate with the best held-out world fitness (the start loss competes too: a search
        that found nothing better on the selection worlds exports its start), its world metrics for
        the summary, and its index among the candidates (the start's: one past the last)."""
        cfg = self.cfg
        if cfg.start:
            candidates = torch.cat([candidates, start_parameters(cfg)[None]])
        world = evaluate_heldout_worlds(candidates, cfg.lossnet, heldout, cfg.world.combine)
        best = int(torch.argmax(world["fitness"]))
        chosen = {"world_heldout": {name: float(value[best]) for name, value in world.items()}}
        if cfg.start:
            chosen["world_heldout_start"] = {name: float(value[-1]) for name, value in world.items()}
            chosen["exported_start"] = best == candidates.shape[0] - 1
        return candidates[best : best + 1], chosen, best
