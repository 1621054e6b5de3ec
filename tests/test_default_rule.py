"""The rule that picks the shipped default from the calibration regimes (benchmarks/default_rule.py),
fixed before the candidates ran: worst validation gap to the best baseline, a margin to beat."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from _benchmarks import import_benchmark


@pytest.fixture()
def rule():
    pytest.importorskip("numpy")  # the lab extra, as every benchmark
    return import_benchmark("default_rule")


def test_a_candidate_ships_only_if_its_worst_gap_beats_the_defaults_by_the_margin(rule) -> None:
    gaps = {"edl": {"a": 0.5, "b": -0.7}, "edl-gain2": {"a": -0.55, "b": 1.0}, "edl-gain0.5": {"a": 0.2, "b": -0.61}}
    result = rule.verdict(gaps, margin=0.1)
    assert result["worst"] == {"edl": -0.7, "edl-gain2": -0.55, "edl-gain0.5": -0.61}
    assert result["ships"] == "edl-gain2"  # both beat -0.7 + 0.1; the larger worst gap wins
    assert rule.verdict(gaps, margin=0.2)["ships"] == "edl"  # -0.55 does not beat -0.5
    gaps["edl-gain0.5"]["b"] = None
    assert rule.verdict(gaps, margin=0.1)["ships"] == "pending"


def test_gaps_are_validation_means_over_finished_seeds_against_the_best_baseline(rule, tmp_path: Path, monkeypatch) -> None:
    from edloss.lab.regimes import Regime

    arms = ("ce", "poly1", "edl", "edl-gain2=edl:gain=2", "edl-gain0.5=edl:gain=0.5")
    monkeypatch.setattr(rule, "REGIMES", {"r": Regime("r", "calibration", "tiny", seeds=(0, 1), arms=arms),
                                          "h": Regime("h", "held-out", "tiny")})
    rows = [{"label": "ce", "spec": "ce", "n": 2, "val_mean": 50.0}, {"label": "poly1", "spec": "poly1", "n": 2, "val_mean": 52.0},
            {"label": "edl", "spec": "edl", "n": 2, "val_mean": 53.0},
            {"label": "edl-gain2", "spec": "edl:gain=2", "n": 2, "val_mean": 60.0},  # an EDL arm is no baseline
            {"label": "edl-gain0.5", "spec": "edl:gain=0.5", "n": 1, "val_mean": 51.0}]  # seeds unfinished
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "summary.json").write_text(json.dumps({"rows": rows}))
    gaps = rule.validation_gaps(tmp_path, ("edl", "edl-gain2", "edl-gain0.5"))
    assert gaps == {"edl": {"r": 1.0}, "edl-gain2": {"r": 8.0}, "edl-gain0.5": {"r": None}}
    # a baseline still running (the weight-decay check's) could become the best: every gap waits for it
    rows.append({"label": "ce-gain0.5", "spec": "ce:gain=0.5", "n": 1, "val_mean": 70.0})
    (tmp_path / "r" / "summary.json").write_text(json.dumps({"rows": rows}))
    assert rule.validation_gaps(tmp_path, ("edl",)) == {"edl": {"r": None}}
    # so does a baseline the regime runs that its summary does not list yet (added after its last call)
    rows[-1]["n"] = 2
    (tmp_path / "r" / "summary.json").write_text(json.dumps({"rows": rows}))
    assert rule.validation_gaps(tmp_path, ("edl",)) == {"edl": {"r": 53.0 - 70.0}}
    monkeypatch.setattr(rule, "REGIMES", {"r": Regime("r", "calibration", "tiny", seeds=(0, 1), arms=arms + ("ls=label_smoothing:0.1",))})
    assert rule.validation_gaps(tmp_path, ("edl",)) == {"edl": {"r": None}}


def test_carried_picks_from_a_summary_without_a_tuning_mapping_are_one_line_errors(tmp_path: Path) -> None:
    from edloss.lab.tuning import carried

    for text in ('{"tuning": null}', '{"tuning": []}', "{}", "not json"):
        (tmp_path / "summary.json").write_text(text)
        with pytest.raises(ValueError, match="holds no tuned grid's picks"):
            carried(tmp_path, tmp_path / "out")
