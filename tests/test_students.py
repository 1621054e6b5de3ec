"""The students world: tasks, batched students, common random numbers, divergence, and pretraining in it."""

import json
from dataclasses import replace

import pytest
import torch

from edloss import EDLLoss
from edloss.cli import main
from edloss.evolve import ESConfig
from edloss.lossnet import LossNetConfig
from edloss.objective import ObjectiveConfig
from edloss.pretrain import PretrainConfig, Run, pretrain
from edloss.students import (WorldConfig, cross_entropy_group_loss, evaluate_population, expected_calibration_error, module_group_loss,
                             reference_results, sample_tasks, score_module, train_students)

TINY = WorldConfig(tasks=3, points_per_class=30, test_points_per_class=20, dim=8, depth=1, width=16, steps=40, batch_size=16)


def tasks_of(cfg=TINY, seed=0, k=None):
    return sample_tasks(cfg, torch.Generator().manual_seed(seed), k=k)


@pytest.mark.parametrize("field, value, message", [
    ("classes", (1, 10), "classes"),
    ("imbalance", 0.5, "imbalance"),
    ("label_noise", 0.9, "label_noise"),
    ("steps", 0, "steps"),
    ("family", "sounds", "family"),
    ("noise_kind", "adversarial", "noise_kind"),
    ("width", 10**6, "width"),
    ("lr", float("nan"), "lr"),
])
def test_world_knobs_out_of_range_fail_before_any_work(field, value, message):
    with pytest.raises(ValueError, match=message):
        replace(TINY, **{field: value})


def test_imbalance_so_steep_a_class_gets_no_point_is_refused():
    with pytest.raises(ValueError, match="no training point"):
        replace(TINY, imbalance=100.0, points_per_class=30)


def test_tasks_are_seeded_balanced_at_test_and_carry_the_regime():
    a, b = tasks_of(), tasks_of()
    torch.testing.assert_close(a.x, b.x)
    assert torch.equal(a.order, b.order)
    assert not torch.equal(a.x, tasks_of(seed=1).x)
    assert a.num_classes == 10 and torch.bincount(a.y_test[0]).tolist() == [20] * 10
    assert torch.equal(a.y, a.y_clean)  # clean regime

    noisy = tasks_of(replace(TINY, label_noise=0.4, points_per_class=400))
    rate = (noisy.y != noisy.y_clean).double().mean().item()
    assert 0.37 < rate < 0.43
    pair = tasks_of(replace(TINY, label_noise=0.3, noise_kind="pair", points_per_class=400))
    flipped = pair.y != pair.y_clean
    assert torch.equal(pair.y[flipped], (pair.y_clean[flipped] + 1) % 10)

    skewed = tasks_of(replace(TINY, imbalance=10.0, points_per_class=100))
    counts = torch.bincount(skewed.y_clean[0]).tolist()
    assert counts[0] == 100 and counts[-1] == 10 and counts == sorted(counts, reverse=True)


def test_cross_entropy_students_learn_and_every_group_sees_the_same_world():
    tasks = tasks_of()
    ref = reference_results(tasks, TINY)
    assert ref["accuracy"].mean() > 0.3  # chance is 0.1
    # three groups trained by the same loss: identical students (same init, data and order)
    same = train_students(tasks, lambda z, y: cross_entropy_group_loss(z, y, TINY.batch_size), 3, TINY)
    for g in range(3):
        torch.testing.assert_close(same["accuracy"][g], ref["accuracy"][0], rtol=0, atol=0)
    # a registry-style module (mean over rows) gives the CE students too
    module = score_module(torch.nn.CrossEntropyLoss(), tasks, TINY, ref)
    assert abs(module["accuracy_delta"]) < 1e-6 and module["fitness"] == pytest.approx(0, abs=1e-6)


def test_a_population_of_the_shipped_loss_scores_like_the_loss_itself():
    tasks = tasks_of()
    shipped = EDLLoss.pretrained()
    theta = shipped.net.flat().detach()[None].repeat(2, 1)
    population = evaluate_population(theta, shipped.net.config, tasks, TINY)
    direct = score_module(EDLLoss.pretrained(check_inputs=False), tasks, TINY)
    assert population["accuracy"][0] == population["accuracy"][1]
    assert abs(float(population["accuracy"][0]) - direct["accuracy"]) < 0.02  # fused vs population float paths


def test_a_diverging_loss_gets_the_worst_score_and_the_others_are_untouched():
    tasks = tasks_of()

    def loss(logits, labels):
        ce = cross_entropy_group_loss(logits, labels, TINY.batch_size)
        return torch.stack([ce[0], ce[1] * float("nan")])

    out = train_students(tasks, loss, 2, TINY)
    ref = reference_results(tasks, TINY)
    assert out["diverged"][1].tolist() == [1.0] * TINY.tasks and out["diverged"][0].sum() == 0
    assert out["accuracy"][1].sum() == 0
    torch.testing.assert_close(out["accuracy"][0], ref["accuracy"][0], rtol=0, atol=0)


def test_image_tasks_train_convolutional_students():
    cfg = replace(TINY, family="images", width=32)
    tasks = tasks_of(cfg)
    assert tasks.x.shape[2:] == (1, 12, 12)
    ref = reference_results(tasks, cfg)
    assert ref["accuracy"].mean() > 0.15


def test_expected_calibration_error_of_perfect_and_overconfident_predictions():
    correct = torch.tensor([[1.0, 1.0, 0.0, 0.0]])
    assert expected_calibration_error(torch.full((1, 4), 0.5, dtype=torch.float64), correct.double()).item() == pytest.approx(0)
    assert expected_calibration_error(torch.full((1, 4), 1.0, dtype=torch.float64), correct.double()).item() == pytest.approx(0.5)


def students_config(generations=4, **world):
    return PretrainConfig(objective=ObjectiveConfig(kind="students"), world=replace(TINY, tasks=2, **world),
                          es=ESConfig(population=4, generations=generations, seed=3), heldout_every=2, checkpoint_every=2, start="default")


def test_students_pretraining_resumes_bit_for_bit(tmp_path):
    cfg = students_config()
    straight, _ = pretrain(cfg, tmp_path / "straight", progress=False)
    run = Run(cfg, tmp_path / "killed")
    for _ in range(3):  # the third generation is lost with the kill (checkpoint every 2)
        run.step()
    del run
    resumed, summary = pretrain(cfg, tmp_path / "killed", progress=False)
    torch.testing.assert_close(resumed.net.flat(), straight.net.flat(), rtol=0, atol=0)
    assert "world_heldout" in summary and summary["world_heldout"]["diverged"] == 0
    rows = [json.loads(line) for line in (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()]
    assert [r["generation"] for r in rows] == [0, 1, 2, 3] and "accuracy_delta" in rows[0]


def test_students_pretraining_from_the_cli_with_a_regime(tmp_path, capsys):
    world = tmp_path / "world.toml"
    world.write_text("[world]\ntasks = 2\npoints_per_class = 20\ntest_points_per_class = 10\ndim = 8\ndepth = 1\nwidth = 16\nsteps = 10\n")
    out = tmp_path / "run"
    code = main(["pretrain", "--objective", "students", "--config", str(world), "--label-noise", "0.4", "--start", "noise-0.4-k10",
                 "--generations", "2", "--population", "4", "--out", str(out), "--quiet"])
    assert code == 0, capsys.readouterr().err
    saved = json.loads((out / "config.json").read_text())["config"]
    assert saved["world"]["label_noise"] == 0.4 and saved["objective"]["label_noise"] == 0 and saved["lossnet"]["form"] == "bounded"
    assert EDLLoss.from_file(out / "loss").metadata["config"]["start"] == "noise-0.4-k10"


def test_a_start_loss_with_another_network_is_refused(tmp_path):
    cfg = replace(students_config(), lossnet=LossNetConfig(hidden=(8,)))
    with pytest.raises(ValueError, match="another network"):
        pretrain(cfg, tmp_path, progress=False)


def test_a_prior_aware_population_scores_the_logit_adjusted_prediction():
    cfg = replace(TINY, imbalance=10.0, points_per_class=60, prior_aware=True)
    tasks = tasks_of(cfg)
    shipped = EDLLoss.pretrained()
    theta = shipped.net.flat().detach()[None]
    aware = evaluate_population(theta, shipped.net.config, tasks, cfg)
    direct = score_module(EDLLoss.pretrained(class_counts=torch.bincount(tasks.y_clean[0]).tolist(), check_inputs=False), tasks, cfg)
    assert abs(float(aware["accuracy"][0]) - direct["accuracy"]) < 0.02
    blind = evaluate_population(theta, shipped.net.config, tasks, replace(cfg, prior_aware=False))
    assert float(aware["accuracy"][0]) != float(blind["accuracy"][0])


def test_pretrain_imbalance_makes_a_prior_aware_students_run(tmp_path, capsys):
    world = tmp_path / "world.json"
    world.write_text(json.dumps({"world": {"tasks": 2, "points_per_class": 40, "test_points_per_class": 10, "dim": 8, "depth": 1,
                                           "width": 16, "steps": 10}}))
    code = main(["pretrain", "--config", str(world), "--imbalance", "10", "--start", "default", "--generations", "1",
                 "--population", "4", "--out", str(tmp_path / "run"), "--quiet"])
    assert code == 0, capsys.readouterr().err
    saved = json.loads((tmp_path / "run" / "config.json").read_text())["config"]
    assert saved["objective"]["kind"] == "students" and saved["world"]["imbalance"] == 10 and saved["world"]["prior_aware"]
    assert main(["pretrain", "--objective", "expectation", "--imbalance", "10", "--out", str(tmp_path / "no")]) == 2
    assert "needs the students objective" in capsys.readouterr().err


def test_an_ablation_in_the_students_world_reports_world_fitness(tmp_path):
    config = tmp_path / "abl.json"
    config.write_text(json.dumps({"start": "noise-0.4-k10", "lossnet": {"form": "bounded"}, "objective": {"kind": "students"},
                                  "world": {"tasks": 2, "points_per_class": 20, "test_points_per_class": 10, "dim": 8, "depth": 1,
                                            "width": 16, "steps": 10, "label_noise": 0.4}}))
    out = tmp_path / "ablation"
    assert main(["ablate", "--config", str(config), "--seeds", "0", "--arms", "chaotic", "cmaes", "--sigmas", "0.1", "--cmaes-sigmas", "0.1",
                 "--generations", "2", "--population", "4", "--levels", "0.1", "--train-levels", "0.1", "--heldout-every", "1",
                 "--threads", "1", "--out", str(out), "--quiet"]) == 0
    for arm in ("chaotic", "cmaes"):
        run = next(out.glob(f"{arm}/*/seed0"))
        summary = json.loads((run / "summary.json").read_text())
        ablation = json.loads((out / "ablation.json").read_text())
        finals = [r["final"] for g in ablation["groups"] for r in g.get("runs", []) if r["dir"].endswith(str(run.relative_to(out)))]
        assert finals and finals[0]["fitness"] == summary["world_heldout"]["fitness"] and "accuracy_delta" in finals[0]


def test_world_check_scores_the_panel_and_resumes_from_its_rows(tmp_path):
    from edloss.lab.world import PANEL, available, halves, world_check

    world = replace(TINY, tasks=2)
    result = world_check(world, ["noise-0.6"], tmp_path, repeats=1, with_ranking=False, progress=False)
    labels = [r["label"] for r in result["rows"]]
    assert labels == [a.label for a in PANEL["noise-0.6"] if available(a)]
    by = result["regimes"]["noise-0.6"]["world"]
    calibration, heldout = halves(PANEL["noise-0.6"])
    assert by["calibration"]["arms"] == [a.label for a in PANEL["noise-0.6"] if a in calibration]
    assert set(by["heldout"]["arms"]) == {a.label for a in heldout} and -1 <= by["all"]["spearman"] <= 1
    ce = next(r for r in result["rows"] if r["label"] == "ce")
    assert ce["fitness"] == pytest.approx(0, abs=1e-9)  # CE against CE's own students
    again = world_check(world, ["noise-0.6"], tmp_path, repeats=1, with_ranking=False, progress=False)
    assert [r["fitness"] for r in again["rows"]] == [r["fitness"] for r in result["rows"]]
    assert (tmp_path / "world_check.png").is_file()


def test_a_resumed_world_check_uses_the_panels_cifar_record_and_rescores_a_changed_loss(tmp_path, monkeypatch):
    """Rows of an earlier check keep their world score, never their CIFAR number (seeds land later
    and move the means), and an arm whose loss changed under the same label is scored again."""
    from edloss.lab import world as world_module

    world = replace(TINY, tasks=2)
    first = world_module.world_check(world, ["noise-0.6"], tmp_path, repeats=1, with_ranking=False, progress=False)
    arms = list(world_module.PANEL["noise-0.6"])
    i = next(j for j, a in enumerate(arms) if a.label == "gce")
    arms[i] = replace(arms[i], cifar=99.0, std=0.5, seeds=7)
    j = next(j for j, a in enumerate(arms) if a.label == "mae")
    arms[j] = replace(arms[j], spec="ce")  # the same label, another loss: CE against its own students scores 0
    monkeypatch.setitem(world_module.PANEL, "noise-0.6", arms)
    again = world_module.world_check(world, ["noise-0.6"], tmp_path, repeats=1, with_ranking=False, progress=False)
    before = {r["label"]: r for r in first["rows"]}
    after = {r["label"]: r for r in again["rows"]}
    assert (after["gce"]["cifar"], after["gce"]["cifar_std"], after["gce"]["cifar_seeds"]) == (99.0, 0.5, 7)
    assert after["gce"]["fitness"] == before["gce"]["fitness"]
    assert before["mae"]["fitness"] != pytest.approx(0, abs=1e-4) and after["mae"]["fitness"] == pytest.approx(0, abs=1e-9)


def test_world_check_long_tail_tells_the_prior_losses_the_world_counts(tmp_path):
    """In the long-tail regime the world is imbalanced and the losses that read class counts hear the
    tasks' counts: balanced softmax and logit adjustment (tau = 1) are one function and score alike,
    both differ from CE, and CE scores 0 against its own students."""
    from edloss.lab.world import REGIMES, world_check

    world = replace(TINY, tasks=2, points_per_class=120)
    result = world_check(world, ["longtail-100"], tmp_path, repeats=1, with_ranking=False, progress=False)
    assert result["world"]["imbalance"] == 1.0 and REGIMES["longtail-100"]["imbalance"] == 100  # the regime sets it, not the user's world
    by = {r["label"]: r["fitness"] for r in result["rows"]}
    assert by["ce"] == pytest.approx(0, abs=1e-9)
    assert by["balanced_softmax"] == pytest.approx(by["logit_adjusted"], abs=1e-3)  # one function; float order differs
    assert by["logit_adjusted"] != pytest.approx(0, abs=1e-4)


def test_every_panel_loss_ships_with_the_lab():
    from edloss.lab.world import PANEL, available

    missing = [a.label for arms in PANEL.values() for a in arms if not available(a)]
    assert not missing
