import math

import pytest
import torch

from edloss import evolve
from edloss.evolve import AVOID, ESConfig, draw_chaos, logistic_step, sigma_at


def test_initial_chaos_avoids_fixed_and_periodic_points():
    c = draw_chaos((200, 300), torch.Generator().manual_seed(0))
    assert ((c > 0) & (c < 1)).all()
    distance = (c.unsqueeze(-1) - AVOID).abs().min(-1).values
    assert distance.min() >= evolve.AVOID_RADIUS
    for point in (0.0, 0.75, (5 - math.sqrt(5)) / 8, (5 + math.sqrt(5)) / 8, 0.25, 0.5, 1.0):  # fixed, period 2, pre-fixed
        assert (AVOID - point).abs().min() < 1e-12


def test_states_follow_the_logistic_map_and_never_stick():
    gen = torch.Generator().manual_seed(1)
    c = draw_chaos((64, 50), gen)
    for _ in range(2000):
        nxt, reseeded = logistic_step(c, gen)
        expected = 4 * c * (1 - c)
        followed = nxt == expected
        assert int((~followed).sum()) == reseeded
        assert ((nxt > 0) & (nxt < 1)).all()
        for v in (0.25, 0.5, 0.75):
            assert not (nxt == v).any()
        c = nxt


def test_stuck_states_are_reseeded():
    gen = torch.Generator().manual_seed(2)
    c = torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0, 0.3], dtype=torch.float64)
    nxt, reseeded = logistic_step(c, gen)
    # 0 -> 0, 0.25 -> 0.75, 0.5 -> 1, 0.75 -> 0.75, 1 -> 0: all five would stick; 0.3 follows the map
    assert reseeded == 5
    assert nxt[-1].item() == pytest.approx(4 * 0.3 * 0.7)
    assert ((nxt > 0) & (nxt < 1)).all()


def test_chaotic_step_variance_matches_gaussian():
    gen = torch.Generator().manual_seed(3)
    c = draw_chaos((200_000,), gen)
    for _ in range(50):
        c, _ = logistic_step(c, gen)
    assert (2 * c - 1).var().item() == pytest.approx(0.5, rel=0.02)  # arcsine law


@pytest.mark.parametrize("mutation", ["chaotic", "gaussian"])
def test_tell_keeps_elites_and_mutates_the_rest(mutation):
    cfg = ESConfig(population=10, parents=3, elites=2, mutation=mutation, generations=5)
    state = evolve.init(cfg, torch.ones(7))
    fitness = torch.arange(10, dtype=torch.float32)
    nxt = evolve.tell(state, fitness, cfg)
    assert nxt.generation == 1
    torch.testing.assert_close(nxt.population[0], state.population[9])
    torch.testing.assert_close(nxt.population[1], state.population[8])
    parents = state.population[[9, 8, 7]]
    for i, child in enumerate(nxt.population[2:]):
        step = child - parents[i % 3]
        assert 0 < step.abs().max() <= sigma_at(cfg, 0) * 1.0 + 1e-6 or mutation == "gaussian"


def test_same_seed_same_run_and_different_seed_differs():
    def run(seed, mutation="chaotic"):
        cfg = ESConfig(population=8, parents=2, elites=1, mutation=mutation, seed=seed, generations=6)
        state = evolve.init(cfg, torch.ones(4))
        for _ in range(6):
            state = evolve.tell(state, -(evolve.ask(state) ** 2).sum(1), cfg)
        return state.population

    assert torch.equal(run(0), run(0))
    assert not torch.equal(run(0), run(1))
    assert not torch.equal(run(0), run(0, "gaussian"))


def test_es_minimises_a_quadratic():
    for mutation in ("chaotic", "gaussian"):
        cfg = ESConfig(population=32, parents=8, elites=2, mutation=mutation, sigma_init=0.5, sigma_final=0.01, generations=80, seed=4)
        state = evolve.init(cfg, torch.full((6,), 2.0))
        start = (state.population**2).sum(1).min()
        for _ in range(cfg.generations):
            state = evolve.tell(state, -(state.population**2).sum(1), cfg)
        assert (state.population[0] ** 2).sum() < 0.01 * start


def test_sigma_schedule_is_shared_and_decays():
    cfg = ESConfig(sigma_init=0.2, sigma_final=0.02, generations=11)
    values = [sigma_at(cfg, t) for t in range(11)]
    assert values[0] == pytest.approx(0.2) and values[-1] == pytest.approx(0.02)
    assert all(a >= b for a, b in zip(values, values[1:]))
    assert sigma_at(ESConfig(schedule="constant"), 50) == ESConfig().sigma_init


@pytest.mark.parametrize(
    "kwargs",
    [{"mutation": "levy"}, {"population": 1}, {"parents": 0}, {"parents": 100}, {"elites": 64}, {"generations": 0}, {"sigma_init": -1.0}, {"schedule": "step"}],
)
def test_bad_es_config(kwargs):
    with pytest.raises(ValueError):
        ESConfig(**kwargs)


def test_tell_rejects_bad_fitness():
    cfg = ESConfig(population=4, parents=2, elites=1)
    state = evolve.init(cfg, torch.ones(3))
    with pytest.raises(ValueError, match="shape"):
        evolve.tell(state, torch.zeros(5), cfg)
    with pytest.raises(ValueError, match="NaN"):
        evolve.tell(state, torch.tensor([0.0, float("nan"), 1.0, 2.0]), cfg)
