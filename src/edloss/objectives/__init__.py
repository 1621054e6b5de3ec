"""The pretraining objectives behind one interface: what a generation's population is scored by.

* ``ranking`` (``objective.kind`` "expectation", the default, or "per_sample"): a loss's shape on
  synthetic predictions must rank them by how wrong they are (``objectives.ranking``);
* ``students`` (``objective.kind`` "students"): the networks a loss trains on synthetic tasks must
  beat cross-entropy's (``objectives.students``, in the world of ``edloss.students``).

``pretrain`` asks ``objective_for(cfg)`` for its run's objective and calls only what
``Objective`` names; neither objective imports the other, and the population penalties both score
with live in ``edloss.penalties``.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch

from edloss.objectives.ranking import RankingObjective
from edloss.objectives.students import StudentsObjective


class Objective(Protocol):
    """A pretraining objective, built from the run's ``PretrainConfig``."""

    def check(self, population: int) -> None:
        """Refuse, before any folder is made, a run that cannot fit this machine."""

    def check_evaluator(self, evaluator: Any) -> None:
        """Refuse an evaluator (``distributed.RayEvaluator``) the objective cannot use."""

    def heldout(self) -> Any:
        """The run's fixed held-out set: progress curves and the choice of the exported loss."""

    def sample(self, gen: torch.Generator) -> Any:
        """A generation's fresh data, drawn from ``gen`` (seeded by the seed and the generation)."""

    def evaluate(self, theta: torch.Tensor, data: Any, evaluator: Any = None) -> dict[str, torch.Tensor]:
        """Per-individual metrics of the population ``theta`` (P, D) on ``data``, ``fitness`` among them."""

    def heldout_scores(self, theta: torch.Tensor, heldout: Any) -> dict[str, torch.Tensor]:
        """Per-individual metrics of ``theta`` on the held-out set (a metrics row's ``heldout_*``)."""

    def shortlist(self, candidates: torch.Tensor, heldout: Any) -> tuple[torch.Tensor, dict[str, Any], int | None]:
        """The candidates the export ranks on the ranking held-out set, what the summary records
        about the choice, and the chosen one's index where the objective chose (None: the export does)."""


def objective_for(cfg: Any) -> Objective:
    """The objective of a pretraining run (``cfg``: its ``PretrainConfig``), by ``cfg.objective.kind``."""
    return StudentsObjective(cfg) if cfg.objective.kind == "students" else RankingObjective(cfg)


__all__ = ["Objective", "RankingObjective", "StudentsObjective", "objective_for"]
