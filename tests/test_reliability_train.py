"""edloss train under faults: divergence, a second run into a locked folder, a kill -9 and its
resume, a torn epochs.jsonl, bad output folders, a full disk, silent misconfiguration, and
accumulated wall time. Tiny runs (64 images, 2 steps an epoch, one thread)."""

from __future__ import annotations

import errno
import json
import math
import os
import pathlib
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from _cifar_fixtures import (REPO_ROOT, _one_thread, pretrained_edl_or_skip,  # noqa: F401
                             tiny_cifar, tiny_config)
from edloss.cli import main as cli_main
from edloss.files import RunLock
from edloss.lab.losses import LOSSES, register_loss
from edloss.lab.train import CHECKPOINT, EPOCHS, RESULT, TrainConfig, TrainingDiverged, train


def _args(config: TrainConfig, out: Path, *extra: str) -> list[str]:
    """`edloss train` arguments for ``config`` (the tiny recipe), quiet, one thread."""
    return ["train", "--data-dir", str(config.data_dir), "--epochs", str(config.epochs),
            "--batch-size", str(config.batch_size), "--val-size", str(config.val_size),
            "--train-subset", str(config.train_subset), "--eval-batch-size", str(config.eval_batch_size),
            "--lr", str(config.lr), "--device", "cpu", "--threads", "1", "--out", str(out), "--quiet",
            *extra]


def _epoch_numbers(run: Path) -> list[int]:
    return [json.loads(line)["epoch"] for line in (run / EPOCHS).read_text().splitlines()]


def _error_lines(capsys: pytest.CaptureFixture) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.strip()]


# ----------------------------------------------------------------------------- 1. divergence


@pytest.mark.parametrize("loss", ["ce", "edl"])
def test_huge_lr_is_reported_as_diverged(loss: str, tiny_config: TrainConfig, tmp_path: Path,
                                         capsys: pytest.CaptureFixture) -> None:
    """--lr 1e6 used to end 'finished' with NaN validation and test loss."""
    if loss == "edl":
        pretrained_edl_or_skip()
    config = replace(tiny_config, epochs=2)
    assert cli_main(_args(config, tmp_path, "--lr", "1e6", "--loss", loss)) == 1
    err = capsys.readouterr().err
    assert "diverged in epoch 1/2" in err and "Lower the learning rate" in err and "--lr 1e+06" in err
    result = json.loads((tmp_path / RESULT).read_text())
    assert result["status"] == "diverged" and result["diverged_epoch"] == 1 and result["test_acc"] is None
    assert not (tmp_path / CHECKPOINT).exists() and _epoch_numbers(tmp_path) == []
    assert cli_main(_args(config, tmp_path, "--lr", "1e6", "--loss", loss)) == 1  # stays diverged
    assert "--fresh" in capsys.readouterr().err


class _BlowUpAfter(torch.nn.Module):
    """Cross-entropy whose value stays finite but whose gradient is 1e38 from call ``steps`` + 1:
    the weights blow up after the last loss of the epoch was computed."""

    def __init__(self, steps: int = 3) -> None:
        super().__init__()
        self.steps, self.calls = steps, 0

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        loss = F.cross_entropy(logits, target)
        if self.calls > self.steps:
            loss = loss + 1e38 * (logits.sum() - logits.sum().detach())
        return loss


@pytest.mark.parametrize("val_size", [32, 0])
def test_finite_training_loss_but_broken_weights_diverge(val_size: int, tiny_config: TrainConfig,
                                                         tmp_path: Path) -> None:
    """The last step of epoch 2 breaks the weights: caught by validation (or, without validation,
    by the weight check or the test loss); epoch 1's checkpoint is kept."""
    register_loss("blow_up_test", _BlowUpAfter, primary="steps")
    try:
        config = replace(tiny_config, loss="blow_up_test:3", epochs=3, val_size=val_size)
        with pytest.raises(TrainingDiverged, match="epoch 2/3.*checkpoint of epoch 1.*Lower the learning rate"):
            train(config, tmp_path, progress=False)
        result = json.loads((tmp_path / RESULT).read_text())
        assert result["status"] == "diverged" and result["diverged_epoch"] == 2
        assert result["test_loss"] is None and result["epochs_completed"] == 1
        assert torch.load(tmp_path / CHECKPOINT, weights_only=True)["epoch"] == 1
        assert _epoch_numbers(tmp_path) == [1]
    finally:
        LOSSES.pop("blow_up_test")


# ----------------------------------------------------------------------------- 2. the run lock, a kill


def test_second_train_is_refused_and_a_killed_run_resumes(tiny_config: TrainConfig, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture) -> None:
    """A live run holds the folder: a second train into it exits 2 naming the holder. After a
    kill -9 the lock is gone and a rerun resumes with one line per epoch (no duplicates)."""
    config = replace(tiny_config, epochs=200)
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "src")}
    child = subprocess.Popen([sys.executable, "-m", "edloss", *_args(config, out)], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        # the epoch's line lands just before its checkpoint: wait for the checkpoint itself, or a
        # kill in between leaves a run with nothing to resume (correct, but not what is tested)
        while not (out / CHECKPOINT).is_file():
            assert child.poll() is None, child.stderr.read().decode()
            assert time.monotonic() < deadline, "the child never finished an epoch"
            time.sleep(0.1)
        assert cli_main(_args(config, out)) == 2
        lines = _error_lines(capsys)
        assert len(lines) == 1 and "in use by another edloss train" in lines[0]
        assert f"pid {child.pid}" in lines[0]
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        child.stderr.close()
    with RunLock(out):  # the kernel dropped the dead run's lock
        pass
    done = torch.load(out / CHECKPOINT, weights_only=True)["epoch"]
    assert cli_main(_args(config, out, "--stop-after", "1")) == 0
    assert _epoch_numbers(out) == list(range(1, done + 2))
    assert torch.load(out / CHECKPOINT, weights_only=True)["segments"] == 2


# ----------------------------------------------------------------------------- 3. torn epochs.jsonl


@pytest.mark.parametrize("damage", ["torn_last_line", "damaged_middle_line"])
def test_damaged_epochs_file_does_not_block_resume(damage: str, tiny_config: TrainConfig, tmp_path: Path,
                                                   capfd: pytest.CaptureFixture) -> None:
    config = replace(tiny_config, epochs=3)
    train(config, tmp_path, progress=False, stop_after=1)
    path = tmp_path / EPOCHS
    good = path.read_text()
    if damage == "torn_last_line":  # a crash mid-write of epoch 2's line (its checkpoint never landed)
        path.write_text(good + '{"epoch": 2, "train_loss": 1.2')
    else:
        path.write_text('{"epoch": 1, "trai\n' + good)
    result = train(config, tmp_path, progress=False)
    assert result["status"] == "finished" and _epoch_numbers(tmp_path) == [1, 2, 3]
    err = capfd.readouterr().err
    assert ("torn last line" in err) if damage == "torn_last_line" else ("rewriting it from the checkpoint" in err)


# ----------------------------------------------------------------------------- 4. output folders


def test_unusable_out_is_a_one_line_error(tiny_config: TrainConfig, tmp_path: Path,
                                          capsys: pytest.CaptureFixture) -> None:
    a_file = tmp_path / "file"
    a_file.write_text("x")
    for out, says in [(a_file, "exists and is not a folder"), (a_file / "run", "which is a file"),
                      (Path("/dev/null"), "exists and is not a folder")]:
        assert cli_main(_args(tiny_config, out)) == 2
        lines = _error_lines(capsys)
        assert len(lines) == 1 and lines[0].startswith("edloss train: error: --out") and says in lines[0], lines
    assert a_file.read_text() == "x"


def test_unknown_device_names_the_valid_ones(tiny_config: TrainConfig, tmp_path: Path,
                                             capsys: pytest.CaptureFixture) -> None:
    assert cli_main(_args(tiny_config, tmp_path / "run", "--device", "tpu")) == 2
    lines = _error_lines(capsys)
    assert len(lines) == 1 and "--device 'tpu'" in lines[0] and "auto, cpu, cuda, cuda:N" in lines[0]
    assert not (tmp_path / "run").exists()  # refused before any work


def test_full_disk_leaves_no_temp_file_and_resumes(tiny_config: TrainConfig, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture) -> None:
    """The checkpoint write hits ENOSPC half-way: one line naming the file and the fix, no
    temporary file left behind, and the rerun (space freed) finishes with one line per epoch."""
    real_write_bytes = pathlib.Path.write_bytes

    def full_disk(self: pathlib.Path, data: bytes) -> int:
        if CHECKPOINT not in self.name:
            return real_write_bytes(self, data)
        real_write_bytes(self, data[: len(data) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    out = tmp_path / "run"
    monkeypatch.setattr(pathlib.Path, "write_bytes", full_disk)
    assert cli_main(_args(tiny_config, out)) == 2
    lines = _error_lines(capsys)
    assert len(lines) == 1 and "No space left on device" in lines[0] and str(out / CHECKPOINT) in lines[0]
    assert "rerun the same command" in lines[0]
    assert sorted(p.name for p in out.iterdir()) == [".lock", EPOCHS]  # no .checkpoint.pt.tmp*
    monkeypatch.undo()
    assert cli_main(_args(tiny_config, out)) == 0
    assert _epoch_numbers(out) == [1] and json.loads((out / RESULT).read_text())["status"] == "finished"


# ----------------------------------------------------------------------------- 5. silent configuration


@pytest.mark.parametrize("extra, says", [
    (["--threads", "0"], "--threads must be an integer >= 1, got 0"),
    (["--stop-after", "0"], "--stop-after must be an integer >= 1"),
    (["--stop-after", "-1"], "--stop-after must be an integer >= 1"),
    (["--loss", "poly1:epsilon=-5"], "poly1 epsilon must be a number >= -1"),
    (["--lr", "nan"], "--lr must be a finite number > 0"),
    (["--lr", "inf"], "--lr must be a finite number > 0"),
    (["--weight-decay", "-0.1"], "--weight-decay must be a finite number >= 0"),
    (["--epochs", "0"], "--epochs must be an integer >= 1"),
    (["--batch-size", "1"], "--batch-size must be an integer >= 2"),
    (["--val-size", "-1"], "--val-size must be an integer >= 0"),
    (["--train-subset", "1"], "--train-subset must be an integer >= 2"),
    (["--eval-batch-size", "0"], "--eval-batch-size must be an integer >= 1"),
    (["--momentum", "1"], "--momentum must be in [0, 1)"),
    (["--warmup-epochs", "1"], "--warmup-epochs must be in [0, --epochs) = [0, 1)"),
    (["--seed", "-1"], "--seed must be an integer >= 0"),
])
def test_bad_options_are_refused_before_any_work(extra: list[str], says: str, tiny_config: TrainConfig,
                                                 tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Each bad value is named with its valid range; the data folder given does not even exist,
    so a check that ran after loading would have failed on the data instead."""
    args = _args(replace(tiny_config, data_dir=str(tmp_path / "no-data")), tmp_path / "run")
    assert cli_main(args + extra) == 2
    lines = _error_lines(capsys)
    assert len(lines) == 1 and says in lines[0], lines
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------- 7. wall time


def test_wall_time_accumulates_over_resumed_segments(tiny_config: TrainConfig, tmp_path: Path) -> None:
    config = replace(tiny_config, epochs=2)
    first = train(config, tmp_path, progress=False, stop_after=1)
    assert first["status"] == "incomplete" and first["segments"] == 1
    saved = torch.load(tmp_path / CHECKPOINT, weights_only=True)["wall_seconds"]
    t0 = time.perf_counter()
    result = train(config, tmp_path, progress=False)
    second = time.perf_counter() - t0
    assert result["segments"] == 2
    # the first segment up to its checkpoint, plus all of the second (less the checks before it)
    assert result["wall_seconds"] >= saved + second - 0.25
    epochs = [json.loads(line)["seconds"] for line in (tmp_path / EPOCHS).read_text().splitlines()]
    assert result["train_seconds"] >= sum(epochs) and result["wall_seconds"] >= result["train_seconds"]
    assert json.loads((tmp_path / RESULT).read_text())["wall_seconds"] == result["wall_seconds"]
    assert math.isfinite(result["test_loss"])
