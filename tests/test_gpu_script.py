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
