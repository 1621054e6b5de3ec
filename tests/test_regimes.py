"""The regime matrix (issue 33): regimes resolve and refuse bad names and budgets before work;
a tiny matrix runs end to end as tuned comparisons and summarises every arm's gap."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from _cifar_fixtures import _one_thread, tiny_cifar, tiny_config  # noqa: F401
from edloss.cli import main as cli_main
from edloss.lab import regimes as R
from edloss.lab import tuning
from edloss.lab.compare import compare
from edloss.lab.train import TrainConfig
from edloss.lab.tuning import parse_lr_grid


def test_every_regime_has_a_role_and_a_valid_recipe(tiny_cifar: Path) -> None:
    assert {r.role for r in R.REGIMES.values()} == set(R.ROLES)
    for regime in R.REGIMES.values():
        config = regime.recipe(TrainConfig(data_dir=str(tiny_cifar), device="cpu"))
        config.validate()
        assert config.dataset == regime.dataset and config.val_size == regime.val_size
        assert parse_lr_grid(regime.grid) == sorted(regime.grid)  # a valid grid, given sorted
    limited = R.REGIMES["c10-limited-50"]
    assert limited.train_images() == 500 and limited.epochs_for(128) == round(limited.steps / 4)
    assert [r.name for r in R.resolve(["calibration"])] == [r.name for r in R.REGIMES.values() if r.role == "calibration"]
    assert len(R.resolve(["all", "c10-budget"])) == len(R.REGIMES)  # each at most once


@pytest.mark.parametrize("call, match", [
    (lambda: R.resolve(["c10-bogus"]), "unknown regime 'c10-bogus'; valid: c10-budget"),
    (lambda: R.resolve([]), "no regime given"),
    (lambda: R.override(R.REGIMES["c10-budget"], steps=0), "--steps must be an integer >= 1"),
    (lambda: R.override(R.REGIMES["c100-budget"], per_class=600), r"--per-class must be an integer in \[1, 450\]"),
    (lambda: R.override(R.REGIMES["c10-budget"], per_class=0), "--per-class must be an integer in"),
])
def test_bad_regime_input_is_one_line(call, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        call()


def test_cli_refuses_before_work(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "m"
    for argv, match in [(["bogus"], "unknown regime"), (["c10-budget", "--lr-grid", "0.5,0.5"], "repeats 0.5"),
                        (["c10-budget", "--steps", "0"], "--steps must be"), (["c10-budget", "--lr-grid", "nan,1"], "> 0")]:
        assert cli_main(["regimes", *argv, "--out", str(out)]) == 2
        assert match in capsys.readouterr().err
    assert not out.exists()


def test_tiny_matrix_end_to_end(tiny_config: TrainConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tiny = R.Regime("c10-budget", "calibration", "tiny", per_class=6, epochs=1, val_size=32, seeds=(0, 1))
    monkeypatch.setattr(R, "REGIMES", {"c10-budget": tiny})
    base = TrainConfig(data_dir=tiny_config.data_dir, device="cpu", batch_size=32, eval_batch_size=64, lr=0.05)
    matrix = R.run([tiny], tmp_path, base, ["ce", "poly1", "edl"], [0.5, 2.0], progress=False)
    cells = {c["arm"]: c for c in matrix["cells"]}
    assert set(cells) == {"ce", "poly1", "edl"} and all(c["n"] == 2 and c["lr_pick"] in (0.5, 2.0) for c in cells.values())
    summary = json.loads((tmp_path / "c10-budget" / "summary.json").read_text())
    rows = {r["label"]: r for r in summary["rows"]}
    # gaps are to the best *baseline*: an EDL arm is never the yardstick, however well it did
    assert cells["poly1"]["gap_to_best_baseline"] == pytest.approx(rows["poly1"]["test_mean"] - rows["ce"]["test_mean"])
    assert cells["poly1"]["paired_n"] == 2 and cells["ce"]["best_baseline"] == "poly1"
    best = max(("ce", "poly1"), key=lambda a: rows[a]["test_mean"])
    assert cells["edl"]["best_baseline"] == best
    assert cells["edl"]["gap_to_best_baseline"] == pytest.approx(rows["edl"]["test_mean"] - rows[best]["test_mean"])
    assert summary["recipe"]["train_subset"] == 60 and summary["recipe"]["balanced_subset"]
    md = (tmp_path / "matrix.md").read_text()
    assert "## c10-budget (calibration)" in md and "| poly1 | 2 |" in md and "ECE after TS" in md
    assert (tmp_path / "matrix.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((tmp_path / "matrix.json").read_text())["cells"] == json.loads(json.dumps(matrix["cells"]))


def test_a_held_out_regime_runs_each_arm_at_the_pick_it_made_in_its_calibration_regime(
        tiny_config: TrainConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """c10-full's way: no sweep of its own, every arm at its c10-budget pick; an arm the source has
    no pick for, or a missing source, is refused before any work."""
    source = R.Regime("c10-budget", "calibration", "tiny", per_class=6, epochs=1, val_size=32, seeds=(0,))
    held = R.Regime("c10-full", "held-out", "tiny", per_class=8, epochs=1, val_size=32, seeds=(0, 1),
                    picks_from="c10-budget")
    monkeypatch.setattr(R, "REGIMES", {"c10-budget": source, "c10-full": held})
    base = TrainConfig(data_dir=tiny_config.data_dir, device="cpu", batch_size=32, eval_batch_size=64, lr=0.05)
    with pytest.raises(ValueError, match="run `edloss regimes c10-budget` there first"):
        R.run([held], tmp_path, base, ["ce"], None, progress=False)
    R.run([source], tmp_path, base, ["ce", "poly1"], [0.5, 2.0], progress=False)
    picks = json.loads((tmp_path / "c10-budget" / "summary.json").read_text())["tuning"]["picks"]["resnet20"]
    with pytest.raises(ValueError, match="no learning-rate pick for resnet20/edl: c10-full takes its rates from there; finish `edloss regimes c10-budget`"):  # up front, before any regime runs
        R.run([held], tmp_path, base, ["ce", "edl"], None, progress=False)
    with pytest.raises(ValueError, match="no learning-rate pick for resnet20/edl"):  # compare's own check
        compare(held.recipe(base), ["ce", "edl"], [0], tmp_path / "c10-full", progress=False, carry_picks=tmp_path / "c10-budget")
    assert not (tmp_path / "c10-full").exists()
    with pytest.raises(ValueError, match="--lr-grid does not apply"):
        R.run([held], tmp_path, base, ["ce"], [0.5, 2.0], progress=False)
    R.run([held], tmp_path, base, ["ce", "poly1"], None, progress=False)
    summary = json.loads((tmp_path / "c10-full" / "summary.json").read_text())
    assert summary["tuning"]["carried_from"].endswith("c10-budget")
    for arm in ("ce", "poly1"):  # only the test seeds, each at the source's pick: no sweep here
        pick = picks[arm]["pick"]
        assert sorted(p.name for p in (tmp_path / "c10-full" / "resnet20" / arm).iterdir()) == [f"lr{pick:g}"]
        assert sorted(p.name for p in (tmp_path / "c10-full" / "resnet20" / arm / f"lr{pick:g}").iterdir()) == ["seed0", "seed1"]
        row = next(r for r in summary["rows"] if r["label"] == arm)
        assert row["n"] == 2 and row["lr_pick"] == pick
    assert "Tuned elsewhere" in (tmp_path / "c10-full" / "summary.md").read_text()
    # --summary-only keeps the recorded picks and the runs' recipe, even with the source gone
    (tmp_path / "c10-budget" / "summary.json").rename(tmp_path / "moved.json")
    assert cli_main(["compare", "--summary-only", "--out", str(tmp_path / "c10-full"), "--data-dir", str(tiny_config.data_dir)]) == 0
    again = json.loads((tmp_path / "c10-full" / "summary.json").read_text())
    assert again["recipe"]["train_subset"] == 80 and again["tuning"]["picks"] == summary["tuning"]["picks"]
    assert [r["n"] for r in again["rows"]] == [2, 2]
    (tmp_path / "moved.json").rename(tmp_path / "c10-budget" / "summary.json")
    # a label that names another loss here, or another base rate, cannot take the source's pick
    with pytest.raises(ValueError, match="its pick belongs to another loss"):
        compare(held.recipe(base), ["ce", "poly1=focal:2"], [0], tmp_path / "y", progress=False,
                carry_picks=tmp_path / "c10-budget")
    with pytest.raises(ValueError, match="picked its rates at weight decay 0.0005, this grid's is 0.001"):
        compare(replace(held.recipe(base), weight_decay=1e-3), ["ce"], [0], tmp_path / "y", progress=False,
                carry_picks=tmp_path / "c10-budget")
    with pytest.raises(ValueError, match="picked multipliers of lr 0.05, this grid's lr is 0.1"):
        compare(replace(held.recipe(base), lr=0.1), ["ce"], [0], tmp_path / "y", progress=False,
                carry_picks=tmp_path / "c10-budget")
    assert not (tmp_path / "y").exists()
    # the same from `edloss compare`: carried picks exclude a grid of one's own
    assert cli_main(["compare", "--carry-picks", str(tmp_path / "c10-budget"), "--lr-grid", "0.5,2", "--losses", "ce",
                     "--out", str(tmp_path / "cli"), "--data-dir", str(tiny_config.data_dir), "--device", "cpu"]) == 2
    assert not (tmp_path / "cli").exists()


def test_gaps_are_to_the_best_baseline_even_when_an_edl_arm_leads(tmp_path: Path) -> None:
    rows, runs = [], []
    for label, spec, accs in [("ce", "ce", (0.50, 0.52)), ("poly1", "poly1", (0.55, 0.56)),
                              ("edl", "edl", (0.60, 0.61)), ("edl-gain2", "EDL:gain=2", (0.58, 0.57))]:
        rows.append({"label": label, "spec": spec, "n": 2, "test_mean": 100 * sum(accs) / 2, "test_std": 1.0,
                     "val_mean": 50.0, "lr_pick": 1.0, "lr": 0.1})
        runs += [{"label": label, "seed": i, "status": "finished", "test_acc": a} for i, a in enumerate(accs)]
    (tmp_path / "c10-budget").mkdir()
    (tmp_path / "c10-budget" / "summary.json").write_text(json.dumps({"rows": rows, "runs": runs, "tuning": {"grid": [0.5, 1, 2]}}))
    cells = {c["arm"]: c for c in R.collect_matrix(tmp_path)["cells"]}
    assert cells["ce"]["best_baseline"] == "poly1"  # not edl, the best arm of the regime
    assert cells["edl-gain2"]["best_baseline"] == "poly1" and cells["edl"]["best_baseline"] == "poly1"
    assert cells["poly1"]["best_baseline"] == "ce"
    assert cells["edl"]["gap_to_best_baseline"] == pytest.approx(60.5 - 55.5)
    assert cells["edl"]["paired_wins"] == 2 and cells["edl"]["paired_n"] == 2


def test_overview_has_a_row_per_regime_and_bolds_its_best() -> None:
    regimes = {"c10-budget": {"role": "calibration"}, "c100-budget": {"role": "calibration"}}
    cell = {"lr_pick": 0.5, "n": 3, "ece_mean": 4.0, "ece_ts_mean": 1.25}
    cells = [{**cell, "regime": "c10-budget", "arm": "ce", "test_mean": 60.0},
             {**cell, "regime": "c10-budget", "arm": "edl", "test_mean": 61.5, "lr_pick": 1.0},
             {**cell, "regime": "c100-budget", "arm": "ce", "test_mean": 23.0},
             {**cell, "regime": "c100-budget", "arm": "edl", "test_mean": None}]
    lines = R.render_overview({"regimes": regimes, "cells": cells})
    assert "| regime | role | ce | edl |" in lines
    assert "| c10-budget | calibration | 60.00 (0.5×, 3) | **61.50** (1×, 3) |" in lines
    assert "| c100-budget | calibration | **23.00** (0.5×, 3) | — |" in lines
    assert "| c10-budget | 4.00 → 1.25 | 4.00 → 1.25 |" in lines  # calibration at the same cells
    assert "| c100-budget | 4.00 → 1.25 | — |" in lines
    assert R.render_overview({"regimes": regimes, "cells": []}) == []


def test_the_long_regimes_compile_their_model_and_no_compile_turns_it_off(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    base = TrainConfig()
    assert {n for n, r in R.REGIMES.items() if r.recipe(base).compile} == {"c10-limited-250", "c100-limited", "c10-full"}
    seen: dict[str, list[bool]] = {}
    monkeypatch.setattr(R, "run", lambda regimes, *a, **k: seen.setdefault("compile", [r.recipe(base).compile for r in regimes]))
    (tmp_path / "matrix.md").write_text("")
    assert cli_main(["regimes", "c10-full", "--no-compile", "--out", str(tmp_path), "--quiet"]) == 0
    assert seen["compile"] == [False]


def test_each_regime_carries_its_arms_and_names_candidates_in_the_matrix_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`edloss regimes` alone reproduces the matrix: a regime's arms (the record's candidates and
    checks included) parse, and a candidate that does not ship is read from OUT/candidates."""
    from edloss.lab.grid import parse_arms

    for regime in R.REGIMES.values():
        arms = R.arms_for(regime, tmp_path)
        labels = [a.label for a in parse_arms(arms)]
        assert len(set(labels)) == len(labels) and "{out}" not in " ".join(arms)
    c100 = R.arms_for(R.REGIMES["c100-budget"], Path("docs/figures/regimes"))
    assert "edl-k100=edl:docs/figures/regimes/candidates/edl-k100" in c100  # as its CPU records name it
    assert R.arms_for(R.REGIMES["c100-budget"], tmp_path, ["ce"]) == ["ce"]  # --arms replaces them
    assert {"ce-gain0.5", "poly1-gain0.5"} <= {a.split("=")[0] for a in R.REGIMES["c10-budget"].arms}
    from edloss.lab.grid import _check_arms

    for regime in R.REGIMES.values():  # every panel loss a regime names ships with the lab
        panel_arms = [a for a in parse_arms(R.arms_for(regime, tmp_path)) if "/panel/" in a.spec]
        _check_arms(panel_arms, [0])
    noise = R.arms_for(R.REGIMES["c10-noise-0.4"], tmp_path)
    assert any(a.startswith("edl-students-noise-long=edl:") and a.endswith("panel/students-noise-0.4-long") for a in noise)
    # however --out is typed, a candidate's spec is the one its records hold
    monkeypatch.chdir(tmp_path)
    (tmp_path / "m").mkdir()
    assert R.arms_for(R.REGIMES["c100-limited"], tmp_path / "m")[-1] == "edl-k100=edl:m/candidates/edl-k100"
    assert R.arms_for(R.REGIMES["c100-limited"], Path("m"))[-1] == "edl-k100=edl:m/candidates/edl-k100"


def test_a_missing_candidate_is_refused_before_any_regime_runs(tiny_config: TrainConfig, tmp_path: Path) -> None:
    """`edloss regimes calibration --out FRESH`: c100-budget's candidate weights are not in FRESH, and
    that is said before c10-budget and c10-limited-50 train for hours, with the way out."""
    base = TrainConfig(data_dir=tiny_config.data_dir, device="cpu")
    with pytest.raises(FileNotFoundError, match="c100-budget: loss edl-k100=.*copy the repository's docs/figures/regimes/candidates"):
        R.run(R.resolve(["calibration"]), tmp_path / "fresh", base, None, None, progress=False)
    assert not (tmp_path / "fresh").exists()


def test_a_backfill_worker_trains_a_running_grid_from_the_end(tiny_config: TrainConfig, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """`edloss regimes R --backfill` beside the process running R: it trains R's runs last first,
    moves each into place, stops at the run that process is on, and the grid then skips what it
    finds finished; with no grid running it refuses."""
    from edloss.files import RunLock

    tiny = R.Regime("c10-budget", "calibration", "tiny", per_class=6, epochs=1, val_size=32, seeds=(0, 1),
                    arms=("ce", "poly1"), grid=(0.5, 2.0))
    monkeypatch.setattr(R, "REGIMES", {"c10-budget": tiny})
    base = TrainConfig(data_dir=tiny_config.data_dir, device="cpu", batch_size=32, eval_batch_size=64, lr=0.05)
    grid = tmp_path / "c10-budget"
    with pytest.raises(ValueError, match="no comparison is running"):
        R.run([tiny], tmp_path, base, None, None, progress=False, backfill=True)
    on = grid / "resnet20" / "poly1" / "lr0.5" / "seed0"  # the grid's process is on its second run
    on.mkdir(parents=True)
    with RunLock(grid, "comparison grid"):
        R.run([tiny], tmp_path, base, None, None, progress=False, backfill=True)
    done = sorted(str(p.parent.relative_to(grid)) for p in grid.glob("resnet20/*/*/*/result.json"))
    assert done == ["resnet20/ce/lr2/seed0", "resnet20/poly1/lr2/seed0"]  # from the end, up to the grid's run
    assert not (grid / ".backfill").exists() and not (tmp_path / "matrix.md").exists()
    on.rmdir()
    R.run([tiny], tmp_path, base, None, None, progress=False)  # the grid's own process: finishes the rest
    summary = json.loads((grid / "summary.json").read_text())
    assert all(r["n"] == 2 for r in summary["rows"])


def test_a_regime_with_a_wd_grid_tunes_rate_and_decay(tiny_config: TrainConfig, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """`edloss regimes R --wd-grid 1,2`: every arm picks a (rate, decay) pair; the matrix shows both;
    a held-out regime carrying its picks refuses a grid of its own."""
    source = R.Regime("c10-budget", "calibration", "tiny", per_class=6, epochs=1, val_size=32, seeds=(0,),
                      wd_grid=(1.0, 2.0))
    held = R.Regime("c10-full", "held-out", "tiny", per_class=6, epochs=1, val_size=32, seeds=(0,),
                    picks_from="c10-budget")
    monkeypatch.setattr(R, "REGIMES", {"c10-budget": source, "c10-full": held})
    base = TrainConfig(data_dir=tiny_config.data_dir, device="cpu", batch_size=32, eval_batch_size=64, lr=0.05)
    matrix = R.run([source], tmp_path, base, ["ce"], [0.5, 2.0], progress=False)
    cell = matrix["cells"][0]
    assert cell["wd_pick"] in (1.0, 2.0) and cell["weight_decay"] == pytest.approx(base.weight_decay * cell["wd_pick"])
    runs = sorted(p.name for p in (tmp_path / "c10-budget" / "resnet20" / "ce").iterdir())
    assert runs == ["lr0.5", "lr0.5-wd2", "lr2", "lr2-wd2"]
    assert f"wd {cell['wd_pick']:g}×" in (tmp_path / "matrix.md").read_text()
    with pytest.raises(ValueError, match="--wd-grid does not apply"):
        R.run([held], tmp_path, base, ["ce"], None, progress=False, wd_grid=[1.0, 2.0])
    R.run([held], tmp_path, base, ["ce"], None, progress=False)
    carried_run = tmp_path / "c10-full" / "resnet20" / "ce" / tuning.lr_folder(cell["lr_pick"], cell["wd_pick"])
    assert (carried_run / "seed0" / "result.json").is_file()
