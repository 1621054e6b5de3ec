"""Long-tailed CIFAR (issue 20): the --imbalance profile and its order with the other data options,
the long-tail baselines of the loss registry against hand-computed values, the many/medium/few
split, and tiny end-to-end runs of train and compare with the per-class summary."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from _cifar_fixtures import _one_thread, tiny_cifar, tiny_config  # noqa: F401
from edloss.lab import data as D
from edloss.lab.longtail import shot_accuracy, shot_groups
from edloss.lab.losses import (BalancedSoftmax, ClassBalancedCE, LDAMDRW, LogitAdjusted, build_loss_from_spec,
                               check_class_counts, effective_number_weights, posthoc_adjusted)

# ----------------------------------------------------------------------------- the profile


def test_profile_matches_the_literature_sizes() -> None:
    """n_max 5,000 / 500 at RHO 100 and 10: the CIFAR-10-LT / CIFAR-100-LT training sets of Cao et al."""
    c10 = D.long_tail_counts(5000, 10, 100)
    assert c10 == [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50] and sum(c10) == 12406
    assert sum(D.long_tail_counts(500, 100, 100)) == 10847
    assert sum(D.long_tail_counts(5000, 10, 10)) == 20431 and sum(D.long_tail_counts(500, 100, 10)) == 19573
    assert D.long_tail_counts(7, 10, 1) == [7] * 10


@pytest.mark.parametrize("rho", [0.5, 0, -3, float("nan"), float("inf"), "100", True, None])
def test_bad_imbalance_is_refused(rho) -> None:
    with pytest.raises(ValueError, match="--imbalance must be a finite number >= 1"):
        D.check_imbalance(rho)


def test_too_steep_profile_names_the_limit() -> None:
    assert D.long_tail_counts(50, 10, 50)[-1] == 1
    with pytest.raises(ValueError, match=r"too steep.*n_max = 50.*class 9.*--imbalance <= 50"):
        D.long_tail_counts(50, 10, 51)


def test_long_tail_keeps_the_first_images_of_each_class() -> None:
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 2, 2])  # 4, 4, 5 per class: n_max 4
    idx, counts = D.long_tail_indices(labels, 3, 4)
    assert counts == [4, 2, 1]
    assert idx.tolist() == [0, 1, 2, 3, 4, 6, 9]  # class 0 all four, class 1 its first two, class 2 its first
    with pytest.raises(ValueError, match="class 2 has no image"):
        D.long_tail_indices(torch.tensor([0, 1, 0, 1]), 3, 2)


def _arrays(n_per_class: int = 30, k: int = 10) -> D.CifarArrays:
    g = torch.Generator().manual_seed(0)
    y = torch.arange(k).repeat(n_per_class)[torch.randperm(k * n_per_class, generator=g)]
    x = torch.randint(0, 256, (len(y), 3, 32, 32), dtype=torch.uint8, generator=g)
    return D.CifarArrays(x, y, x[:20], y[:20], [f"c{i}" for i in range(k)])


def test_order_validation_first_then_subset_then_long_tail() -> None:
    arrays = _arrays()
    plain = D.make_splits(arrays, val_size=50)
    cut = D.make_splits(arrays, val_size=50, imbalance=5)
    assert torch.equal(cut.val_y, plain.val_y) and torch.equal(cut.test_y, plain.test_y)  # untouched, balanced
    assert torch.equal(cut.mean, plain.mean)  # normalised as the balanced run: the stats of the whole training part
    n_max = min(plain.class_counts)
    assert cut.class_counts == D.long_tail_counts(n_max, 10, 5) and cut.imbalance == 5.0
    # the subset first (balanced: N/K per class), the profile on that pool
    sub = D.make_splits(arrays, val_size=50, train_subset=200, balanced=True, imbalance=4)
    assert sub.class_counts == D.long_tail_counts(20, 10, 4)
    balanced = D.make_splits(arrays, val_size=50, train_subset=200, balanced=True)
    per_class = {c: balanced.train_x[balanced.train_y == c] for c in range(10)}
    for c, kept in enumerate(sub.class_counts):  # each class keeps the first images of its balanced subset
        assert torch.equal(sub.train_x[sub.train_y == c], per_class[c][:kept])
    with pytest.raises(ValueError, match="needs --balanced-subset"):
        D.make_splits(arrays, val_size=50, train_subset=200, imbalance=4)
    with pytest.raises(ValueError, match="too steep"):
        D.make_splits(arrays, val_size=50, train_subset=200, balanced=True, imbalance=21)


def test_shot_groups() -> None:
    c100 = D.long_tail_counts(500, 100, 100)
    g = shot_groups(c100)
    assert (len(g["many"]), len(g["medium"]), len(g["few"])) == (35, 35, 30) and "CIFAR-100-LT" in g["rule"]
    c10 = D.long_tail_counts(5000, 10, 100)
    g = shot_groups(c10)
    assert g["many"] == [0, 1, 2] and g["medium"] == [3, 4, 5, 6] and g["few"] == [7, 8, 9] and "thirds" in g["rule"]
    acc = [1.0] * 3 + [0.5] * 4 + [0.0, 0.3, None]
    assert shot_accuracy(acc, g) == pytest.approx({"many": 1.0, "medium": 0.5, "few": 0.15})


# ----------------------------------------------------------------------------- the losses

LOGITS = torch.tensor([[2.0, 0.0, -1.0], [0.5, 1.5, 0.0]])
TARGET = torch.tensor([0, 2])
COUNTS = [100, 10, 1]


def _nll(rows: list[list[float]], target: list[int]) -> list[float]:
    """-log softmax by hand, in float64 Python."""
    return [-(r[t] - math.log(sum(math.exp(v) for v in r))) for r, t in zip(rows, target)]


def test_logit_adjusted_and_balanced_softmax_by_hand() -> None:
    log_pi = [math.log(n / 111) for n in COUNTS]
    shifted = [[z + lp for z, lp in zip(row, log_pi)] for row in LOGITS.tolist()]
    expected = sum(_nll(shifted, [0, 2])) / 2
    assert LogitAdjusted(class_counts=COUNTS)(LOGITS, TARGET).item() == pytest.approx(expected, rel=1e-6)
    assert BalancedSoftmax(class_counts=COUNTS)(LOGITS, TARGET).item() == pytest.approx(expected, rel=1e-6)
    half = [[z + 0.5 * lp for z, lp in zip(row, log_pi)] for row in LOGITS.tolist()]
    assert LogitAdjusted(0.5, COUNTS)(LOGITS, TARGET).item() == pytest.approx(sum(_nll(half, [0, 2])) / 2, rel=1e-6)


def test_class_balanced_ce_by_hand() -> None:
    beta = 0.9
    raw = [(1 - beta) / (1 - beta ** n) for n in COUNTS]
    w = [3 * r / sum(raw) for r in raw]
    assert effective_number_weights(torch.tensor(COUNTS, dtype=torch.float64), beta).tolist() == pytest.approx(w)
    nll = _nll(LOGITS.tolist(), [0, 2])
    expected = (w[0] * nll[0] + w[2] * nll[1]) / 2
    assert ClassBalancedCE(beta, COUNTS)(LOGITS, TARGET).item() == pytest.approx(expected, rel=1e-6)


def test_ldam_drw_by_hand() -> None:
    loss = LDAMDRW(max_m=0.5, s=2.0, drw=0.8, beta=0.9, class_counts=COUNTS)
    m = [n ** -0.25 for n in COUNTS]
    margin = [0.5 * x / max(m) for x in m]  # the rarest class gets the largest margin, 0.5
    assert margin[2] == pytest.approx(0.5) and loss.margins(torch.tensor(COUNTS, dtype=torch.float64)).tolist() == pytest.approx(margin)
    rows = LOGITS.tolist()
    rows[0][0] -= 2.0 * margin[0]
    rows[1][2] -= 2.0 * margin[2]
    nll = _nll(rows, [0, 2])
    loss.set_epoch(7, 10)  # before 80%: no re-weighting
    assert not loss.reweight and loss(LOGITS, TARGET).item() == pytest.approx(sum(nll) / 2, rel=1e-6)
    loss.set_epoch(8, 10)  # epoch int(0.8 * 10) = 8 (0-based) on: effective-number weights, weighted mean
    raw = [(1 - 0.9) / (1 - 0.9 ** n) for n in COUNTS]
    w = [3 * r / sum(raw) for r in raw]
    assert loss.reweight
    assert loss(LOGITS, TARGET).item() == pytest.approx((w[0] * nll[0] + w[2] * nll[1]) / (w[0] + w[2]), rel=1e-6)
    never = LDAMDRW(drw=1.0, class_counts=COUNTS)
    never.set_epoch(199, 200)
    assert not never.reweight
    loss.set_epoch(160, 200)
    assert loss.reweight  # DRW from epoch 160 of 200


def test_uniform_counts_reduce_to_ce() -> None:
    torch.manual_seed(0)
    z, y = torch.randn(16, 5), torch.randint(0, 5, (16,))
    ce = F.cross_entropy(z, y)
    uniform = [40] * 5
    for loss in (LogitAdjusted(class_counts=uniform), BalancedSoftmax(class_counts=uniform),
                 ClassBalancedCE(class_counts=uniform), LDAMDRW(max_m=0.0, class_counts=uniform)):
        if hasattr(loss, "set_epoch"):
            loss.set_epoch(9, 10)  # re-weighting on: uniform weights change nothing
        assert loss(z, y).item() == pytest.approx(ce.item(), rel=1e-5), loss
    # LDAM at uniform counts keeps its margin (the method): CE with the true logit lowered by s * max_m
    shifted = z.clone()
    shifted[torch.arange(16), y] -= 30 * 0.5
    assert LDAMDRW(class_counts=uniform)(z, y).item() == pytest.approx(F.cross_entropy(shifted, y).item(), rel=1e-5)
    assert torch.equal(posthoc_adjusted(z, uniform).argmax(1), z.argmax(1))


def test_posthoc_adjustment_favours_rare_classes() -> None:
    z = torch.tensor([[1.0, 0.5]])
    assert posthoc_adjusted(z, [100, 10]).argmax(1).item() == 1  # 1 - log(100/110) < 0.5 - log(10/110)
    assert posthoc_adjusted(z, [100, 10], tau=0.0).argmax(1).item() == 0


@pytest.mark.parametrize("counts, message", [
    ([3, 0, 1], "positive.*class 1 has 0"), ([3, -1], "positive"), ([3, float("nan")], "finite"),
    ([2.5, 3], "whole numbers"), ([4], "at least 2"), ("abc", "sequence"), ([[1, 2], [3, 4]], "one count per class"),
])
def test_bad_class_counts_are_refused(counts, message) -> None:
    with pytest.raises(ValueError, match=message):
        check_class_counts(counts)


def test_counts_must_match_and_be_given() -> None:
    with pytest.raises(ValueError, match="needs the class counts"):
        LogitAdjusted()(LOGITS, TARGET)
    with pytest.raises(ValueError, match="2 class counts for logits of 3 classes"):
        BalancedSoftmax(class_counts=[5, 6])(LOGITS, TARGET)
    loss = ClassBalancedCE()
    loss.set_class_counts(torch.tensor(COUNTS))  # a tensor works too
    assert torch.isfinite(loss(LOGITS, TARGET))


def test_registry_specs() -> None:
    assert isinstance(build_loss_from_spec("la"), LogitAdjusted)
    assert build_loss_from_spec("logit_adjusted:0.5").tau == 0.5
    assert build_loss_from_spec("cb_ce:0.99").beta == 0.99
    ldam = build_loss_from_spec("ldam_drw:drw=1,cosine_head=false,s=1")
    assert ldam.drw == 1 and ldam.cosine_head_scale is None
    assert build_loss_from_spec("ldam_drw").cosine_head_scale == 30.0
    for bad in ("logit_adjusted:tau=-1", "cb_ce:beta=1", "ldam_drw:drw=1.5", "ldam_drw:s=0", "ldam_drw:cosine_head=3"):
        with pytest.raises(ValueError):
            build_loss_from_spec(bad)
    for spec in ("logit_adjusted", "balanced_softmax", "cb_ce", "ldam_drw"):  # gradients flow
        loss = build_loss_from_spec(spec)
        loss.set_class_counts(COUNTS)
        z = LOGITS.clone().requires_grad_()
        loss(z, TARGET).backward()
        assert torch.isfinite(z.grad).all()


# ----------------------------------------------------------------------------- end to end


def test_train_long_tail_records_counts_groups_and_posthoc(tiny_config, tmp_path: Path) -> None:
    from dataclasses import replace

    from edloss.lab.train import train

    config = replace(tiny_config, model="resnet8", balanced_subset=True, imbalance=3.0, loss="logit_adjusted")
    result = train(config, tmp_path / "la", progress=False)
    counts = D.long_tail_counts(64 // 10, 10, 3)
    assert result["class_counts"] == counts and result["num_train"] == sum(counts)
    assert result["config"]["imbalance"] == 3.0 and len(result["test_class_acc"]) == 10
    assert set(result["test_shot_acc"]) == {"many", "medium", "few"} and "thirds" in result["shot_groups"]["rule"]
    assert 0 <= result["test_acc_posthoc_la"] <= 1 and len(result["test_class_acc_posthoc_la"]) == 10
    # a balanced run records per-class accuracy and counts too, but no long-tail groups
    plain = train(replace(tiny_config, model="resnet8"), tmp_path / "plain", progress=False)
    assert sum(plain["class_counts"]) == 64 and "test_shot_acc" not in plain and len(plain["test_class_acc"]) == 10


def test_ldam_drw_gets_counts_epochs_and_a_cosine_head(tiny_config, tmp_path: Path, monkeypatch) -> None:
    from dataclasses import replace

    from edloss.lab.train import CHECKPOINT, train

    seen: list[tuple[int, int, bool]] = []
    real = LDAMDRW.set_epoch

    def spy(self, epoch, epochs):
        real(self, epoch, epochs)
        seen.append((epoch, epochs, self.reweight))

    monkeypatch.setattr(LDAMDRW, "set_epoch", spy)
    config = replace(tiny_config, model="resnet8", balanced_subset=True, imbalance=2.0, loss="ldam_drw:drw=0.5",
                     epochs=2)
    result = train(config, tmp_path, progress=False)
    assert result["status"] == "finished" and seen == [(0, 2, False), (1, 2, True)]
    model = torch.load(tmp_path / CHECKPOINT, weights_only=True)["model"]
    assert "fc.weight" in model and "fc.bias" not in model  # the cosine classifier
    assert "CosineLinear" not in result["loss"] and "s=30.0" in result["loss"]


def test_compare_long_tail_summary_and_report(tiny_config, tmp_path: Path) -> None:
    from dataclasses import replace

    from edloss.lab import compare as C
    from edloss.lab.report import build_report

    recipe = replace(tiny_config, model="resnet8", balanced_subset=True, imbalance=3.0)
    summary = C.compare(recipe, ["ce", "bs=balanced_softmax"], [0], tmp_path / "grid", progress=False)
    rows = {r["label"]: r for r in summary["rows"]}
    assert rows["ce"]["many_mean"] is not None and rows["ce"]["posthoc_test_mean"] is not None
    md = (tmp_path / "grid" / "summary.md").read_text()
    assert "imbalance 3 (class c keeps" in md and "Split: thirds of the 10 classes" in md
    assert "| ce + post-hoc LA (reference) | 1 |" in md and "| bs | 1 |" in md
    png = (tmp_path / "grid" / "per_class_accuracy.png").read_bytes()
    assert png[:4] == b"\x89PNG"
    report = build_report([tmp_path / "grid"], tmp_path / "report", progress=False)
    assert "per_class_accuracy.png" in report["figures"]
    assert "post-hoc LA (reference)" in (tmp_path / "report" / "report.md").read_text()


@pytest.mark.parametrize("extra, message", [
    (["--imbalance", "0.5"], "--imbalance must be a finite number >= 1"),
    (["--imbalance", "nan"], "--imbalance must be a finite number >= 1"),
    (["--imbalance", "3"], "needs --balanced-subset"),
    (["--imbalance", "7", "--balanced-subset"], "too steep: the pool has n_max = 6"),
    (["--imbalance", "40", "--train-subset", "200", "--balanced-subset"], "too steep"),  # 200 of 288: n_max 20
])
def test_cli_refuses_bad_imbalance_before_any_work(extra, message, tiny_cifar, tmp_path: Path, capsys) -> None:
    from edloss.cli import main

    for command in ("train", "compare"):
        out = tmp_path / command
        argv = [command, "--out", str(out), "--data-dir", str(tiny_cifar), "--epochs", "1", "--train-subset", "64",
                "--val-size", "32", "--device", "cpu", "--quiet", "--threads", "1", *extra]
        if command == "compare":
            argv += ["--losses", "ce", "--seeds", "0"]
        assert main(argv) != 0
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"edloss {command}: error: ") and message in err[0], err
        assert not out.exists()


def test_full_training_part_too_steep_is_caught_from_the_labels(tiny_cifar, tmp_path: Path) -> None:
    """Without a subset n_max comes from the data: checked before the run folder is made."""
    from edloss.lab.train import TrainConfig, train

    labels = D.load_cifar("cifar10", tiny_cifar).train_y[:-32]
    n_max = int(torch.bincount(labels, minlength=10).min())
    config = TrainConfig(model="resnet8", data_dir=str(tiny_cifar), val_size=32, imbalance=n_max + 1, device="cpu")
    with pytest.raises(ValueError, match=f"n_max = {n_max}"):
        train(config, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_real_cifar10_lt_is_the_literature_training_set() -> None:
    """The real CIFAR-10 without a validation split: n_max 5,000, the 12,406 images of CIFAR-10-LT at 100;
    with the default 5,000 validation images, n_max is the smallest class count left."""
    from _cifar_fixtures import shared_data_dir

    root = shared_data_dir()
    if root is None:
        pytest.skip("real CIFAR-10 not found in ../shared/data or $EDLOSS_DATA")
    counts = D.check_imbalance_feasible("cifar10", root, 0, None, False, 0, 100)
    assert counts == [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
    left = torch.bincount(D.load_cifar("cifar10", root).train_y[:45000], minlength=10)
    assert D.check_imbalance_feasible("cifar10", root, 5000, None, False, 0, 100) == D.long_tail_counts(int(left.min()), 10, 100)


def test_inspect_sets_the_long_tail_losses_beside_a_loss_at_balanced_counts(capsys):
    """A shape has no training set: the long-tail losses are told balanced counts, where logit
    adjustment is CE (same values), instead of failing for want of counts."""
    from edloss.cli import main

    assert main(["inspect", "default", "--beside", "logit_adjusted", "ldam_drw", "--classes", "10"]) == 0
    table = capsys.readouterr().out.split("loss value by p_y at K = 10:")[1]
    row = next(line.split() for line in table.splitlines() if line.strip().startswith("0.5 "))
    assert abs(float(row[2]) - 0.6931) < 1e-3  # logit-adjusted CE at p_y = 0.5 with balanced counts: -log 0.5
