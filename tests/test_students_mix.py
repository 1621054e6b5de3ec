"""Mixtures of students worlds (``world.mix``), selection on worlds held out from the search
(``world.select``), and the start loss competing at export."""

import json
from dataclasses import replace

import pytest
import torch

from edloss import EDLLoss
from edloss.evolve import ESConfig
from edloss.lossnet import LossNetConfig
from edloss.objective import ObjectiveConfig
from edloss.pretrain import PretrainConfig, Run, pretrain
from edloss.students import (PRESETS, WorldConfig, evaluate_population, evaluate_worlds, heldout_worlds, sample_tasks, sample_worlds,
                             variants)

TINY = WorldConfig(tasks=2, points_per_class=20, test_points_per_class=10, dim=8, depth=1, width=16, steps=20, batch_size=16)
CHEAP_MIX = ("gaussian-default", "gaussian-lr0.1")  # presets that leave TINY's size alone


@pytest.mark.parametrize("knobs, message", [
    ({"mix": ("gaussian-nope",)}, "unknown world 'gaussian-nope'"),
    ({"select": ("images-short",)}, "unknown world 'images-short'"),
    ({"mix": ("gaussian-long", "gaussian-long")}, "twice"),
    ({"combine": "median"}, "combine"),
])
def test_a_mixture_naming_an_unknown_or_repeated_world_is_refused(knobs, message):
    with pytest.raises(ValueError, match=message):
        replace(TINY, **knobs)


def test_a_world_of_the_mixture_is_validated_with_the_base_knobs():
    # 15 training points per class at imbalance 20 is fine; the small-data preset keeps 100 per class: still fine,
    # but a base imbalance that empties a class in a preset's smaller data is refused before any work
    with pytest.raises(ValueError, match="imbalance"):
        replace(TINY, points_per_class=2000, imbalance=1500.0, mix=("gaussian-small-data",))


def test_every_preset_is_a_valid_world():
    for name, knobs in PRESETS.items():
        assert replace(WorldConfig(), **knobs).steps >= 1, name


def test_a_single_world_draws_and_scores_exactly_as_before():
    gen_a, gen_b = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    (alone,) = sample_worlds(TINY, gen_a)
    direct = sample_tasks(TINY, gen_b)
    assert torch.equal(alone.x, direct.x) and torch.equal(alone.y, direct.y) and torch.equal(alone.order, direct.order)
    theta = EDLLoss.pretrained().net.flat().detach()[None]
    net = EDLLoss.pretrained().net.config
    assert evaluate_worlds(theta, net, [alone], TINY)["fitness"] == evaluate_population(theta, net, direct, TINY)["fitness"]


def test_a_mixtures_fitness_is_the_mean_of_its_worlds():
    cfg = replace(TINY, mix=CHEAP_MIX)
    tasks = sample_worlds(cfg, torch.Generator().manual_seed(1))
    assert len(tasks) == 2
    shipped = EDLLoss.pretrained()
    theta = torch.stack([shipped.net.flat().detach(), shipped.net.flat().detach() * 1.1])
    mixed = evaluate_worlds(theta, shipped.net.config, tasks, cfg)
    alone = [evaluate_population(theta, shipped.net.config, t, world)["fitness"] for (_, world), t in zip(variants(cfg), tasks)]
    assert torch.allclose(mixed["fitness"], (alone[0] + alone[1]) / 2)
    assert torch.equal(mixed["fitness@gaussian-lr0.1"], alone[1])
    assert variants(cfg)[1][1].lr == 0.1 and variants(cfg)[1][1].width == TINY.width  # the preset on top of the base


def test_selection_worlds_are_the_held_out_ones_when_given():
    cfg = replace(TINY, mix=CHEAP_MIX, select=("images-default",))
    (name, world, _), = heldout_worlds(replace(cfg, tasks=1), seed=3)
    assert name == "images-default" and world.family == "images"
    assert [n for n, _, _ in heldout_worlds(replace(TINY, mix=CHEAP_MIX), seed=3)] == list(CHEAP_MIX)


def _config(**world) -> PretrainConfig:
    return PretrainConfig(lossnet=LossNetConfig(), objective=ObjectiveConfig(kind="students"),
                          es=ESConfig(population=4, generations=2, seed=0), heldout_every=1, checkpoint_every=1,
                          world=replace(TINY, **world), start="default")


def test_pretraining_in_a_mixture_records_each_world_and_lets_the_start_compete(tmp_path):
    cfg = _config(mix=CHEAP_MIX, select=("gaussian-wide",))
    loss, summary = pretrain(cfg, tmp_path, progress=False)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert all(len(r["classes"]) == 2 for r in rows) and "fitness@gaussian-lr0.1" in rows[0]
    start = summary["world_heldout_start"]["fitness"]
    assert summary["world_heldout"]["fitness"] >= start  # the start is among the candidates
    assert isinstance(summary["exported_start"], bool)
    if summary["exported_start"]:
        assert torch.equal(loss.net.flat().detach(), EDLLoss.pretrained().net.flat().detach())


def test_a_mixture_run_resumes_bit_for_bit(tmp_path):
    cfg = replace(_config(mix=CHEAP_MIX), es=ESConfig(population=4, generations=3, seed=0), checkpoint_every=2)
    straight, _ = pretrain(cfg, tmp_path / "straight", progress=False)
    run = Run(cfg, tmp_path / "killed")
    for _ in range(3):  # the third generation is lost with the kill (checkpoint every 2)
        run.step()
    del run
    resumed, _ = pretrain(cfg, tmp_path / "killed", progress=False)
    torch.testing.assert_close(resumed.net.flat(), straight.net.flat(), rtol=0, atol=0)


def test_world_check_of_a_mixture_is_the_mean_of_its_worlds(tmp_path):
    from edloss.lab.world import world_check

    cfg = replace(TINY, mix=CHEAP_MIX)
    mixed = world_check(cfg, ["noise-0.6"], tmp_path / "mix", repeats=1, with_ranking=False, progress=False)
    parts = [world_check(world, ["noise-0.6"], tmp_path / name, repeats=1, with_ranking=False, progress=False) for name, world in variants(cfg)]
    for i, row in enumerate(mixed["rows"]):
        singles = [p["rows"][i]["fitness"] for p in parts]
        assert row["fitness"] == pytest.approx(sum(singles) / 2, abs=1e-12)
        assert row["fitness@gaussian-default"] == pytest.approx(singles[0], abs=1e-12)


def test_a_min_mixture_scores_each_individual_by_its_worst_world():
    cfg = replace(TINY, mix=CHEAP_MIX, combine="min")
    tasks = sample_worlds(cfg, torch.Generator().manual_seed(1))
    shipped = EDLLoss.pretrained()
    theta = torch.stack([shipped.net.flat().detach(), shipped.net.flat().detach() * 1.1])
    worst = evaluate_worlds(theta, shipped.net.config, tasks, cfg)
    mean = evaluate_worlds(theta, shipped.net.config, tasks, replace(cfg, combine="mean"))
    per_world = torch.stack([worst[f"fitness@{name}"] for name in CHEAP_MIX])
    assert torch.equal(worst["fitness"], per_world.min(0).values) and torch.equal(worst["accuracy"], mean["accuracy"])


def test_world_check_of_a_min_mixture_scores_each_arm_by_its_worst_world(tmp_path):
    from edloss.lab.world import world_check

    cfg = replace(TINY, mix=CHEAP_MIX, combine="min")
    result = world_check(cfg, ["noise-0.6"], tmp_path, repeats=1, with_ranking=False, progress=False)
    for row in result["rows"]:
        assert row["fitness"] == min(row[f"fitness@{name}"] for name in CHEAP_MIX)
