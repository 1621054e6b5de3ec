"""Tuned comparisons (issue 33): every arm picks its learning rate on validation from one shared
grid; temperature scaling fitted on validation; --summary-only never drops finished runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from _cifar_fixtures import _one_thread, tiny_cifar, tiny_config  # noqa: F401
from edloss.cli import main as cli_main
from edloss.lab import compare as C
from edloss.lab import tuning
from edloss.lab.calibration import ece, fit_temperature, nll, temperature_scaling
from edloss.lab.train import RESULT, TrainConfig


@pytest.mark.parametrize("text, match", [
    ("0,1", "finite number > 0"), ("-1,1", "finite number > 0"), ("nan,1", "finite number > 0"),
    ("inf,2", "finite number > 0"), ("1,1", "repeats 1"), ("1", "at least two"), ("", "at least two"),
    ("a,2", "'a' is not a number"), ("0.5,,2", "not a number")])
def test_bad_lr_grids_are_refused(text: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        tuning.parse_lr_grid(text)


def test_lr_grid_sorted_and_rates_rounded() -> None:
    assert tuning.parse_lr_grid("2, 0.5,1") == [0.5, 1.0, 2.0]
    assert tuning.scaled_lr(TrainConfig(lr=0.1), 1.5) == 0.15  # not 0.15000000000000002
    assert tuning.lr_folder(0.5) == "lr0.5" and tuning.lr_folder(2.0) == "lr2"


def test_pick_prefers_best_then_nearest_one() -> None:
    assert tuning.pick({0.5: 60.0, 1.0: 61.0, 2.0: 62.0}) == 2.0
    assert tuning.pick({0.5: 62.0, 1.0: 62.0, 2.0: 62.0}) == 1.0  # a tie keeps the recipe's rate
    assert tuning.pick({0.5: 62.0, 2.0: 62.0}) == 0.5
    assert tuning.pick({0.5: 62.0, 2.0: None}) is None  # undecided until every multiplier has run
    assert tuning.flatness({0.5: 60.0, 1.0: 63.5}) == pytest.approx(3.5)
    assert tuning.at_edge(0.5, [0.5, 1.0, 2.0]) and not tuning.at_edge(1.0, [0.5, 1.0, 2.0])


def test_temperature_recovers_the_scale_of_overconfident_logits() -> None:
    """Labels drawn from softmax(z): logits 3z are over-confident by exactly T = 3."""
    g = torch.Generator().manual_seed(0)
    z = 2 * torch.randn(4000, 10, generator=g)
    y = torch.multinomial(z.softmax(1), 1, generator=g).squeeze(1)
    t = fit_temperature(3 * z, y)
    assert t == pytest.approx(3.0, rel=0.08)
    assert fit_temperature(3 * z, y) == t  # deterministic
    assert nll(3 * z, y, t) < nll(3 * z, y) and ece(3 * z, y, t) < ece(3 * z, y) / 3
    out = temperature_scaling(3 * z[:2000], y[:2000], 3 * z[2000:], y[2000:])
    assert out["temperature"] == pytest.approx(3.0, rel=0.15) and out["test_ece_ts"] < ece(3 * z[2000:], y[2000:])
    with pytest.raises(ValueError, match="logits \\(N, K\\) and labels"):
        fit_temperature(z[:0], y[:0])


def test_tuned_grid_picks_on_validation_and_reuses_the_pick(tiny_config: TrainConfig, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Path] = []
    real = C.train
    monkeypatch.setattr(C, "train", lambda config, out_dir, progress=True, **kw:
                        calls.append(Path(out_dir)) or real(config, out_dir, progress, **kw))
    summary = C.compare(tiny_config, ["ce", "f1=focal:gamma=1"], [0, 1], tmp_path, progress=False,
                        lr_grid=[0.5, 2.0])
    tuned = summary["tuning"]
    assert tuned["grid"] == [0.5, 2.0] and tuned["tune_seeds"] == [0] and tuned["base_lr"] == tiny_config.lr
    for label in ("ce", "f1"):
        entry = tuned["picks"]["resnet20"][label]
        vals = {m: 100 * json.loads((tmp_path / "resnet20" / label / f"lr{m:g}" / "seed0" / RESULT).read_text())["final_val_acc"]
                for m in (0.5, 2.0)}
        assert entry["curve"] == pytest.approx(vals) and entry["pick"] == tuning.pick(vals)
        chosen = tmp_path / "resnet20" / label / tuning.lr_folder(entry["pick"])
        result = json.loads((chosen / "seed1" / RESULT).read_text())
        assert result["config"]["lr"] == pytest.approx(tiny_config.lr * entry["pick"])
        assert {"temperature", "test_nll_ts", "test_ece_ts"} <= set(result)
        other = 2.0 if entry["pick"] == 0.5 else 0.5
        assert not (tmp_path / "resnet20" / label / tuning.lr_folder(other) / "seed1").exists()  # seed 1 only at the pick
        row = next(r for r in summary["rows"] if r["label"] == label)
        assert row["n"] == 2 and row["lr_pick"] == entry["pick"] and row["ece_ts_mean"] is not None
    assert len(calls) == 2 * 2 + 2  # 2 arms x 2 rates for seed 0, then seed 1 at each arm's pick
    md = (tmp_path / "summary.md").read_text()
    assert "Learning-rate choice" in md and "| pick | spread |" in md and "ECE after TS" in md
    assert (tmp_path / "lr_curves.png").read_bytes()[:4] == b"\x89PNG"
    calls.clear()
    C.compare(tiny_config, ["ce", "f1=focal:gamma=1"], [0, 1], tmp_path, progress=False, lr_grid=[0.5, 2.0])
    assert calls == []  # a finished tuned grid reruns nothing


def test_cli_refuses_bad_grid_before_any_work(tiny_config: TrainConfig, tmp_path: Path,
                                              capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "grid"
    base = ["compare", "--data-dir", tiny_config.data_dir, "--out", str(out), "--losses", "ce", "--seeds", "0"]
    assert cli_main(base + ["--lr-grid", "0,1,2"]) == 2
    assert "--lr-grid: every multiplier must be a finite number > 0" in capsys.readouterr().err
    assert cli_main(base + ["--tune-seeds", "0"]) == 2
    assert "--tune-seeds needs --lr-grid" in capsys.readouterr().err
    assert not out.exists()


def test_summary_only_keeps_the_grid_it_finds(tiny_config: TrainConfig, tmp_path: Path,
                                              capsys: pytest.CaptureFixture) -> None:
    """Issue 35, lost work 1: a rewrite with default flags took the default arms and wrote a table
    of dashes over a good summary; one with fewer arms dropped finished runs."""
    C.compare(tiny_config, ["ce", "f1=focal:gamma=1"], [0], tmp_path, progress=False)
    before = json.loads((tmp_path / "summary.json").read_text())
    recipe = ["--data-dir", tiny_config.data_dir, "--train-subset", "64", "--val-size", "32", "--epochs", "1",
              "--batch-size", "32", "--lr", "0.05", "--eval-batch-size", "64", "--device", "cpu"]
    assert cli_main(["compare", "--summary-only", "--out", str(tmp_path)] + recipe) == 0
    after = json.loads((tmp_path / "summary.json").read_text())
    assert [r["test_mean"] for r in after["rows"]] == [r["test_mean"] for r in before["rows"]]
    assert [a["label"] for a in after["arms"]] == ["ce", "f1"]
    capsys.readouterr()
    assert cli_main(["compare", "--summary-only", "--out", str(tmp_path), "--losses", "ce"] + recipe) == 2
    assert "would drop 1 finished run(s)" in capsys.readouterr().err
    assert json.loads((tmp_path / "summary.json").read_text())["rows"] == after["rows"]


def test_cosine_loss_is_the_angle_to_the_one_hot_class() -> None:
    """Barz & Denzler (2020): 1 - cos(z, e_y); blind to the logits' length."""
    from edloss.lab.losses import build_loss_from_spec

    loss = build_loss_from_spec("cosine")
    z, y = torch.tensor([[3.0, 4.0, 0.0], [0.0, 0.0, -2.0]]), torch.tensor([1, 2])
    assert loss(z, y).item() == pytest.approx(((1 - 4 / 5) + (1 + 1)) / 2)
    assert loss(10 * z, y).item() == pytest.approx(loss(z, y).item())


def test_val_every_validates_every_nth_epoch_and_the_last(tiny_config: TrainConfig, tmp_path: Path) -> None:
    from dataclasses import replace

    from edloss.lab.train import train

    result = train(replace(tiny_config, epochs=5, val_every=2), tmp_path, progress=False)
    rows = [json.loads(line) for line in (tmp_path / "epochs.jsonl").read_text().splitlines()]
    assert [r["val_acc"] is not None for r in rows] == [False, True, False, True, True]
    assert result["final_val_acc"] == rows[-1]["val_acc"] and result["best_val_epoch"] in (2, 4, 5)
    with pytest.raises(ValueError, match="--val-every must be an integer >= 1"):
        replace(tiny_config, val_every=0).validate()


def test_a_foreign_result_json_is_refused_not_described(tiny_config: TrainConfig, tmp_path: Path) -> None:
    """Issue 35 (vague errors): a result.json edloss never wrote was described against an invented
    config (every field its default); it is named as foreign instead."""
    from edloss.lab.train import train

    (tmp_path / RESULT).write_text(json.dumps({"accuracy": 0.9, "model": "mine"}))
    with pytest.raises(ValueError, match="is not an edloss training result \\(it has no 'status'\\)"):
        train(tiny_config, tmp_path, progress=False)


def test_tuned_grid_with_label_noise_and_long_tail(tiny_config: TrainConfig, tmp_path: Path) -> None:
    """--lr-grid composes with --label-noise and --imbalance: the picked runs carry both."""
    from dataclasses import replace

    recipe = replace(tiny_config, train_subset=60, balanced_subset=True, imbalance=2.0, label_noise=0.2)
    summary = C.compare(recipe, ["ce", "logit_adjusted"], [0], tmp_path, progress=False, lr_grid=[0.5, 2.0])
    for row in summary["rows"]:
        assert row["n"] == 1 and row["lr_pick"] in (0.5, 2.0)
        result = json.loads((tmp_path / "resnet20" / row["label"] / tuning.lr_folder(row["lr_pick"]) / "seed0"
                             / RESULT).read_text())
        assert result["config"]["imbalance"] == 2.0 and result["config"]["label_noise"] == 0.2
        assert result.get("test_shot_acc") is not None and result["temperature"] > 0
    assert "Learning-rate choice" in (tmp_path / "summary.md").read_text()


def test_wd_grid_parses_by_the_lr_rules_and_names_its_folders() -> None:
    assert tuning.parse_wd_grid("2,1") == [1.0, 2.0]
    with pytest.raises(ValueError, match="--wd-grid: every multiplier must be a finite number > 0"):
        tuning.parse_wd_grid("0,1")
    assert tuning.lr_folder(0.5, 1.0) == "lr0.5" and tuning.lr_folder(0.5, 2.0) == "lr0.5-wd2"
    assert tuning.scaled_wd(TrainConfig(weight_decay=5e-4), 3.0) == 0.0015
    # best first; a tie goes to the pair nearest (1, 1), then the smaller rate, then the smaller decay
    assert tuning.pick_setting({1.0: {0.5: 60.0, 2.0: 61.0}, 2.0: {0.5: 62.0, 2.0: 59.0}}) == (0.5, 2.0)
    assert tuning.pick_setting({1.0: {1.0: 62.0, 2.0: 62.0}, 2.0: {1.0: 62.0, 2.0: 62.0}}) == (1.0, 1.0)
    assert tuning.pick_setting({0.5: {1.0: 62.0}, 2.0: {1.0: 62.0}}) == (1.0, 0.5)
    assert tuning.pick_setting({1.0: {1.0: 62.0}, 2.0: {1.0: None}}) is None


def test_wd_grid_tunes_rate_and_decay_together(tiny_config: TrainConfig, tmp_path: Path,
                                               capsys: pytest.CaptureFixture) -> None:
    """Every arm trains every (rate, decay) pair for its tuning seed, picks the best on validation and
    runs its test seeds there; the pick survives --summary-only and is carried to another grid."""
    summary = C.compare(tiny_config, ["ce", "f1=focal:gamma=1"], [0, 1], tmp_path / "g", progress=False,
                        lr_grid=[0.5, 2.0], wd_grid=[1.0, 4.0])
    tuned = summary["tuning"]
    assert tuned["wd_grid"] == [1.0, 4.0] and tuned["base_weight_decay"] == tiny_config.weight_decay
    for label in ("ce", "f1"):
        entry = tuned["picks"]["resnet20"][label]
        vals = {}
        for w in (1.0, 4.0):
            for m in (0.5, 2.0):
                result = json.loads((tmp_path / "g" / "resnet20" / label / tuning.lr_folder(m, w) / "seed0"
                                     / RESULT).read_text())
                assert result["config"]["weight_decay"] == pytest.approx(tiny_config.weight_decay * w)
                assert result["config"]["lr"] == pytest.approx(tiny_config.lr * m)
                vals.setdefault(w, {})[m] = 100 * result["final_val_acc"]
        assert (entry["pick"], entry["wd_pick"]) == tuning.pick_setting(vals)
        assert entry["curve"] == pytest.approx(vals[entry["wd_pick"]])
        run = tmp_path / "g" / "resnet20" / label / tuning.lr_folder(entry["pick"], entry["wd_pick"]) / "seed1"
        assert json.loads((run / RESULT).read_text())["config"]["weight_decay"] == pytest.approx(
            tiny_config.weight_decay * entry["wd_pick"])
        row = next(r for r in summary["rows"] if r["label"] == label)
        assert row["n"] == 2 and row["wd_pick"] == entry["wd_pick"]
        assert row["weight_decay"] == pytest.approx(tiny_config.weight_decay * entry["wd_pick"])
    md = (tmp_path / "g" / "summary.md").read_text()
    assert "| ce, wd 4× |" in md and "with its weight decay from the multipliers 1, 4" in md
    assert (tmp_path / "g" / "lr_curves.png").read_bytes()[:4] == b"\x89PNG"

    recipe = ["--data-dir", tiny_config.data_dir, "--train-subset", "64", "--val-size", "32", "--epochs", "1",
              "--batch-size", "32", "--lr", "0.05", "--eval-batch-size", "64", "--device", "cpu"]
    assert cli_main(["compare", "--summary-only", "--out", str(tmp_path / "g")] + recipe) == 0
    again = json.loads((tmp_path / "g" / "summary.json").read_text())
    assert [r["test_mean"] for r in again["rows"]] == [r["test_mean"] for r in summary["rows"]]
    assert again["tuning"]["wd_grid"] == [1.0, 4.0]

    with pytest.raises(ValueError, match="tunes the weight decay too \\(--wd-grid 1,4\\): give the same --wd-grid"):
        C.compare(tiny_config, ["ce", "f1=focal:gamma=1"], [0, 1], tmp_path / "g", progress=False, lr_grid=[0.5, 2.0])
    held = C.compare(tiny_config, ["ce"], [2], tmp_path / "held", progress=False, carry_picks=tmp_path / "g")
    ce = tuned["picks"]["resnet20"]["ce"]
    result = json.loads((tmp_path / "held" / "resnet20" / "ce" / tuning.lr_folder(ce["pick"], ce["wd_pick"])
                         / "seed2" / RESULT).read_text())
    assert result["config"]["weight_decay"] == pytest.approx(tiny_config.weight_decay * ce["wd_pick"])
    assert held["rows"][0]["n"] == 1 and held["rows"][0]["wd_pick"] == ce["wd_pick"]
    capsys.readouterr()
    from dataclasses import replace
    with pytest.raises(ValueError, match="same base weight decay"):
        C.compare(replace(tiny_config, weight_decay=1e-3), ["ce"], [2], tmp_path / "held2", progress=False,
                  carry_picks=tmp_path / "g")


def test_summary_only_rewrites_a_tuned_grid(tiny_config: TrainConfig, tmp_path: Path) -> None:
    """A tuned grid's runs differ in their rate by design: the rewrite reads them as one base recipe
    (it refused them as 'different recipes' before)."""
    summary = C.compare(tiny_config, ["ce"], [0], tmp_path, progress=False, lr_grid=[0.5, 2.0])
    recipe = ["--data-dir", tiny_config.data_dir, "--train-subset", "64", "--val-size", "32", "--epochs", "1",
              "--batch-size", "32", "--eval-batch-size", "64", "--device", "cpu"]
    assert cli_main(["compare", "--summary-only", "--out", str(tmp_path)] + recipe) == 0
    again = json.loads((tmp_path / "summary.json").read_text())
    assert again["recipe"]["lr"] == tiny_config.lr and again["rows"][0]["test_mean"] == summary["rows"][0]["test_mean"]
