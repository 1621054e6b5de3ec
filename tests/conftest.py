"""Shared test settings: small thread count so tests behave the same on 2-core CI machines."""

import os

import pytest
import torch
from hypothesis import HealthCheck, settings

torch.set_num_threads(min(2, os.cpu_count() or 1))
# The default profile is derandomized so CI on main is reproducible; `--hypothesis-profile=explore`
# draws fresh examples (and more of them) to hunt for new failures before committing.
_common = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("edloss", max_examples=40, derandomize=True, **_common)
settings.register_profile("explore", max_examples=400, **_common)
settings.load_profile("edloss")


@pytest.fixture(scope="session")
def tiny_pretrain_config():
    """A pretraining config that runs in about a second."""
    from edloss.evolve import ESConfig
    from edloss.objective import ObjectiveConfig
    from edloss.pretrain import PretrainConfig

    return PretrainConfig(
        objective=ObjectiveConfig(classes=(2, 50), evals_per_block=512, min_items=16),
        es=ESConfig(population=16, parents=4, elites=2, generations=8, seed=3),
        heldout_every=3,
        checkpoint_every=2,
    )
