"""edloss.lab.fitness_noise: the chaotic vs Gaussian ablation along the fitness-noise axis."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edloss.cli import main as cli_main
from edloss.lab import ablate as A
from edloss.lab import fitness_noise as F
from edloss.pretrain import heldout_set
from test_ablate import tiny_ablation, tiny_base


def test_levels_vary_the_training_blocks_and_keep_the_heldout_set() -> None:
    base = tiny_base()
    low, high = F.level_base(base, 256), F.level_base(base, 1024)
    assert (low.objective.blocks, high.objective.blocks) == (1, 4)
    assert low.objective.evals_per_block == high.objective.evals_per_block == F.BLOCK_EVALS
    a, b = heldout_set(low), heldout_set(high)
    assert [x.logits.shape for x in a] == [x.logits.shape for x in b]
    assert all((x.logits == y.logits).all() and (x.pairs == y.pairs).all() for x, y in zip(a, b))


def test_fewer_evaluations_are_measured_noisier() -> None:
    base = tiny_base()
    noisy, clean = (F.measure_fitness_noise(base, n, repeats=12) for n in (256, 4096))
    assert noisy["std"] > 1.5 * clean["std"] > 0


@pytest.mark.parametrize("levels, match", [([], "at least one"), ([0], "positive integer"), ([300], "multiple of 256"),
                                           ([256, 256], "repeats"), ([2.5], "positive integer")])
def test_bad_levels_are_refused(levels: list, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        F.check_levels(levels, tiny_base())


def test_axis_end_to_end(tmp_path: Path) -> None:
    cfg = tiny_ablation(seeds=(0, 1, 2))
    result = F.run(cfg, (256, 512), tmp_path, jobs=0, progress=False)
    assert [r["evals_per_generation"] for r in result["rows"]] == [256, 512]
    for row in result["rows"]:
        assert (tmp_path / f"evals{row['evals_per_generation']}" / A.ABLATION_FILE).is_file()
        assert row["noise"]["std"] > 0 and row["comparison"]["finished"] == 2 * 2 * 3
        sigma = row["comparison"]["sigma"]
        ablation = A.read_ablation(tmp_path / f"evals{row['evals_per_generation']}")
        means = {(g["arm"], g["sigma"]): g["final"]["fitness"]["mean"] for g in ablation["groups"]}
        for arm in A.ES_ARMS:  # each arm at its own best sigma
            assert means[(arm, sigma[arm])] == max(v for (a, _), v in means.items() if a == arm)
        fitness = next(t for t in row["comparison"]["tests"] if t["metric"] == "fitness")
        assert fitness["chaotic"]["n"] == 3 and 0 <= fitness["mann_whitney"]["p"] <= fitness["mann_whitney"]["p_holm"] <= 1
        assert {t["metric"] for t in row["comparison"]["tests"]} >= {"fitness", "value", "calibration", "heldout_0.6"}
    saved = json.loads((tmp_path / F.SUMMARY_FILE).read_text())
    assert saved["rows"] == json.loads(json.dumps(result["rows"]))
    assert (tmp_path / F.FIGURE_FILE).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "evals/gen" in F.format_table(result)


def test_cli_refuses_cmaes_and_bad_levels(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["ablate", "--evals-per-generation", "256", "--arms", "chaotic", "cmaes", "--out", str(tmp_path / "a")]) != 0
    assert "drop cmaes" in capsys.readouterr().err
    assert cli_main(["ablate", "--evals-per-generation", "100", "--out", str(tmp_path / "b")]) != 0
    assert "multiple of 256" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
