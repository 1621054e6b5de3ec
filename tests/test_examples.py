"""The scripts in examples/ run as a user runs them: each exits 0 and prints a loss on tiny
settings, and bad input (a wrong path, a missing optional dependency) is one line and exit 2."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SCRIPTS = ["image_classifier", "segmentation", "tokens", "mixup", "long_tail", "noisy_labels"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
LOSS = re.compile(r"\bloss \d+\.\d+")


def run(args: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=ENV, timeout=timeout, cwd=EXAMPLES.parent)


def test_every_example_is_tested():
    assert sorted(p.stem for p in EXAMPLES.glob("*.py") if p.stem != "common") == sorted(SCRIPTS)


@pytest.mark.parametrize("script", SCRIPTS)
def test_example_runs_and_prints_a_loss(script):
    result = run([str(EXAMPLES / f"{script}.py"), "--steps", "3"])
    assert result.returncode == 0, result.stderr
    assert LOSS.search(result.stdout), result.stdout


def test_a_wrong_path_is_one_line_and_exit_2(tmp_path):
    missing = tmp_path / "nowhere" / "data.pt"
    procs = {s: subprocess.Popen([sys.executable, str(EXAMPLES / f"{s}.py"), "--data", str(missing)], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True, env=ENV, cwd=EXAMPLES.parent) for s in SCRIPTS}
    for script, proc in procs.items():
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 2, (script, out, err)
        assert err.strip().splitlines() == [f"{script}.py: error: --data {missing}: no such file"], (script, err)
        assert not LOSS.search(out)


def test_a_missing_optional_dependency_is_one_line_and_exit_2(tmp_path):
    np = pytest.importorskip("numpy")
    data = tmp_path / "images.npz"
    np.savez(data, x=np.zeros((8, 3, 8, 8), dtype=np.float32), y=np.arange(8) % 2)
    script = EXAMPLES / "image_classifier.py"
    code = ("import runpy, sys; sys.modules['numpy'] = None; sys.path.insert(0, sys.argv[1]); "
            "sys.argv = sys.argv[2:]; runpy.run_path(sys.argv[0], run_name='__main__')")
    result = run(["-c", code, str(EXAMPLES), str(script), "--data", str(data), "--steps", "1"])
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if "error:" in line]
    assert lines == ["image_classifier.py: error: reading a .npz file needs numpy (pip install numpy), "
                     "or pass a .pt file saved with torch.save"], result.stderr
