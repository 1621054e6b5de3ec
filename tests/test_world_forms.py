"""The noise ceiling of benchmarks/world_forms.py: what a world that knew CIFAR's true means would
score against the matrix's measured ones, so a gate above it is known to be out of reach."""

from __future__ import annotations

import statistics

import pytest
from _benchmarks import import_benchmark


@pytest.fixture()
def forms():
    pytest.importorskip("scipy")  # the lab extra, as every benchmark
    return import_benchmark("world_forms")


def arm(name: str, per_seed: list[float]) -> dict:
    return {"arm": name, "spec": name, "cifar": statistics.mean(per_seed), "std": statistics.stdev(per_seed),
            "seeds": len(per_seed), "source": "test", "per_seed": dict(enumerate(per_seed))}


def test_a_seed_lucky_for_every_arm_reorders_none_so_the_ceiling_is_one(forms) -> None:
    seed_effect = [0.0, 3.0, -2.0]  # large, but shared: the arms' order is the same on every seed
    arms = [arm(f"a{i}", [10.0 * i + e for e in seed_effect]) for i in range(4)]
    assert forms.noise_ceiling(arms) == (1.0, 1.0)


def test_arms_within_noise_of_each_other_have_a_ceiling_near_zero(forms) -> None:
    arms = [arm("a", [1.0, -1.0, 0.0]), arm("b", [-1.0, 1.0, 0.0]), arm("c", [0.0, 1.0, -1.0]),
            arm("d", [0.0, -1.0, 1.0])]  # equal means, residual noise only
    rho, _ = forms.noise_ceiling(arms)
    assert rho == 0.0


def test_more_noise_lowers_the_ceiling_and_the_same_seed_gives_the_same_numbers(forms) -> None:
    noise = [0.5, -0.5, 0.0]
    quiet = [arm(f"a{i}", [i + n * (-1) ** i for n in noise]) for i in range(5)]
    loud = [arm(f"a{i}", [i + 4 * n * (-1) ** i for n in noise]) for i in range(5)]
    assert forms.noise_ceiling(loud, draws=300)[0] < forms.noise_ceiling(quiet, draws=300)[0] <= 1.0
    assert forms.noise_ceiling(loud, draws=300) == forms.noise_ceiling(loud, draws=300)


def test_provisional_or_too_few_arms_have_no_ceiling(forms) -> None:
    arms = [arm(f"a{i}", [i, i + 1.0, i - 1.0]) for i in range(3)]
    assert forms.noise_ceiling(arms[:2]) == (None, None)
    arms[0] = {**arms[0], "source": "best val, seed 0"}
    assert forms.noise_ceiling(arms) == (None, None)
