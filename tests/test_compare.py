"""edloss.lab.compare: the grid layout, skipping finished runs, summaries, refusals, the CLI."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch.nn.functional as F

from _cifar_fixtures import _one_thread, make_edl_checkpoint, tiny_cifar, tiny_config  # noqa: F401
from edloss.lab import compare as C
from edloss.cli import main as cli_main
from edloss.lab.losses import LOSSES, register_loss
from edloss.lab.train import RESULT, TrainConfig


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Record every run compare() actually trains."""
    calls: list[Path] = []
    real = C.train

    def spy(config, out_dir, progress=True, **kw):
        calls.append(Path(out_dir))
        return real(config, out_dir, progress, **kw)

    monkeypatch.setattr(C, "train", spy)
    return calls


def test_grid_runs_skips_finished_and_summarises(tiny_config: TrainConfig, tmp_path: Path,
                                                 counted: list[Path]) -> None:
    losses = ["ce", "f1=focal:gamma=1"]
    summary = C.compare(tiny_config, losses, [0, 1], tmp_path, progress=False)
    expected = {tmp_path / "resnet20" / label / f"seed{s}" for label in ("ce", "f1") for s in (0, 1)}
    assert set(counted) == expected and all((d / RESULT).is_file() for d in expected)
    assert counted[:2] == [tmp_path / "resnet20" / "ce" / "seed0", tmp_path / "resnet20" / "f1" / "seed0"]

    rows = {r["label"]: r for r in summary["rows"]}
    assert rows["ce"]["n"] == 2 and rows["ce"]["delta_vs_ce"] == 0
    results = [json.loads((tmp_path / "resnet20" / "f1" / f"seed{s}" / RESULT).read_text())
               for s in (0, 1)]
    mean = 100 * sum(r["test_acc"] for r in results) / 2
    assert rows["f1"]["test_mean"] == pytest.approx(mean)
    assert rows["f1"]["delta_vs_ce"] == pytest.approx(mean - rows["ce"]["test_mean"])
    early = 100 * sum(r["best_val_test_acc"] for r in results) / 2
    assert rows["f1"]["best_val_test_mean"] == pytest.approx(early)
    last_fit = [json.loads((tmp_path / "resnet20" / "f1" / f"seed{s}" / "epochs.jsonl").read_text().splitlines()[-1])["train_acc"]
                for s in (0, 1)]
    assert rows["f1"]["train_mean"] == pytest.approx(100 * sum(last_fit) / 2)
    md = (tmp_path / "summary.md").read_text()
    assert "| seed 0 | seed 1 |" in md and f"| f1 | {100 * results[0]['test_acc']:.2f} | {100 * results[1]['test_acc']:.2f} |" in md
    assert "| f1 | `focal:gamma=1` | 2 |" in md and "Δ vs CE" in md and "±" in md and "at best val" in md
    assert json.loads((tmp_path / "summary.json").read_text())["rows"] == summary["rows"]
    png = (tmp_path / "val_accuracy.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000

    counted.clear()
    C.compare(tiny_config, losses, [0, 1], tmp_path, progress=False)
    assert counted == []  # everything finished: nothing retrained
    (tmp_path / "resnet20" / "f1" / "seed1" / RESULT).unlink()
    C.compare(tiny_config, losses, [0, 1], tmp_path, progress=False)
    assert counted == [tmp_path / "resnet20" / "f1" / "seed1"]


def test_half_finished_run_resumes(tiny_config: TrainConfig, tmp_path: Path, counted) -> None:
    config = replace(tiny_config, epochs=2)
    run_dir = tmp_path / "resnet20" / "ce" / "seed0"
    C.train(config, run_dir, progress=False, stop_after=1)
    C.compare(config, ["ce"], [0], tmp_path, progress=False)
    lines = (run_dir / "epochs.jsonl").read_text().splitlines()
    assert len(lines) == 2 and json.loads((run_dir / RESULT).read_text())["epochs_completed"] == 2


def test_grid_with_another_recipe_is_refused(tiny_config: TrainConfig, tmp_path: Path) -> None:
    C.compare(tiny_config, ["ce"], [0], tmp_path, progress=False)
    with pytest.raises(ValueError, match=r"resnet20/ce/seed0: lr: 0.05 in the saved run, 0.1 now"):
        C.compare(replace(tiny_config, lr=0.1), ["ce"], [0], tmp_path, progress=False)


def test_arms_are_checked_before_training(tiny_config: TrainConfig, tmp_path: Path,
                                          counted) -> None:
    with pytest.raises(ValueError, match="duplicate loss labels"):
        C.compare(tiny_config, ["ce", "ce"], [0], tmp_path, progress=False)
    with pytest.raises(FileNotFoundError, match="edl-x=edl:"):
        C.compare(tiny_config, ["ce", f"edl-x=edl:{tmp_path / 'nope'}"], [0], tmp_path,
                  progress=False)
    assert counted == []


def test_diverged_run_is_recorded_and_the_grid_goes_on(tiny_config: TrainConfig,
                                                       tmp_path: Path) -> None:
    import torch

    class Nan(torch.nn.Module):
        def forward(self, logits, target):
            return F.cross_entropy(logits, target) * math.nan

    register_loss("always_nan", Nan)
    try:
        summary = C.compare(tiny_config, ["always_nan", "ce"], [0], tmp_path, progress=False)
    finally:
        LOSSES.pop("always_nan")
    rows = {r["label"]: r for r in summary["rows"]}
    assert rows["always_nan"]["diverged"] == 1 and rows["always_nan"]["n"] == 0
    assert rows["ce"]["n"] == 1
    assert "0 (+1 diverged)" in (tmp_path / "summary.md").read_text()


def test_cli_compare_two_models_and_edl_arm(tiny_config: TrainConfig, tmp_path: Path,
                                            capsys: pytest.CaptureFixture) -> None:
    ckpt = make_edl_checkpoint(tmp_path / "loss")
    out = tmp_path / "grid"
    args = ["compare", "--data-dir", tiny_config.data_dir, "--epochs", "1", "--batch-size", "32",
            "--val-size", "32", "--train-subset", "64", "--eval-batch-size", "64",
            "--device", "cpu", "--out", str(out), "--quiet", "--seeds", "0",
            "--models", "resnet20", "resnet32", "--losses", "ce", f"edl-rand=edl:{ckpt}"]
    assert cli_main(args) == 0
    printed = capsys.readouterr().out
    assert "## resnet32" in printed and "| edl-rand |" in printed
    assert (out / "resnet32" / "edl-rand" / "seed0" / RESULT).is_file()
    assert cli_main(args + ["--summary-only"]) == 0


def test_delta_vs_ce_is_paired_over_common_seeds() -> None:
    """CE with 5 seeds, a loss with 3: only seeds 0-2 pair up, and the unpaired CE seeds don't move Δ."""
    def run(label: str, seed: int, acc: float, status: str = "finished") -> dict:
        return {"model": "resnet20", "label": label, "seed": seed, "status": status, "test_acc": acc}
    runs = [run("ce", s, a) for s, a in enumerate([0.50, 0.60, 0.55, 0.90, 0.90])]
    runs += [run("edl", s, a) for s, a in enumerate([0.52, 0.59, 0.58])] + [run("edl", 3, None, "diverged")]
    d = C._paired_delta(runs, "resnet20", "edl", "ce")
    assert d["delta_pairs"] == 3 and d["delta_wins"] == 2
    assert d["delta_vs_ce"] == pytest.approx((2 - 1 + 3) / 3)
    assert C._paired_delta(runs, "resnet20", "edl", None)["delta_vs_ce"] is None  # no CE arm: no Δ


def test_delta_cell_for_paired_reference_and_old_rows() -> None:
    assert C.format_delta({"delta_vs_ce": 1.07, "delta_vs_ce_std": 2.05, "delta_pairs": 5, "delta_wins": 3}) == "+1.07 ± 2.05 (3/5 seeds better)"
    assert C.format_delta({"delta_vs_ce": 0.0, "is_reference": True}) == "reference"
    assert C.format_delta({"delta_vs_ce": -0.5}) == "-0.50"  # a summary written before pairing
    assert C.format_delta({"delta_vs_ce": None}) == "—"


def test_summary_has_paired_wilcoxon_p_values_and_calibration(tmp_path: Path) -> None:
    """p-values against CE and Poly-1, paired by seed, and mean NLL / ECE per arm, from results on disk."""
    accuracies = {"ce": [0.50, 0.52, 0.49, 0.51, 0.50, 0.53], "poly1": [0.51, 0.53, 0.50, 0.52, 0.52, 0.54],
                  "edl": [0.55, 0.56, 0.54, 0.57, 0.55, 0.58]}
    for label, values in accuracies.items():
        for seed, acc in enumerate(values):
            run = tmp_path / "resnet20" / label / f"seed{seed}"
            run.mkdir(parents=True)
            (run / RESULT).write_text(json.dumps({"status": "finished", "test_acc": acc, "final_val_acc": acc,
                                                  "wall_seconds": 1.0, "test_nll": 1.5, "test_ece": 0.05}))
    arms = C.parse_arms(list(accuracies))
    summary = C.collect(tmp_path, TrainConfig(), arms, list(range(6)), ["resnet20"])
    edl = next(r for r in summary["rows"] if r["label"] == "edl")
    assert edl["wins_vs_ce"] == 6 and edl["pairs_vs_ce"] == 6 and edl["wilcoxon_p_vs_ce"] == pytest.approx(0.03125)
    assert edl["wins_vs_poly1"] == 6 and edl["wilcoxon_p_vs_poly1"] == pytest.approx(0.03125)
    assert edl["nll_mean"] == pytest.approx(1.5) and edl["ece_mean"] == pytest.approx(5.0)
    table = C.render_markdown(summary)
    assert "p = 0.0312 (6/6 better)" in table and "ECE (%)" in table


def test_seed_field_gives_every_seed_its_own_loss(tiny_config: TrainConfig, tmp_path: Path, counted) -> None:
    """``{seed}`` in a spec: seed k trains with loss k (recorded in its run's config); a seed whose
    loss is missing is named before anything trains."""
    for seed in (0, 1):
        make_edl_checkpoint(tmp_path / f"pre-seed{seed}" / "loss")
    arm = f"per-seed=edl:{tmp_path}/pre-seed{{seed}}/loss"
    with pytest.raises(FileNotFoundError, match=r"pre-seed2/loss"):
        C.compare(tiny_config, [arm], [0, 1, 2], tmp_path / "grid", progress=False)
    assert counted == []
    summary = C.compare(tiny_config, [arm], [0, 1], tmp_path / "grid", progress=False)
    for seed in (0, 1):
        saved = json.loads((tmp_path / "grid" / "resnet20" / "per-seed" / f"seed{seed}" / RESULT).read_text())
        assert saved["config"]["loss"] == f"edl:{tmp_path}/pre-seed{seed}/loss"
    assert summary["rows"][0]["spec"] == arm.split("=", 1)[1] and summary["rows"][0]["n"] == 2


def _results_on_disk(root: Path, accuracies: dict[str, list[float]]) -> None:
    for label, values in accuracies.items():
        for seed, acc in enumerate(values):
            run = root / "resnet20" / label / f"seed{seed}"
            run.mkdir(parents=True)
            (run / RESULT).write_text(json.dumps({"status": "finished", "test_acc": acc, "final_val_acc": acc,
                                                  "wall_seconds": 1.0}))


def test_versus_tests_two_arms_head_to_head(tmp_path: Path) -> None:
    """Every chaotic seed above every Gaussian one: exact Mann–Whitney p = 2 / C(10, 5), P(A > B) = 1,
    Wilcoxon over 5 pairs = 2 / 2^5; the interval brackets the difference of means."""
    _results_on_disk(tmp_path, {"chaotic": [0.60, 0.61, 0.62, 0.63, 0.64], "gaussian": [0.50, 0.51, 0.52, 0.53, 0.59]})
    arms = C.parse_arms(["chaotic", "gaussian"])
    summary = C.collect(tmp_path, TrainConfig(), arms, list(range(5)), ["resnet20"], versus=[("chaotic", "gaussian")])
    (v,) = summary["versus"]
    assert (v["a"], v["b"], v["n_a"], v["n_b"], v["pairs"], v["wins"]) == ("chaotic", "gaussian", 5, 5, 5, 5)
    assert v["diff"] == pytest.approx(9.0) and v["lo"] <= 9.0 <= v["hi"]
    assert v["mann_whitney_p"] == pytest.approx(2 / 252) and v["prob_a_greater"] == 1.0
    assert v["wilcoxon_p"] == pytest.approx(2 / 32)
    table = C.render_markdown(summary)
    assert "| chaotic | gaussian | 5 / 5 | +9.00 [" in table and "| 0.00794 | 1.00 | 0.0625 (5/5) |" in table
    assert C.render_markdown(C.collect(tmp_path, TrainConfig(), arms, list(range(5)), ["resnet20"])).count("Head to head") == 0
    assert "bf16 autocast" not in table  # the recipe line says when the CPU ran in bf16, and only then
    assert "bf16 autocast when on the CPU" in C.render_markdown(C.collect(tmp_path, TrainConfig(cpu_amp=True), arms, list(range(5)), ["resnet20"]))


def test_versus_names_arms_of_the_grid(tiny_config: TrainConfig, tmp_path: Path, counted) -> None:
    with pytest.raises(ValueError, match=r"no arm labelled chaos; the arms are ce, poly1"):
        C.compare(tiny_config, ["ce", "poly1"], [0], tmp_path, progress=False, versus=[("chaos", "ce")])
    with pytest.raises(ValueError, match="two different arms"):
        C.compare(tiny_config, ["ce", "poly1"], [0], tmp_path, progress=False, versus=[("ce", "ce")])
    assert counted == []


def test_cli_versus_in_summary_only(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    _results_on_disk(tmp_path, {"ce": [0.50, 0.52, 0.49], "edl": [0.55, 0.56, 0.54]})
    args = ["compare", "--out", str(tmp_path), "--seeds", "0", "1", "2", "--losses", "ce", "edl",
            "--summary-only", "--versus", "edl", "ce"]
    assert cli_main(args) == 0
    assert "| edl | ce | 3 / 3 | +4.67 [" in (tmp_path / "summary.md").read_text()
    assert cli_main(args[:-2] + ["edl", "nope"]) != 0
    assert "no arm labelled nope" in capsys.readouterr().err
