"""edloss.lab.ablate and edloss.lab.stats: a miniature ablation end to end, resume, refusals, statistics."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from edloss.lab import ablate as A
from edloss.lab import stats
from edloss.cli import main as cli_main
from edloss.evolve import ESConfig
from edloss.loss import EDLLoss
from edloss.lossnet import LossNetConfig
from edloss.objective import ObjectiveConfig
from edloss.pretrain import PretrainConfig

GENERATIONS = 6


def tiny_base(generations: int = GENERATIONS) -> PretrainConfig:
    """A base config whose runs take a fraction of a second."""
    return PretrainConfig(
        lossnet=LossNetConfig(hidden=(4,)),
        objective=ObjectiveConfig(classes=(2, 20), blocks=1, evals_per_block=256, min_items=16),
        es=ESConfig(population=8, parents=3, elites=1, generations=generations),
        heldout_every=2,
        checkpoint_every=2,
    )


def tiny_ablation(**overrides) -> A.AblationConfig:
    settings = dict(base=tiny_base(), sigmas=(0.05, 0.2), seeds=(0, 1), levels=(0.6, 0.99), train_levels=(0.7,),
                    smooth_window=2, heldout_smooth=2, cmaes_sigmas=(0.2,))
    settings.update(overrides)
    return A.AblationConfig(**settings)


def make_mini_ablation(out: Path) -> dict:
    """Run the miniature ablation (3 arms, 2 seeds, chaotic/Gaussian at 2 sigmas, CMA-ES at 1) in-process."""
    return A.ablate(tiny_ablation(), out, command="pytest mini ablation", jobs=0, progress=False)


@pytest.fixture(scope="module")
def mini(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("ablation")
    return out, make_mini_ablation(out)


# ---------------------------------------------------------------------- end to end
def test_layout_and_json_structure(mini: tuple[Path, dict]) -> None:
    out, summary = mini
    on_disk = json.loads((out / A.ABLATION_FILE).read_text())
    assert on_disk["format"] == A.FORMAT_NAME and on_disk["command"] == "pytest mini ablation"
    assert on_disk["status"] == {"planned": 10, "finished": 10, "unfinished": [], "missing": [], "complete": True}
    cells = [(g["arm"], g["sigma"]) for g in on_disk["groups"]]
    assert cells == [("chaotic", 0.05), ("gaussian", 0.05), ("chaotic", 0.2), ("gaussian", 0.2), ("cmaes", 0.2)]
    for arm, sigma in cells:
        for seed in (0, 1):
            run = out / arm / f"sigma{sigma:g}" / f"seed{seed}"
            assert (run / "summary.json").is_file() and (run / "loss" / "loss.json").is_file()
    assert (out / "cmaes" / "sigma0.2" / "seed0" / A.CMA_CHECKPOINT).is_file()
    for g in on_disk["groups"]:
        assert g["n"] == 2 and g["seeds"] == [0, 1]
        assert set(g["final"]) == set(A.METRICS)
        c = g["curves"]
        assert c["n"] == 2 and c["generation"] == list(range(GENERATIONS))
        assert c["heldout_generation"] == [0, 2, 4, 5]
        for key in ("train_fitness_best", "heldout_fitness_best"):
            assert set(c[key]) == {"mean", "std", "q25", "q75", "min", "max"}
            assert len(c[key]["mean"]) == len(c[key.replace("train_fitness_best", "generation").replace("heldout_fitness_best", "heldout_generation")])
        assert c["train_fitness_best_smoothed"]["mean"][0] is None  # running mean of 2 undefined at generation 0
        assert set(g["gens_to_level"]) == {"heldout_0.6", "heldout_0.99", "heldout_raw_0.6", "heldout_raw_0.99", "train_smoothed_0.7"}
        assert g["gens_to_level"]["heldout_0.99"]["reached"] == 0 and g["gens_to_level"]["heldout_0.99"]["median"] is None
    # tests: per sigma every pair of arms present there; every metric
    pairs = {(t["sigma"], t["a"], t["b"]) for t in on_disk["tests"]}
    assert pairs == {(0.05, "chaotic", "gaussian"), (0.2, "chaotic", "gaussian"), (0.2, "chaotic", "cmaes"), (0.2, "gaussian", "cmaes")}
    metrics = {t["metric"] for t in on_disk["tests"]}
    assert {"final_fitness", "final_kendall_tau", "final_gradient", "final_value_hard", "heldout_auc", "gens_to_heldout_0.6",
            "gens_to_train_smoothed_0.7"} <= metrics
    for t in on_disk["tests"]:
        assert set(t["mann_whitney"]) >= {"u", "p", "p_holm"} and 0 <= t["mann_whitney"]["p"] <= 1
        assert {"diff", "lo", "hi"} <= set(t["bootstrap"]) and t["wilcoxon_paired"]["n"] == 2
    # budgets identical across arms
    configs = {arm: json.loads((out / arm / "sigma0.2" / "seed1" / "config.json").read_text())["config"] for arm in A.ARMS}
    for arm in ("gaussian", "cmaes"):
        assert configs[arm]["objective"] == configs["chaotic"]["objective"]
        assert {k: configs[arm]["es"][k] for k in ("population", "generations", "seed", "sigma_init")} == \
            {k: configs["chaotic"]["es"][k] for k in ("population", "generations", "seed", "sigma_init")}
    assert configs["chaotic"]["es"]["sigma_final"] == pytest.approx(0.2 * tiny_base().es.sigma_final / tiny_base().es.sigma_init)


def test_statistics_come_from_the_runs(mini: tuple[Path, dict]) -> None:
    out, summary = mini
    for g in summary["groups"]:
        runs = [out / g["arm"] / f"sigma{g['sigma']:g}" / f"seed{s}" for s in g["seeds"]]
        finals = [json.loads((r / "summary.json").read_text())["heldout"]["fitness"] for r in runs]
        assert g["final"]["fitness"]["values"] == finals
        assert g["final"]["fitness"]["mean"] == pytest.approx(sum(finals) / len(finals))
        held = [[json.loads(x)["heldout_fitness_best"] for x in (r / "metrics.jsonl").read_text().splitlines()
                 if "heldout_fitness_best" in json.loads(x)] for r in runs]
        assert g["curves"]["heldout_fitness_best"]["mean"] == pytest.approx([sum(v) / len(v) for v in zip(*held)])
    t = next(t for t in summary["tests"] if t["metric"] == "final_fitness" and t["sigma"] == 0.2 and t["a"] == "chaotic" and t["b"] == "cmaes")
    a = next(g for g in summary["groups"] if g["arm"] == "chaotic" and g["sigma"] == 0.2)["final"]["fitness"]["values"]
    b = next(g for g in summary["groups"] if g["arm"] == "cmaes" and g["sigma"] == 0.2)["final"]["fitness"]["values"]
    assert t["mann_whitney"] == {**stats.mann_whitney(a, b), "p_holm": t["mann_whitney"]["p_holm"]}
    assert t["bootstrap"]["diff"] == pytest.approx(sum(a) / 2 - sum(b) / 2)


def test_generation_zero_is_shared_by_every_arm(mini: tuple[Path, dict]) -> None:
    """Same seed: the same initial population and batch, so the arms start from one point."""
    out, _ = mini
    first = {arm: json.loads((out / arm / "sigma0.2" / "seed0" / "metrics.jsonl").read_text().splitlines()[0]) for arm in A.ARMS}
    for arm in ("gaussian", "cmaes"):
        for key in ("fitness_best", "fitness_mean", "heldout_fitness_best", "classes"):
            assert first[arm][key] == first["chaotic"][key]


def test_best_losses_and_compare_command(mini: tuple[Path, dict]) -> None:
    out, summary = mini
    for arm in A.ARMS:
        info = summary["best"][arm]
        fits = [r["final"]["fitness"] for g in summary["groups"] if g["arm"] == arm for r in g["runs"]]
        assert info["heldout_fitness"] == max(fits) and info["provisional"] is False
        loss = EDLLoss.from_file(out / "best" / arm / "loss")
        assert loss.metadata["heldout_metrics"]["fitness"] == pytest.approx(info["heldout_fitness"])
        assert f"{arm}=edl:{out / 'best' / arm / 'loss'}" in summary["compare_command"]
    assert summary["compare_command"].startswith("edloss compare --losses ce ")
    assert f"--out {out / 'compare'}" in summary["compare_command"]
    assert "cmaes" in EDLLoss.from_file(out / "best" / "cmaes" / "loss").metadata["strategy"]["name"]


def test_rerun_skips_finished_runs(mini: tuple[Path, dict], monkeypatch: pytest.MonkeyPatch) -> None:
    out, summary = mini
    called = []
    monkeypatch.setattr(A, "run_task", lambda payload: called.append(payload) or pytest.fail("a finished run was redone"))
    again = A.ablate(tiny_ablation(), out, command="pytest mini ablation", jobs=0, progress=False)
    assert called == [] and again["groups"] == summary["groups"]


def test_other_config_in_the_same_folder_is_refused(mini: tuple[Path, dict]) -> None:
    out, _ = mini
    with pytest.raises(ValueError, match="different config"):
        A.ablate(tiny_ablation(base=tiny_base(generations=GENERATIONS + 1)), out, jobs=0, progress=False)


# ---------------------------------------------------------------------- kill and resume
def _rows(run: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(x).items() if k != "seconds"} for x in (run / "metrics.jsonl").read_text().splitlines()]


def test_cma_run_resumes_exactly_after_a_kill(tmp_path: Path) -> None:
    cfg = A.run_config(tiny_base(), "cmaes", 0.2, 4)
    A.cma_pretrain(cfg, tmp_path / "whole")
    killed = A.CMARun(cfg, tmp_path / "killed")
    for _ in range(3):  # checkpoint at generation 2; generation 3's row is written after it
        killed.step()
    np_dirty = __import__("numpy").random.rand(5)  # other numpy users in between must not matter
    del killed, np_dirty
    A.cma_pretrain(cfg, tmp_path / "killed")
    assert _rows(tmp_path / "killed") == _rows(tmp_path / "whole")
    a, b = EDLLoss.from_file(tmp_path / "whole" / "loss"), EDLLoss.from_file(tmp_path / "killed" / "loss")
    torch.testing.assert_close(a.net.flat(), b.net.flat(), rtol=0, atol=0)


def test_ablation_finishes_interrupted_runs_only(mini: tuple[Path, dict], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "copy"
    shutil.copytree(mini[0], out)
    whole = out / "gaussian" / "sigma0.05" / "seed1"
    reference = _rows(whole)
    for name in ("summary.json", "checkpoint.pt"):  # killed before its end: metrics written, no checkpoint, no export
        (whole / name).unlink()
    shutil.rmtree(whole / "loss")
    before = json.loads((out / A.ABLATION_FILE).read_text())
    redone = []
    real = A.run_task
    monkeypatch.setattr(A, "run_task", lambda payload: redone.append(payload["out_dir"]) or real(payload))
    summary = A.ablate(tiny_ablation(), out, jobs=0, progress=False)
    assert redone == [str(whole)]
    assert _rows(whole) == reference and summary["status"]["complete"]
    # the resumed command's wall time is kept beside the first one's, and the runs' own times add up
    *earlier, previous, resumed = summary["invocations"]
    assert len(earlier) + 1 == len(before["invocations"]) and previous == before["invocations"][-1]
    assert previous["started"] < resumed["started"] and resumed == summary["invocation"] and resumed["seconds"] > 0
    run_times = [r["wall_seconds"] for g in summary["groups"] for r in g["runs"]]
    assert summary["run_seconds"] == pytest.approx(sum(run_times)) and len(run_times) == summary["status"]["finished"]
    # rewriting the summary alone (--summary-only) runs nothing and keeps the record of who did
    rewritten = A.write_summary(out, tiny_ablation(), materialise_best=True)
    assert rewritten["invocation"] == resumed and rewritten["invocations"] == summary["invocations"]


# ---------------------------------------------------------------------- statistics on known runs
def _fake_run(run: Path, arm: str, final: float, heldout: list[float]) -> None:
    """A finished run folder with chosen numbers (what collect() reads)."""
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"config": {}}))
    rows = []
    for g in range(GENERATIONS):
        row = {"generation": g, "fitness_best": 0.5, "fitness_mean": 0.4}
        if g % 2 == 0 or g == GENERATIONS - 1:
            row["heldout_fitness_best"] = heldout[len([r for r in rows if "heldout_fitness_best" in r])]
        rows.append(row)
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (run / "summary.json").write_text(json.dumps({"heldout": {m: final for m in A.METRICS}, "wall_seconds": 1.0}))
    (run / "loss").mkdir()
    (run / "loss" / "loss.json").write_text("{}")


def test_known_different_arms_give_a_small_p_and_identical_arms_a_large_one(tmp_path: Path) -> None:
    cfg = tiny_ablation(sigmas=(0.1,), cmaes_sigmas=(0.1,), seeds=tuple(range(6)), levels=(0.8,), heldout_smooth=1)
    for seed in range(6):
        good = [0.5, 0.85, 0.9, 0.9]  # reaches 0.8 at generation 2
        _fake_run(tmp_path / "chaotic" / "sigma0.1" / f"seed{seed}", "chaotic", 0.9 + 0.001 * seed, good)
        _fake_run(tmp_path / "cmaes" / "sigma0.1" / f"seed{seed}", "cmaes", 0.9 + 0.001 * seed, good)  # identical to chaotic
        _fake_run(tmp_path / "gaussian" / "sigma0.1" / f"seed{seed}", "gaussian", 0.7 + 0.001 * seed, [0.5, 0.6, 0.7, 0.7 + 0.2 * (seed == 0)])
    tests = {(t["a"], t["b"], t["metric"]): t for t in A.collect(tmp_path, cfg)["tests"]}
    different = tests[("chaotic", "gaussian", "final_fitness")]
    assert different["mann_whitney"]["p"] == pytest.approx(2 / 924)  # complete separation, 6 vs 6: 2 / C(12, 6)
    assert different["wilcoxon_paired"]["p"] == pytest.approx(2 / 64)  # six positive paired differences
    assert different["bootstrap"]["diff"] == pytest.approx(0.2) and different["bootstrap"]["lo"] > 0.19
    assert different["better_mean"] == "chaotic" and different["mann_whitney"]["prob_a_greater"] == 1.0
    same = tests[("chaotic", "cmaes", "final_fitness")]
    assert same["mann_whitney"]["p"] == 1.0 and same["wilcoxon_paired"]["p"] == 1.0
    assert same["bootstrap"]["diff"] == 0.0 and same["bootstrap"]["lo"] < 0 < same["bootstrap"]["hi"] and same["better_mean"] is None
    speed = tests[("chaotic", "gaussian", "gens_to_heldout_0.8")]
    assert speed["a_stats"]["mean"] == 2.0  # every chaotic seed at generation 2
    assert speed["b_stats"]["mean"] == pytest.approx((5 + 5 * GENERATIONS) / 6)  # one at generation 5, five never (= budget)
    assert speed["better_mean"] == "chaotic" and speed["mann_whitney"]["p"] < 0.01
    group = next(g for g in A.collect(tmp_path, cfg)["groups"] if g["arm"] == "gaussian")
    assert group["gens_to_level"]["heldout_0.8"] | {"description": ""} == {
        "values": [5, None, None, None, None, None], "reached": 1, "never": 5, "median": None, "mean_of_reached": 5.0, "description": ""}


def test_stats_helpers() -> None:
    assert stats.holm([0.01, 0.04, None, 0.03]) == [pytest.approx(0.03), pytest.approx(0.06), None, pytest.approx(0.06)]
    assert stats.mann_whitney([], [1.0])["p"] is None
    assert stats.mann_whitney([1.0, 1.0], [1.0, 1.0])["p"] == 1.0
    assert stats.bootstrap_mean_diff([1.0, 2.0], [None])["diff"] is None
    assert stats.describe([1.0, None, 3.0]) == {"n": 2, "mean": 2.0, "std": pytest.approx(2 ** 0.5), "median": 2.0, "min": 1.0, "max": 3.0}
    b = stats.band([[1.0, 2.0], [3.0, 4.0]])
    assert b["mean"] == [2.0, 3.0] and b["min"] == [1.0, 2.0] and b["std"] == pytest.approx([2 ** 0.5] * 2)
    assert A.running_mean([1.0, 2.0, 3.0, 4.0], 2) == [None, 1.5, 2.5, 3.5]
    assert A.generations_to_level([0, 5, 10], [0.1, None, 0.9], 0.5) == 10
    assert A.generations_to_level([0, 5], [0.1, 0.2], 0.5) is None


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="arms"):
        A.AblationConfig(arms=("chaotic", "adam"))
    with pytest.raises(ValueError, match="sigmas"):
        A.AblationConfig(sigmas=(0.1, -1.0))
    with pytest.raises(ValueError, match="repeat"):
        A.AblationConfig(seeds=(1, 1))
    default = A.AblationConfig()
    assert default.base.es.generations == A.DEFAULT_GENERATIONS and len(default.seeds) == 10 and len(default.sigmas) >= 3
    assert len(A.plan(default, Path("x"))) == 10 * (2 * 3 + 1)


# ---------------------------------------------------------------------- CLI
def test_cli_runs_a_tiny_ablation_and_prints_the_compare_command(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    real = A.ablate  # the runs in this process (jobs=0, a library-only setting): no worker start-up in a test
    monkeypatch.setattr(A, "ablate", lambda *args, **kw: real(*args, **{**kw, "jobs": 0}))
    config = tmp_path / "tiny.json"
    base = tiny_base(generations=3)
    config.write_text(json.dumps({"lossnet": {"hidden": [4]}, "objective": {"classes": [2, 20], "blocks": 1, "evals_per_block": 256},
                                  "heldout_every": 2}))
    out = tmp_path / "abl"
    argv = ["ablate", "--config", str(config), "--generations", "3", "--population", str(base.es.population), "--seeds", "0", "1",
            "--sigmas", "0.1", "--cmaes-sigmas", "0.1", "--jobs", "1", "--out", str(out)]
    assert cli_main(argv) == 0
    captured = capsys.readouterr()
    assert "edloss compare --losses ce chaotic=edl:" in captured.out and "held-out fitness" in captured.out
    saved = json.loads((out / A.ABLATION_FILE).read_text())
    assert saved["status"]["finished"] == 6 and saved["config"]["base"]["es"]["generations"] == 3
    assert saved["config"]["base"]["es"]["parents"] == 2  # derived from the population (P // 4)
    assert cli_main(argv + ["--summary-only", "--quiet"]) == 0
    assert cli_main(["ablate", "--summary-only", "--out", str(tmp_path / "none"), "--quiet"]) == 2


ORPHAN_SCRIPT = """
import multiprocessing, os, signal, sys, time
from concurrent.futures import ProcessPoolExecutor
from edloss.lab.ablate import _init_worker

if __name__ == "__main__":
    pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_init_worker, initargs=(1, os.getpid()))
    pool.submit(time.sleep, 60)
    time.sleep(float(sys.argv[1]))  # die while the worker still imports torch, or after it runs
    print(" ".join(str(p.pid) for p in multiprocessing.active_children()), flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.parametrize("die_after", [0.5, 8.0])
def test_a_killed_ablation_leaves_no_orphan_worker(tmp_path: Path, die_after: float) -> None:
    """Measured once: a pool worker spawned just before its parent was killed ran on for 40
    minutes (it armed its parent-death signal only after importing torch, too late)."""
    import os
    import subprocess
    import sys
    import time

    if not Path("/proc/self").exists():
        pytest.skip("needs /proc to see whether a process lives")
    script = tmp_path / "orphan.py"
    script.write_text(ORPHAN_SCRIPT)
    out = subprocess.run([sys.executable, str(script), str(die_after)], capture_output=True, text=True, timeout=120).stdout
    pids = [int(p) for p in out.split()]
    assert pids, "the pool started no worker"
    deadline = time.time() + 30
    alive = pids
    while alive and time.time() < deadline:
        time.sleep(0.5)
        alive = [p for p in pids if os.path.exists(f"/proc/{p}") and "Z" not in open(f"/proc/{p}/stat").read().split()[2]]
    for p in alive:
        os.kill(p, 9)
    assert not alive, f"orphan workers still running: {alive}"
