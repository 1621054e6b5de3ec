"""Worlds a search cannot win by step size (issue 34): the learning-rate grid and the CE-scaled
gradient as world options, the near-pair gate of world-check, and 100-class worlds. Tiny worlds only."""

import json
import math
import statistics
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from edloss import EDLLoss, students
from edloss.cli import main
from edloss.configs import from_dict, to_dict
from edloss.students import (PRESETS, WorldConfig, check_memory, cross_entropy_group_loss, evaluate_population, memory_estimate,
                             reference_results, sample_tasks, score_module, train_students)
from edloss.world_lr import ce_scaled_gradient, parse_lr_grid, pick

ROOT = Path(__file__).resolve().parents[1]

TINY = WorldConfig(tasks=3, points_per_class=30, test_points_per_class=20, dim=8, depth=1, width=16, steps=30, batch_size=16)
GRID = replace(TINY, lr_grid=(0.5, 1.0, 2.0))


def tasks_of(cfg, seed=0, k=None):
    return sample_tasks(cfg, torch.Generator().manual_seed(seed), k=k)


def ce(cfg):
    return lambda z, y: cross_entropy_group_loss(z, y, cfg.batch_size)


# ---------------------------------------------------------------------- the options, and bad input
def test_defaults_are_off_and_the_options_travel_with_the_world():
    assert WorldConfig().lr_grid == () and WorldConfig().normalize_gradient is False
    saved = to_dict(replace(GRID, normalize_gradient=True))
    assert saved["lr_grid"] == [0.5, 1.0, 2.0] or saved["lr_grid"] == (0.5, 1.0, 2.0)
    back = from_dict(WorldConfig, json.loads(json.dumps(saved)), "world")
    assert back.lr_grid == (0.5, 1.0, 2.0) and back.normalize_gradient is True


@pytest.mark.parametrize("grid, message", [
    ((1.0,), "at least two multipliers"),
    ((0.0, 1.0), "finite number > 0"),
    ((-1.0, 1.0), "finite number > 0"),
    ((float("nan"), 1.0), "finite number > 0"),
    ((float("inf"), 1.0), "finite number > 0"),
    ((1.0, 1.0), "repeats 1"),
    ((2.0, 1.0), "increasing order"),
    ((1.0, 500.0), "above the largest learning rate"),
])
def test_a_bad_lr_grid_is_a_one_line_error_before_any_work(grid, message):
    with pytest.raises(ValueError, match=message) as err:
        replace(TINY, lr_grid=grid)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("text, message", [("", "at least two"), ("1", "at least two"), ("0.5,x", "not a number"),
                                            ("0.5,nan", "finite number > 0"), ("1,1", "repeats")])
def test_parse_lr_grid_refuses_an_empty_one_value_or_bad_grid(text, message):
    with pytest.raises(ValueError, match=message):
        parse_lr_grid(text, "--lr-grid")
    assert parse_lr_grid("2, 0.5,1") == (0.5, 1.0, 2.0)


def test_wrong_types_are_named():
    with pytest.raises(ValueError, match="lr_grid"):
        from_dict(WorldConfig, {"lr_grid": ["a", 1]}, "world")
    with pytest.raises(ValueError, match="normalize_gradient"):
        from_dict(WorldConfig, {"normalize_gradient": "yes"}, "world")


def test_world_check_refuses_a_bad_grid_before_any_work(tmp_path, capsys):
    for grid, message in (("", "at least two"), ("1", "at least two"), ("0,1", "finite number > 0"), ("1,1", "repeats")):
        assert main(["world-check", "--lr-grid", grid, "--out", str(tmp_path / "out"), "--quiet"]) != 0
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1
        assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------- the learning-rate grid
def test_the_grid_leaves_the_plain_world_as_it_was_and_adds_a_validation_set():
    plain, grid = tasks_of(TINY), tasks_of(GRID)
    for name in ("x", "y", "x_test", "y_test", "order"):
        assert torch.equal(getattr(plain, name), getattr(grid, name))
    assert plain.x_val is None and grid.x_val.shape == grid.x_test.shape
    assert torch.equal(grid.y_val, grid.y_test) and not torch.equal(grid.x_val, grid.x_test)  # clean, balanced, fresh points


def test_each_multiplier_trains_the_plain_worlds_students_and_the_best_on_validation_is_kept():
    tasks = tasks_of(GRID)
    out = train_students(tasks, ce(GRID), 1, GRID)
    assert set(out) >= {"accuracy", "nll", "ece", "diverged", "lr_multiplier", "validation_accuracy"}
    chosen = float(out["lr_multiplier"][0, 0])
    assert chosen in GRID.lr_grid and (out["lr_multiplier"] == chosen).all()  # one rate per loss, over its tasks
    # common random numbers: the grid's students at the chosen multiplier are the plain world's at lr x m
    plain = train_students(tasks, ce(TINY), 1, replace(TINY, lr=TINY.lr * chosen))
    torch.testing.assert_close(out["accuracy"], plain["accuracy"], rtol=0, atol=0)
    # the choice is the best mean validation accuracy: the plain world's students at each rate, scored on the validation set
    on_val = replace(tasks, x_test=tasks.x_val, y_test=tasks.y_val, x_val=None, y_val=None)
    val = torch.tensor([[float(train_students(on_val, ce(TINY), 1, replace(TINY, lr=TINY.lr * m))["accuracy"].mean()) for m in GRID.lr_grid]])
    assert GRID.lr_grid[int(pick(val, GRID.lr_grid))] == chosen


def test_the_test_points_play_no_part_in_the_choice():
    tasks = tasks_of(GRID)
    first = train_students(tasks, ce(GRID), 1, GRID)
    tasks.x_test = torch.randn_like(tasks.x_test)  # other test inputs: the rate chosen cannot move
    second = train_students(tasks, ce(GRID), 1, GRID)
    assert torch.equal(first["lr_multiplier"], second["lr_multiplier"])
    assert torch.equal(first["validation_accuracy"], second["validation_accuracy"])


def test_ties_go_to_the_multiplier_nearest_one_then_the_smaller():
    grid = (0.25, 0.5, 1.0, 2.0)
    assert pick(torch.tensor([[0.5, 0.5, 0.5, 0.5]]), grid).tolist() == [2]
    assert pick(torch.tensor([[0.1, 0.7, 0.2, 0.7]]), grid).tolist() == [1]
    assert pick(torch.tensor([[0.9, 0.7, 0.2, 0.7], [0.1, 0.2, 0.3, 0.4]]), grid).tolist() == [0, 3]


def test_a_population_and_a_module_are_scored_at_their_own_best_rate_against_ces():
    tasks = tasks_of(GRID)
    shipped = EDLLoss.pretrained()
    theta = shipped.net.flat().detach()[None].repeat(2, 1)
    metrics = evaluate_population(theta, shipped.net.config, tasks, GRID)
    assert metrics["fitness"].shape == (2,) and metrics["fitness"][0] == metrics["fitness"][1]
    assert set(metrics["lr_multiplier"].tolist()) <= set(GRID.lr_grid)
    assert float(metrics["reference_lr_multiplier"][0]) in GRID.lr_grid
    same = score_module(torch.nn.CrossEntropyLoss(), tasks, GRID)  # CE against CE: both at the same best rate
    assert same["fitness"] == pytest.approx(0, abs=1e-6) and same["lr_multiplier"] == same["reference_lr_multiplier"]


def test_a_loss_that_is_only_a_larger_step_gains_nothing_from_the_grid():
    """CE x 2 at rate m trains the students CE trains at 2m (common random numbers), so on a grid
    wide enough both reach the same best students: a larger step is no better loss."""
    world = replace(TINY, lr_grid=(0.25, 0.5, 1.0, 2.0, 4.0))
    tasks = tasks_of(world)
    reference = reference_results(tasks, world)
    double = score_module(lambda z, y: 2 * torch.nn.functional.cross_entropy(z, y), tasks, world, reference)
    if float(reference["lr_multiplier"][0, 0]) >= 0.5:  # CE's best is on 2 x CE's grid too
        assert double["lr_multiplier"] == float(reference["lr_multiplier"][0, 0]) / 2
        assert double["fitness"] == pytest.approx(0, abs=1e-9)


# ---------------------------------------------------------------------- CE-scaled gradient
def test_ce_scaled_gradient_has_ces_norm_per_student_and_keeps_zeros_and_nans():
    torch.manual_seed(0)
    logits, labels = torch.randn(4, 8, 5), torch.randint(0, 5, (4, 8))
    grad = torch.randn(4, 8, 5) * torch.tensor([1e-3, 1.0, 30.0, 0.0])[:, None, None]
    grad[3] = 0
    out = ce_scaled_gradient(grad, logits, labels, 8)
    ce_grad = (torch.softmax(logits, -1) - torch.nn.functional.one_hot(labels, 5)) / 8
    torch.testing.assert_close(out[:3].flatten(1).norm(dim=1), ce_grad[:3].flatten(1).norm(dim=1))
    torch.testing.assert_close(out[:3] / out[:3].flatten(1).norm(dim=1)[:, None, None], grad[:3] / grad[:3].flatten(1).norm(dim=1)[:, None, None])
    assert (out[3] == 0).all()
    grad[1, 0, 0] = float("nan")
    assert not torch.isfinite(ce_scaled_gradient(grad, logits, labels, 8)[1]).all()


def test_normalized_a_loss_times_any_gain_trains_the_students_ce_trains():
    world = replace(TINY, normalize_gradient=True)
    tasks = tasks_of(world)
    reference = reference_results(tasks, world)
    plain_ref = reference_results(tasks, TINY)
    torch.testing.assert_close(reference["accuracy"], plain_ref["accuracy"], rtol=0, atol=0)  # CE's students are untouched
    for gain in (0.1, 5.0):
        scaled = score_module(lambda z, y, g=gain: g * torch.nn.functional.cross_entropy(z, y), tasks, world, reference)
        assert scaled["accuracy_delta"] == pytest.approx(0, abs=0.02)
    unnormalized = score_module(lambda z, y: 0.1 * torch.nn.functional.cross_entropy(z, y), tasks, TINY, plain_ref)
    assert unnormalized["accuracy_delta"] < -0.02  # without it, a tenth of the step is a worse loss


def test_both_options_compose_and_a_diverging_loss_is_still_scored_zero():
    world = replace(GRID, normalize_gradient=True)
    tasks = tasks_of(world)

    def loss(logits, labels):
        c = cross_entropy_group_loss(logits, labels, world.batch_size)
        return torch.stack([c[0], c[1] * float("nan")])

    out = train_students(tasks, loss, 2, world)
    assert out["diverged"][1].tolist() == [1.0] * world.tasks and out["accuracy"][1].sum() == 0
    assert out["diverged"][0].sum() == 0


def test_a_pretrained_loss_records_the_options_in_its_provenance(tmp_path):
    from edloss.evolve import ESConfig
    from edloss.objective import ObjectiveConfig
    from edloss.pretrain import PretrainConfig, pretrain

    world = replace(TINY, tasks=2, steps=5, lr_grid=(0.5, 1.0), normalize_gradient=True)
    cfg = PretrainConfig(objective=ObjectiveConfig(kind="students"), world=world, es=ESConfig(population=4, generations=1, seed=3),
                         heldout_every=1, checkpoint_every=1, start="default")
    pretrain(cfg, tmp_path / "run", progress=False)
    saved = json.loads((tmp_path / "run" / "loss" / "loss.json").read_text())
    text = json.dumps(saved)
    assert '"lr_grid": [0.5, 1.0]' in text and '"normalize_gradient": true' in text


# ---------------------------------------------------------------------- 100 classes
@pytest.mark.parametrize("family", ["gaussian", "images"])
def test_a_k100_world_trains_and_scores(family):
    world = replace(TINY, family=family, classes=(100, 100), points_per_class=3, test_points_per_class=2, tasks=2, steps=5, width=16)
    tasks = tasks_of(world)
    assert tasks.num_classes == 100 and tasks.x_test.shape[1] == 200
    ref = reference_results(tasks, world)
    assert ref["accuracy"].shape == (1, 2) and torch.isfinite(ref["nll"]).all()
    for name in ("gaussian-k100", "images-k100"):
        assert replace(WorldConfig(), **PRESETS[name]).classes == (100, 100)


def test_scoring_in_chunks_of_students_gives_the_same_numbers(monkeypatch):
    for world in (TINY, replace(TINY, family="images", width=16)):
        tasks = tasks_of(world)
        shipped = EDLLoss.pretrained()
        theta = shipped.net.flat().detach()[None].repeat(3, 1)
        theta[1] += 0.1
        whole = evaluate_population(theta, shipped.net.config, tasks, world)
        monkeypatch.setattr(students, "SCORE_CHUNK_BYTES", 1)  # one group of T students a chunk
        chunked = evaluate_population(theta, shipped.net.config, tasks, world)
        monkeypatch.undo()
        for key in whole:
            assert torch.equal(whole[key], chunked[key]), key


def test_memory_refuses_what_the_machine_cannot_hold_with_the_estimate_and_counts_the_grid():
    k100 = replace(WorldConfig(), **PRESETS["gaussian-k100"])
    assert memory_estimate(replace(k100, lr_grid=(0.5, 1.0, 2.0)), 32) > 1.5 * memory_estimate(k100, 32)
    check_memory(k100, 32, available=16 * 2**30)  # the K = 100 presets fit this machine
    check_memory(replace(WorldConfig(), **PRESETS["images-k100"]), 32, available=16 * 2**30)
    huge = replace(WorldConfig(), classes=(1000, 1000), points_per_class=400)
    with pytest.raises(ValueError, match=r"needs about \d+\.\d GiB .*classes up to 1000.*world.classes") as err:
        check_memory(huge, 32, available=16 * 2**30)
    assert "\n" not in str(err.value)


# ---------------------------------------------------------------------- near pairs, the second gate
def recorded_results(summary: Path, seeds: int) -> set[tuple[int, float, float]]:
    """(seeds, mean, std) of test accuracy, rounded as the pairs record them, that a matrix regime's
    records hold: each arm's row, and each arm's first ``seeds`` finished seeds (a pair's common seeds)."""
    records = json.loads(summary.read_text())
    found = {(r["n"], round(r["test_mean"], 2), round(r["test_std"], 2)) for r in records["rows"] if r.get("n")}
    by_arm: dict[str, dict[int, float]] = {}
    for run in records["runs"]:
        if run["status"] == "finished":
            by_arm.setdefault(run["label"], {})[run["seed"]] = 100 * run["test_acc"]
    for tests in by_arm.values():
        first = [tests[s] for s in sorted(tests)[:seeds]]
        if len(first) == seeds > 1:
            found.add((seeds, round(statistics.mean(first), 2), round(statistics.stdev(first), 2)))
    return found


def test_every_pair_side_has_a_loss_and_the_gate_counts_only_pairs_above_seed_noise():
    from edloss.lab.world import PANEL, REGIMES, available, pair_arms
    from edloss.lab.world_pairs import PAIRS, counts, pair_gate, seed_noise

    assert set(PAIRS) <= set(REGIMES) and set(PANEL) == set(REGIMES)
    for regime, pairs in PAIRS.items():
        for arm in pair_arms(regime):
            assert available(arm), arm
        for p in pairs:
            assert p.a.source.startswith("docs/figures/") and p.a.spec != p.b.spec
            if p.tuned:  # the matrix's numbers, checked against its records where the checkout has them
                for side in (p.a, p.b):
                    assert side.source.startswith("docs/figures/regimes/"), side
                    summary = ROOT / side.source / "summary.json"
                    if summary.is_file():
                        assert (side.seeds, side.cifar, side.std) in recorded_results(summary, side.seeds), side
            assert counts(p) == (min(p.a.seeds, p.b.seeds) >= 3 and abs(p.a.cifar - p.b.cifar) > seed_noise(p))
    # the rule on made-up world scores: a world agreeing with every CIFAR sign gets 100% of the counted pairs
    # (each loss scored by its mean CIFAR number over the records naming it: a loss recorded at one shared rate
    # and again tuned has two numbers, whose counted pairs agree in sign)
    regime = "noise-0.4"
    recorded: dict[str, list[float]] = {}
    for p in PAIRS[regime]:
        for side in (p.a, p.b):
            recorded.setdefault(side.spec, []).append(side.cifar)
    scores = {spec: sum(values) / len(values) for spec, values in recorded.items()}
    gate = pair_gate(regime, scores)
    assert gate["recorded"] == len(PAIRS[regime]) and 0 < gate["counted"] < gate["recorded"]
    assert gate["agreement"] == 1.0 and gate["tuned"] is False
    # firm pairs (> 2 standard errors) are a subset of the counted ones, and right alike
    assert gate["firm_counted"] == sum(counts(p, 2.0) for p in PAIRS[regime]) <= gate["counted"]
    assert gate["firm_right"] == gate["firm_counted"]
    flipped = pair_gate(regime, {k: -v for k, v in scores.items()})
    assert flipped["agreement"] == 0.0 and flipped["firm_right"] == 0 and flipped["firm_counted"] == gate["firm_counted"]
    assert pair_gate(regime, {})["counted"] == 0 and pair_gate(regime, {})["agreement"] is None


def test_world_check_reports_both_gates_side_by_side(tmp_path, monkeypatch):
    from edloss.lab import world as world_module
    from edloss.lab import world_pairs
    from edloss.lab.world import format_result, world_check
    from edloss.lab.world_pairs import Pair, Side

    arms = [a for a in world_module.PANEL["clean"] if a.spec in ("ce", "poly1", "focal:2")]
    monkeypatch.setitem(world_module.PANEL, "clean", arms)
    pairs = [Pair("gain", Side("ce x 2", "ce:gain=2", 59.5, 0.1, 3, "docs/figures/x"), Side("ce", "ce", 59.62, 1.67, 10, "docs/figures/y")),
             Pair("gain", Side("poly1 x 0.5", "poly1:gain=0.5", 50.0, 0.1, 3, "docs/figures/x"), Side("poly1", "poly1", 60.63, 1.27, 10, "docs/figures/y"))]
    monkeypatch.setitem(world_pairs.PAIRS, "clean", pairs)
    world = replace(TINY, tasks=2, steps=10, lr_grid=(0.5, 1.0))
    result = world_check(world, ["clean"], tmp_path / "out", repeats=1, with_ranking=False, progress=False)
    assert result["regimes"]["clean"]["world"]["all"]["n"] == 3  # pair rows stay out of the panel's Spearman
    gate = result["pairs"]["clean"]
    assert gate["recorded"] == 2 and gate["counted"] == 1 and gate["pairs"][1]["world_diff"] is not None
    assert {r["label"] for r in result["pair_rows"]} == {"pair:ce:gain=2", "pair:poly1:gain=0.5"}
    assert all(r.get("role") == "pair" for r in result["pair_rows"]) and not any(r.get("role") for r in result["rows"])
    text = format_result(result)
    assert "gate 2: near pairs right" in text and "1 / 2" in text and "one shared lr" in text
    assert math.isfinite(json.loads((tmp_path / "out" / "world_check.json").read_text())["pairs"]["clean"]["pairs"][1]["world_diff"])


def test_the_k100_regimes_hold_the_cifar100_records():
    from edloss.lab.world import DEFAULT_REGIMES, PANEL, regime_world

    assert len({a.spec for a in PANEL["clean-k100"]}) == 4 and len(PANEL["longtail-100-k100"]) == 9
    assert "clean-k100" not in DEFAULT_REGIMES
    assert regime_world(TINY, "clean-k100").classes == (100, 100)
    assert regime_world(replace(TINY, points_per_class=100), "longtail-100-k100").imbalance == 100
    with pytest.raises(ValueError, match="regime longtail-100-k100: .*no training point"):  # named before any work
        regime_world(TINY, "longtail-100-k100")


def test_image_students_train_with_grouped_convolutions_equal_to_the_patch_form():
    """Training uses grouped convolutions (2.5x faster: benchmarks/bench_images_world.py), scoring
    the batched matmuls over unfolded patches; both compute the same network, values and gradients."""
    from edloss.students import _conv_features, _grouped_conv_features

    gen = torch.Generator().manual_seed(0)
    s, b, c = 6, 5, 4
    x = torch.randn(s, b, 1, students.IMAGE_SIZE, students.IMAGE_SIZE, generator=gen)
    params = [torch.randn(s, 9, c, generator=gen), torch.randn(s, 1, c, generator=gen),
              torch.randn(s, 9 * c, c, generator=gen), torch.randn(s, 1, c, generator=gen)]
    params = [p.requires_grad_(True) for p in params]
    patches, grouped = _conv_features(params, x), _grouped_conv_features(params, x)
    assert grouped.shape == patches.shape == (s, b, 9 * c)
    torch.testing.assert_close(grouped, patches, rtol=1e-5, atol=1e-5)
    for g1, g2 in zip(torch.autograd.grad(patches.square().sum(), params), torch.autograd.grad(grouped.square().sum(), params)):
        torch.testing.assert_close(g2, g1, rtol=1e-4, atol=1e-4)
    # a whole image world's search generation is the same run to run, as every world's is
    world = replace(TINY, family="images", width=16)
    tasks = tasks_of(world)
    theta = EDLLoss.pretrained().net.flat().detach()[None].repeat(3, 1)
    theta[2] += 0.05
    one, two = (evaluate_population(theta, EDLLoss.pretrained().net.config, tasks, world) for _ in range(2))
    assert all(torch.equal(one[k], two[k]) for k in one)
    # identical individuals score identically at any position of the population (grouped rounding is per group)
    assert all(torch.equal(one[k][0], one[k][1]) for k in one)


def test_world_weight_decay_makes_a_gain_a_rate_and_a_weight_decay_as_on_cifar():
    """With coupled weight decay in the students' SGD, a loss times g at rate lr with decay w trains the
    same students as the loss at rate g lr with decay w / g (as the lab's SGD does on CIFAR); without
    decay a gain is the rate alone. Off by default, and a bad value is a one-line error."""
    from edloss.lab.world import world_loss
    from edloss.students import score_module, train_students

    assert WorldConfig().weight_decay == 0.0
    with pytest.raises(ValueError, match="world.weight_decay"):
        WorldConfig(weight_decay=-1e-3)
    world = replace(TINY, lr=0.1, weight_decay=2e-3)
    tasks = tasks_of(world)
    half = score_module(world_loss("ce:gain=0.5"), tasks, world)
    moved = score_module(world_loss("ce"), tasks, replace(world, lr=0.05, weight_decay=4e-3))
    assert half["accuracy"] == pytest.approx(moved["accuracy"], abs=0.02) and half["nll"] == pytest.approx(moved["nll"], rel=1e-3)
    plain = score_module(world_loss("ce"), tasks, replace(world, lr=0.05))  # same rate, no decay: other students
    assert plain["nll"] != pytest.approx(moved["nll"], rel=1e-3)
    decayed = train_students(tasks, ce(world), 1, world)
    assert torch.isfinite(decayed["nll"]).all()
