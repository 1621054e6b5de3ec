"""What decides a pretraining run's numbers: ``PretrainConfig`` (the loss network, the objective,
the evolution strategy, the held-out set, the students objective's world, the start loss), and
a saved config read back as today's code writes it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from edloss.configs import check_fields, check_range, diff_dicts, from_dict, to_dict
from edloss.evolve import ESConfig
from edloss.lossnet import LossNetConfig
from edloss.objectives.ranking import ObjectiveConfig
from edloss.students import WorldConfig


@dataclass(frozen=True)
class PretrainConfig:
    """Everything that decides a pretraining run's numbers."""

    lossnet: LossNetConfig = field(default_factory=LossNetConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    es: ESConfig = field(default_factory=ESConfig)
    heldout_every: int = 10
    checkpoint_every: int = 10
    heldout_seed: int = 20260528
    heldout_evals_per_block: int = 0  # 0: four times a training block's; set to hold the held-out set fixed
    world: WorldConfig = field(default_factory=WorldConfig)  # the students objective's world (objective.kind = "students")
    start: str = ""  # a loss (shipped name or folder) the first population is drawn around; "" draws it fresh

    def __post_init__(self) -> None:
        check_fields(self)
        check_range("heldout_every", self.heldout_every, 1)
        check_range("checkpoint_every", self.checkpoint_every, 1)
        if self.heldout_evals_per_block != 0:
            check_range("heldout_evals_per_block", self.heldout_evals_per_block, 16)
        if not 0 <= self.heldout_seed < 2**63:
            raise ValueError(f"heldout_seed must be in [0, 2**63), got {self.heldout_seed}")
        if self.lossnet.form == "corrected" and self.lossnet.noise_rate != self.label_noise:
            where = "world.label_noise" if self.students else "objective.label_noise"
            raise ValueError(f"the corrected form's base must match the regime: lossnet.noise_rate {self.lossnet.noise_rate} "
                             f"!= {where} {self.label_noise}")
        if not self.students and self.world != WorldConfig():  # else the world would be ignored, silently
            raise ValueError(f"config.world is set ({', '.join(diff_dicts(to_dict(WorldConfig()), to_dict(self.world))[:3])}) but "
                             f"objective.kind is {self.objective.kind!r}: only objective.kind = \"students\" uses the world; "
                             "set it (or --objective students), or remove the [world] section")
        if self.students and self.objective.label_noise > 0:
            raise ValueError("with the students objective the regime's label noise is world.label_noise (objective.label_noise is the ranking's)")

    @property
    def students(self) -> bool:
        """Fitness from the students world instead of the ranking objective."""
        return self.objective.kind == "students"

    @property
    def label_noise(self) -> float:
        """The regime's label-noise rate, wherever the objective keeps it."""
        return self.world.label_noise if self.students else self.objective.label_noise


def saved_config(saved: dict[str, Any]) -> dict[str, Any]:
    """A config.json/checkpoint config as today's ``to_dict`` writes it: fields added since it was
    saved take their defaults (each added with the default that keeps the older numbers), so an
    older run still resumes and still compares equal. A config that no longer parses is kept as
    it was, so the difference is reported instead of hidden."""
    try:
        return to_dict(from_dict(PretrainConfig, saved))
    except ValueError:
        return saved
