"""benchmarks/gpu_cifar.py, the prepared GPU comparison, run end to end on the CPU with a tiny
configuration: the JPEG archive is decoded into the pickle layout, runs train and are collected
into results.json and table.md."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from _benchmarks import import_benchmark

ROOT = Path(__file__).resolve().parents[1]


def tiny_npz(path: Path, n_train: int = 40, n_test: int = 10) -> Path:
    np = pytest.importorskip("numpy")
    Image = pytest.importorskip("PIL.Image")
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", n_train), ("test", n_test)):
        blobs = []
        for _ in range(n):
            buffer = io.BytesIO()
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buffer, format="JPEG")
            blobs.append(buffer.getvalue())
        arrays[f"{split}_jpeg"] = np.frombuffer(b"".join(blobs), dtype=np.uint8)
        arrays[f"{split}_offsets"] = np.cumsum([0] + [len(b) for b in blobs]).astype(np.int64)
        arrays[f"{split}_labels"] = (np.arange(n) % 10).astype(np.uint8)
    np.savez(path, **arrays)
    return path


def test_gpu_script_runs_end_to_end_on_cpu(tmp_path):
    data = tiny_npz(tmp_path / "tiny.npz")
    out = tmp_path / "out"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "gpu_cifar.py"), "--tiny", "--device", "cpu", "--data", str(data),
           "--out", str(out), "--models", "resnet20", "--losses", "ce", "edl", "--seeds", "0", "--parallel", "2", "--budget", "600"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads((out / "results.json").read_text())
    assert sorted((r["loss"], r["status"]) for r in results["runs"]) == [("ce", "finished"), ("edl", "finished")]
    assert all(0 <= r["test_acc"] <= 1 and r["test_ece"] is not None for r in results["runs"])
    assert "| resnet20 | edl | 0 | finished |" in (out / "table.md").read_text()


def test_gpu_script_long_tail_recipe_on_cpu(tmp_path):
    """--long-tail: the literature's recipe (here --tiny: 30 images cut to a tail), with the published
    numbers printed beside ours."""
    gpu_cifar = import_benchmark("gpu_cifar")
    cmd = gpu_cifar.train_command("resnet32", "ldam_drw", 0, tmp_path, tmp_path / "run", "cuda", False,
                                  {"dataset": "cifar10", "imbalance": 100})
    text = " ".join(cmd)
    for part in ("--model resnet32", "--epochs 200", "--batch-size 128", "--lr 0.1", "--schedule step",
                 "--warmup-epochs 5", "--weight-decay 0.0002", "--no-nesterov", "--val-size 0", "--imbalance 100",
                 "--dataset cifar10"):
        assert part in text, part
    data = tiny_npz(tmp_path / "tiny.npz")
    out = tmp_path / "out"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "gpu_cifar.py"), "--tiny", "--device", "cpu", "--data", str(data),
           "--out", str(out), "--long-tail", "--models", "resnet8", "--losses", "ce", "logit_adjusted", "--seeds", "0",
           "--parallel", "2", "--budget", "600"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads((out / "results.json").read_text())
    assert sorted((r["loss"], r["status"]) for r in results["runs"]) == [("ce", "finished"), ("logit_adjusted", "finished")]
    assert all(r["class_counts"] == [3, 2, 2, 2, 2, 2, 1, 1, 1, 1] for r in results["runs"])
    table = (out / "table.md").read_text()
    assert "CIFAR-10-LT at imbalance 2" in table and "70.4 / 38.3" in table and "77.9 / 44.1" in table
    assert "thirds of the 10 classes" in table


def test_gpu_regimes_script_runs_a_regime_end_to_end_on_cpu(tmp_path):
    """benchmarks/gpu_regimes.py, prepared for a lent GPU: the archive decoded, one regime run as its
    own process, the matrix written (c10-limited-50 cut to 2 images per class and 2 steps)."""
    data = tiny_npz(tmp_path / "tiny.npz", n_train=1100, n_test=10)  # the regime's 1,000 validation images + 100
    out = tmp_path / "out"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "gpu_regimes.py"), "--tiny", "--device", "cpu", "--data", str(data),
           "--out", str(out), "--regimes", "c10-limited-50", "--parallel", "1", "--budget", "600", "--workers", "1"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env={**__import__("os").environ,
                                                                                 "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stdout + done.stderr
    assert "c10-limited-50   finished" in done.stdout
    matrix = json.loads((out / "matrix.json").read_text())
    assert [c["arm"] for c in matrix["cells"]] == ["ce"] and matrix["cells"][0]["n"] == 5
