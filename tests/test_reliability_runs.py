"""Run folders under faults: two runs into one folder, kills, torn lines, --fresh, bad --out, full
disks, and configuration errors that must name the key before any work starts."""

from __future__ import annotations

import errno
import json
import os
import pathlib
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from edloss.cli import main
from edloss.files import RunFolderBusy, RunLock
from edloss.lab import ablate as A
from edloss.lab import report as R
from edloss.pretrain import RUN_FILES, Run, pretrain

PYTHON = sys.executable
# A real `edloss` process that has done its imports and waits for a line on stdin before running
# main(argv): the second run then starts within milliseconds, without racing torch's import time.
PRIMED = "import sys; from edloss.cli import build_parser, main; build_parser(); sys.stdin.readline(); sys.exit(main(sys.argv[1:]))"


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]


def _lines_written(out: Path) -> int:
    """Complete metric lines so far, safe while the run is appending one."""
    path = out / "metrics.jsonl"
    return path.read_bytes().count(b"\n") if path.is_file() else 0


def _write_config(path: Path, generations: int, seed: int = 7, checkpoint_every: int = 10) -> Path:
    path.write_text(json.dumps({"objective": {"classes": [2, 50], "evals_per_block": 512, "min_items": 16},
                                "es": {"population": 16, "parents": 4, "elites": 2, "generations": generations, "seed": seed},
                                "heldout_every": 10, "checkpoint_every": checkpoint_every}))
    return path


def _start_pretrain(config: Path, out: Path, *extra: str) -> subprocess.Popen:
    argv = [PYTHON, "-m", "edloss", "pretrain", "--config", str(config), "--out", str(out), "--quiet", "--threads", "1", *extra]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())


def _wait_for(condition, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"the run ended early ({proc.returncode}): {proc.stderr.read()}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("timed out waiting for the run")
        time.sleep(0.05)


# ---------------------------------------------------------------------- 1. one run per folder
def test_a_second_pretrain_into_a_busy_folder_is_refused_and_the_first_is_untouched(tmp_path: Path) -> None:
    generations = 100  # ~3 s of generations: the first is still running when the (already imported) second starts
    config, out = _write_config(tmp_path / "c.json", generations), tmp_path / "run"
    other = _write_config(tmp_path / "other.json", generations, seed=8)
    second = subprocess.Popen([PYTHON, "-c", PRIMED, "pretrain", "--config", str(other), "--out", str(out), "--fresh", "--quiet"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    first = _start_pretrain(config, out)
    try:
        _wait_for(lambda: _lines_written(out) >= 3, first)
        start = time.monotonic()
        _, err = second.communicate("go\n", timeout=60)
        assert time.monotonic() - start < 10
        assert first.poll() is None, "the first run ended before the second tried: the test proved nothing"
        assert second.returncode == 2, err
        assert "in use" in err and f"pid {first.pid}" in err and len(err.strip().splitlines()) == 1
        assert first.wait(timeout=300) == 0, first.stderr.read()
    finally:
        for proc in (first, second):
            if proc.poll() is None:
                proc.kill()
    rows = _rows(out)
    assert [r["generation"] for r in rows] == list(range(generations))  # one row per generation, none doubled
    assert json.loads((out / "config.json").read_text())["seed"] == 7  # --fresh --seed 8 deleted and wrote nothing
    assert json.loads((out / "summary.json").read_text())["seed"] == 7


def test_run_holds_its_folder_until_closed(tmp_path: Path, tiny_pretrain_config) -> None:
    run = Run(tiny_pretrain_config, tmp_path)
    with pytest.raises(RunFolderBusy, match="in use by another pretraining run"):
        Run(tiny_pretrain_config, tmp_path, fresh=True)
    assert (tmp_path / "config.json").is_file()  # the refused --fresh removed nothing
    run.close()
    Run(tiny_pretrain_config, tmp_path).close()


def test_ablation_holds_its_folder_for_its_whole_life(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    from test_ablate import tiny_ablation

    out = tmp_path / "abl"
    seen = []

    def probe(payload: dict) -> dict:
        with pytest.raises(RunFolderBusy, match="in use by another ablation"):
            with RunLock(out, "ablation"):
                pass
        seen.append(payload["out_dir"])
        raise KeyboardInterrupt  # stop after the first run: the lock is what is tested

    monkeypatch.setattr(A, "run_task", probe)
    with pytest.raises(KeyboardInterrupt):
        A.ablate(tiny_ablation(seeds=(0,), arms=("chaotic",), sigmas=(0.1,)), out, jobs=0, progress=False)
    assert len(seen) == 1
    with RunLock(out, "ablation"):  # released after the ablation ended; a second one is refused meanwhile
        assert main(["ablate", "--arms", "chaotic", "--seeds", "0", "--sigmas", "0.1", "--generations", "1", "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "in use by another ablation" in err and f"pid {os.getpid()}" in err


def test_compare_locks_the_grid_folder_not_the_run_folders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from edloss.lab import compare as C
    from edloss.lab.train import TrainConfig

    grid = tmp_path / "grid"
    trained = []

    def fake_train(config, out_dir, progress=True, **kw):
        with pytest.raises(RunFolderBusy, match="in use by another comparison grid"):
            with RunLock(grid, "comparison grid"):
                pass
        with RunLock(Path(out_dir), "training run"):  # the run folder is free for train() to lock
            trained.append(Path(out_dir))
        return {}

    monkeypatch.setattr(C, "train", fake_train)
    monkeypatch.setattr(C, "check_present", lambda *a, **k: None)  # no data here: train() is faked
    recipe = TrainConfig(model="resnet20", data_dir=str(tmp_path), epochs=1, batch_size=32, lr=0.05, val_size=32,
                         train_subset=64, eval_batch_size=64, device="cpu")
    monkeypatch.setattr(C, "write_summary", lambda *a, **k: {"runs": []})
    C.compare(recipe, ["ce"], [0, 1], grid, progress=False)
    assert trained == [grid / "resnet20" / "ce" / "seed0", grid / "resnet20" / "ce" / "seed1"]
    with RunLock(grid, "comparison grid"):
        with pytest.raises(RunFolderBusy, match="in use"):
            C.compare(recipe, ["ce"], [0], grid, progress=False)


# ---------------------------------------------------------------------- kills, torn lines, wall time
def test_kill_9_then_a_torn_line_then_resume_finishes_and_sums_wall_time(tmp_path: Path) -> None:
    generations = 60
    config, out = _write_config(tmp_path / "c.json", generations), tmp_path / "run"
    proc = _start_pretrain(config, out)
    try:
        _wait_for(lambda: (out / "checkpoint.pt").is_file() and _lines_written(out) >= 25, proc)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    saved = torch.load(out / "checkpoint.pt", weights_only=True)
    assert saved["elapsed_seconds"] > 0
    with open(out / "metrics.jsonl", "a") as f:  # a crash (or a full disk) mid-write
        f.write('{"generation": 999, "sigma": 0.1, "fitness_be')
    resumed = subprocess.run([PYTHON, "-m", "edloss", "pretrain", "--config", str(config), "--out", str(out), "--quiet", "--threads", "1"],
                             capture_output=True, text=True, env=_env(), timeout=300)
    assert resumed.returncode == 0, resumed.stderr  # the kernel dropped the dead run's lock
    assert "torn last line" in resumed.stderr and "metrics.jsonl" in resumed.stderr
    assert [r["generation"] for r in _rows(out)] == list(range(generations))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["wall_seconds"] > saved["elapsed_seconds"]  # both segments, not only the last


def test_wall_time_is_summed_over_segments_and_old_checkpoints_still_load(tmp_path: Path, tiny_pretrain_config) -> None:
    run = Run(tiny_pretrain_config, tmp_path)
    run.step()
    time.sleep(0.6)  # a slow first segment
    run.step()  # checkpoint_every = 2: saved here
    run.close()
    saved = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert saved["elapsed_seconds"] >= 0.6
    _, summary = pretrain(tiny_pretrain_config, tmp_path, progress=False)
    assert summary["wall_seconds"] >= saved["elapsed_seconds"]
    del saved["elapsed_seconds"]  # a checkpoint written before wall time was kept
    torch.save(saved, tmp_path / "checkpoint.pt")
    Run(tiny_pretrain_config, tmp_path).close()


def test_a_torn_last_line_is_dropped_and_a_damaged_middle_line_is_named(tmp_path: Path, tiny_pretrain_config,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    reference, _ = pretrain(tiny_pretrain_config, tmp_path / "straight", progress=False)
    out = tmp_path / "torn"
    run = Run(tiny_pretrain_config, out)
    for _ in range(5):
        run.step()
    run.close()
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"generation": 5, "sigma": 0.0')
    loss, _ = pretrain(tiny_pretrain_config, out, progress=False)
    assert "dropped a torn last line" in capsys.readouterr().err
    assert [r["generation"] for r in _rows(out)] == list(range(tiny_pretrain_config.es.generations))
    torch.testing.assert_close(loss.net.flat(), reference.net.flat(), rtol=0, atol=0)
    lines = (out / "metrics.jsonl").read_text().splitlines()
    lines[2] = lines[2][:20]  # damage in the middle is not a torn write: named, never skipped
    (out / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    for _ in range(2):  # the failed start released the folder's lock: the same error again, not 'in use'
        with pytest.raises(ValueError, match=r"metrics.jsonl, line 3, is damaged"):
            Run(tiny_pretrain_config, out)
    source = R.inspect_source(out)
    assert source.kind == "invalid" and "line 3" in source.status


# ---------------------------------------------------------------------- 2. --fresh and the resume hint
def test_an_interrupted_fresh_run_leaves_nothing_of_the_previous_run(tmp_path: Path, tiny_pretrain_config,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    pretrain(tiny_pretrain_config, tmp_path, progress=False)
    assert all((tmp_path / name).exists() for name in RUN_FILES)
    run = Run(tiny_pretrain_config, tmp_path, fresh=True)
    run.step()  # ... and the process dies here
    run.close()
    for name in ("loss", "loss_shape.png", "summary.json", "metrics.csv", "checkpoint.pt"):
        assert not (tmp_path / name).exists(), name
    assert len(_rows(tmp_path)) == 1
    assert main(["inspect", str(tmp_path)]) == 2  # no exported loss: nothing old passes for this run's
    assert "no exported loss yet" in capsys.readouterr().err


def test_report_resume_hint_drops_fresh(tmp_path: Path, tiny_pretrain_config) -> None:
    out = tmp_path / "half"
    command = f"edloss pretrain --fresh --seed 3 --out '{out}'"
    run = Run(tiny_pretrain_config, out, command=command)
    for _ in range(3):
        run.step()
    run.close()
    R.build_report([out], tmp_path / "rep", progress=False)
    md = (tmp_path / "rep" / "report.md").read_text()
    assert f"resume with: `edloss pretrain --seed 3 --out {out}`" in md
    assert R.resume_command("edloss pretrain --fresh --out 'a b'") == "edloss pretrain --out 'a b'"


# ---------------------------------------------------------------------- 4. output folders
def _bad_outs(tmp_path: Path) -> list[tuple[str, str]]:
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    return [(str(a_file), "exists and is not a folder"), (str(a_file / "sub"), "which is a file"),
            ("/dev/null", "exists and is not a folder"), ("", "--out is empty")]


@pytest.mark.parametrize("command", ["pretrain", "ablate", "report", "compare"])
def test_a_bad_out_is_one_line_before_any_work(command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                               monkeypatch: pytest.MonkeyPatch, tiny_pretrain_config) -> None:
    cwd = tmp_path / "cwd"  # `--out ''` used to write into the current folder
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    source = tmp_path / "done"
    if command == "report":
        pretrain(tiny_pretrain_config, source, progress=False)
    extra = {"pretrain": ["--generations", "2", "--population", "6"], "ablate": ["--generations", "1", "--seeds", "0"],
             "report": [str(source)], "compare": ["--losses", "ce", "--seeds", "0", "--data-dir", str(tmp_path)]}[command]
    capsys.readouterr()
    for out, message in _bad_outs(tmp_path):
        assert main([command, *extra, "--out", out, "--quiet"]) == 2, out
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1 and err.startswith(f"edloss {command}: error:"), err
    assert list(cwd.iterdir()) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_out_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    locked = tmp_path / "ro"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        assert main(["pretrain", "--generations", "2", "--population", "6", "--out", str(locked), "--quiet"]) == 2
        assert "not writable" in capsys.readouterr().err
    finally:
        locked.chmod(0o700)


def test_a_full_disk_leaves_no_temporary_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    real = pathlib.Path.write_bytes

    def full_disk(self: Path, data: bytes) -> int:
        if self.name.startswith(".checkpoint.pt.tmp"):
            real(self, data[: len(data) // 2])  # half written, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, data)

    monkeypatch.setattr(pathlib.Path, "write_bytes", full_disk)
    out = tmp_path / "run"
    assert main(["pretrain", "--generations", "2", "--population", "6", "--classes", "2,8", "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "No space left on device" in err and len(err.strip().splitlines()) == 1
    assert not list(out.glob(".*tmp*")) and not (out / "checkpoint.pt").exists()


# ---------------------------------------------------------------------- 5. configuration
@pytest.mark.parametrize("config, message", [
    ([{"es": {}}], "must hold an object/table with sections lossnet, objective, es"),
    ({"es": [1, 2]}, "config.es must be a table/object, got list"),
    ({"es": {"population": 16, "parents": 2, "elites": 3}}, "elites must be in [0, min(parents=2"),
    ({"es": {"parents": 4.5}}, "config.es.parents must be an integer or null, got 4.5"),
    ({"es": {"sigma_final": float("nan")}}, "sigma_final must be finite and in (0, 100], got nan"),
    ({"es": {"sigma_init": float("inf")}}, "sigma_init must be finite and in (0, 100], got inf"),
    ({"es": {"generations": 0}}, "generations must be in [1, 1e+06], got 0"),
    ({"es": {"generations": True}}, "config.es.generations must be an integer, got True"),
    ({"es": {"population": 0}}, "population must be >= 2, got 0"),
    ({"es": {"seed": "1"}}, "config.es.seed must be an integer, got '1'"),
    ({"objective": {"classes": [2, 3, 4]}}, "config.objective.classes must be a list of 2 integers, got [2, 3, 4]"),
    ({"objective": {"classes": [2.5, 4]}}, "config.objective.classes must be a list of 2 integers"),
    ({"objective": {"temperature": "warm"}}, "config.objective.temperature must be a number, got 'warm'"),
    ({"objective": {"blocks": 0}}, "blocks must be >= 1, got 0"),
    ({"objective": {"delta": float("nan")}}, "delta must be finite and >= 0"),
    ({"objective": {"expectation": {"alpha": ["a", 1]}}}, "config.objective.expectation.alpha must be a list of 2 numbers"),
    ({"objective": {"mixture": {"max_margin": float("inf")}}}, "max_margin must be finite and > 0"),
    ({"heldout_every": 2.5}, "config.heldout_every must be an integer, got 2.5"),
    ({"checkpoint_every": 0}, "checkpoint_every must be >= 1, got 0"),
])
def test_every_config_field_is_checked_before_any_work(config, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "c.json"
    path.write_text(json.dumps(config))
    out = tmp_path / "never"
    assert main(["pretrain", "--config", str(path), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()


@pytest.mark.parametrize("argv, message", [
    (["pretrain", "--classes", "2,3,4"], "--classes takes K or LO,HI (integers), got '2,3,4'"),
    (["pretrain", "--generations", "0"], "generations must be in [1, 1e+06], got 0"),
    (["pretrain", "--population", "0"], "population must be >= 2, got 0"),
    (["pretrain", "--ray-actors", "0", "--ray", "auto"], "--ray-actors must be >= 1"),
    (["ablate", "--jobs", "0"], "--jobs must be >= 1"),
    (["ablate", "--generations", "0"], "generations must be in [1, 1e+06], got 0"),
])
def test_bad_flags_name_the_flag(argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "never"
    assert main([*argv, "--out", str(out), "--quiet"]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_es_config_direct_construction_names_the_field() -> None:
    from edloss.evolve import ESConfig

    with pytest.raises(ValueError, match="parents must be an integer or null, got 4.5"):
        ESConfig(population=16, parents=4.5)
    with pytest.raises(ValueError, match="elites must be in"):
        ESConfig(population=16, parents=2, elites=3)
    assert ESConfig(population=64, parents=2).elites == 2  # the default never exceeds parents
    assert ESConfig(population=64).elites == 4


# ---------------------------------------------------------------------- 7. inspect of a damaged loss
def test_inspect_of_a_loss_with_nan_weights_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from edloss.loss import EDLLoss
    from edloss.lossnet import LossNet, LossNetConfig

    net = LossNet(LossNetConfig())
    net.load_flat(torch.full_like(net.flat(), float("nan")))
    EDLLoss(net).save(tmp_path / "loss")
    assert main(["inspect", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "non-finite weights" in err and len(err.strip().splitlines()) == 1


def test_fresh_never_deletes_files_a_run_did_not_write(tmp_path: Path, tiny_pretrain_config) -> None:
    (tmp_path / "loss").mkdir()
    (tmp_path / "loss" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="notes.txt"):
        Run(tiny_pretrain_config, tmp_path, fresh=True)
    assert (tmp_path / "loss" / "notes.txt").read_text() == "mine"
