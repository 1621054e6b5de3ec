"""edloss.lab.report: figures and tables from a miniature ablation, pretraining runs and a compare grid; bad input."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch

from edloss.lab import report as R
from edloss.cli import main as cli_main
from edloss.pretrain import Run
from test_ablate import make_mini_ablation, tiny_base


@pytest.fixture(scope="module")
def mini(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("ablation")
    make_mini_ablation(out)
    return out


def _fake_compare(folder: Path, ablation: Path) -> None:
    """A compare grid's summary.json as edloss compare writes it (cmaes not trained yet)."""
    rows, runs = [], []
    for label, spec, acc in (("ce", "ce", 80.0), ("chaotic", f"edl:{ablation}/best/chaotic/loss", 80.6),
                             ("gaussian", f"edl:{ablation}/best/gaussian/loss", 79.5), ("cmaes", f"edl:{ablation}/best/cmaes/loss", None)):
        n = 0 if acc is None else 2
        rows.append({"model": "resnet20", "label": label, "spec": spec, "n": n, "diverged": 0, "test_mean": acc,
                     "test_std": None if acc is None else 0.4, "val_mean": acc, "val_std": None if acc is None else 0.3,
                     "wall_mean": None if acc is None else 50.0, "delta_vs_ce": None if acc is None else acc - 80.0})
        runs += [{"model": "resnet20", "label": label, "spec": spec, "seed": s, "status": "finished" if n else "missing",
                  "dir": "", "test_acc": None, "val_acc": None, "wall_seconds": None} for s in (0, 1)]
    folder.mkdir(parents=True)
    for run in runs:  # the reliability bins each finished run records
        if run["status"] == "finished":
            run_dir = folder / run["model"] / run["label"] / f"seed{run['seed']}"
            run_dir.mkdir(parents=True)
            confidence = [(i + 0.5) / 15 for i in range(15)]
            (run_dir / "result.json").write_text(json.dumps({"status": "finished", "test_reliability": {
                "count": [100] * 15, "confidence": confidence, "accuracy": [c * 0.9 for c in confidence]}}))
    (folder / "summary.json").write_text(json.dumps({"recipe": {"dataset": "cifar10", "epochs": 2, "batch_size": 128, "lr": 0.1,
                                                                "schedule": "onecycle", "train_subset": 1000},
                                                     "seeds": [0, 1], "models": ["resnet20"], "arms": [], "rows": rows, "runs": runs,
                                                     "versus": [{"model": "resnet20", "a": "chaotic", "b": "gaussian", "n_a": 2,
                                                                 "n_b": 2, "diff": 1.1, "lo": 0.3, "hi": 1.9, "mann_whitney_p": 0.33,
                                                                 "prob_a_greater": 1.0, "wilcoxon_p": 0.5, "pairs": 2, "wins": 2}]}))


def _images(md: str) -> list[str]:
    return re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)


def test_report_renders_every_figure_from_a_mini_ablation(mini: Path, tmp_path: Path) -> None:
    _fake_compare(mini / "compare", mini)  # picked up from the ablation folder by itself
    try:
        result = R.build_report([mini], tmp_path / "rep", progress=False)
    finally:
        shutil.rmtree(mini / "compare")
    md = (tmp_path / "rep" / "report.md").read_text()
    for name in ("convergence.png", "time_to_level.png", "final_metrics.png", "loss_shapes.png", "loss_heatmap.png", "reliability.png"):
        assert any(f.endswith(name) for f in result["figures"]), name
    for image in _images(md):
        png = tmp_path / "rep" / image
        assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    assert len(_images(md)) == len(result["figures"])
    assert "## Ablation" in md and "finished (10 runs)" in md
    assert "| chaotic | 0.05 | 2 |" in md and "| cmaes | 0.2 | 2 |" in md
    assert "chaotic vs gaussian" in md and "Chaotic vs Gaussian, as measured" in md
    assert "edloss compare --losses ce chaotic=edl:" in md
    # the accuracy table with delta vs CE and the synthetic fitness of each arm's loss beside it
    assert "| resnet20 | chaotic |" in md and "+0.60" in md and "-0.50" in md
    assert "Kendall τ between held-out synthetic fitness and mean test accuracy" in md
    assert "| chaotic | gaussian | 2 / 2 | +1.10 [+0.30, +1.90] | 0.33 | 1.00 | 0.5 (2/2) |" in md  # --versus, head to head
    assert "unfinished: 6 of 8 runs finished" in md  # the grid's cmaes seeds are missing
    saved = json.loads((mini / "ablation.json").read_text())  # the tables show the ablation's numbers
    for g in saved["groups"]:
        f = g["final"]["fitness"]
        assert f"| {g['arm']} | {g['sigma']:g} | {g['n']} | {f['mean']:.4f} ± {f['std']:.4f} |" in md


def test_pretraining_runs_finished_and_unfinished(tmp_path: Path, tiny_pretrain_config) -> None:
    from edloss.pretrain import pretrain

    pretrain(tiny_pretrain_config, tmp_path / "done", command="edloss pretrain --tiny", progress=False)
    half = Run(tiny_pretrain_config, tmp_path / "half", command="edloss pretrain --half")
    for _ in range(3):
        half.step()
    result = R.build_report([tmp_path / "done", tmp_path / "half"], tmp_path / "rep", progress=False)
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "finished (8 generations)" in md
    assert "unfinished: 3 of 8 generations, no exported loss yet" in md and "edloss pretrain --half" in md
    assert {"1_done_curve.png", "2_half_curve.png", "loss_shapes.png", "loss_heatmap.png"} <= set(result["figures"])
    assert "EDL done" in md or "loss_shapes.png" in md


def test_unfinished_ablation_reports_the_finished_runs(mini: Path, tmp_path: Path) -> None:
    copy = tmp_path / "abl"
    shutil.copytree(mini, copy)
    (copy / "gaussian" / "sigma0.2" / "seed1" / "summary.json").unlink()
    shutil.rmtree(copy / "cmaes" / "sigma0.2" / "seed1")
    R.build_report([copy], tmp_path / "rep", progress=False)
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "unfinished: 8 of 10 runs finished" in md
    assert "1 run(s) started but not finished" in md and "1 run(s) not started" in md
    assert "| gaussian | 0.2 | 1 |" in md and "| cmaes | 0.2 | 1 |" in md
    assert (tmp_path / "rep" / "convergence.png").is_file()


def test_bad_input_is_named_and_the_rest_is_built(mini: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli_main(["report", str(empty), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"{empty} is not a run" in err and not (empty / "report").exists()
    assert cli_main(["report", str(tmp_path / "nowhere"), "--quiet"]) == 2
    assert "does not exist" in capsys.readouterr().err
    out = tmp_path / "rep"
    assert cli_main(["report", str(mini), str(empty), "--out", str(out), "--quiet"]) == 1  # built, but something was skipped
    md = (out / "report.md").read_text()
    assert f"`{empty}` is not a run" in md and "## Ablation" in md


def test_heatmap_grid_holds_only_possible_predictions() -> None:
    _, _, logits, valid = R.heatmap_grid(k=10, n=41)
    probs = logits.double().exp()
    assert probs.sum(1).sub(1).abs().max() < 1e-5
    assert (probs[:, 1:].argmax(1) == 0).all()  # column 1 is the largest other probability
    assert int(valid.sum()) == len(logits) and 0 < int(valid.sum()) < valid.numel()
