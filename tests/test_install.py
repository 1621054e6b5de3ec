"""The package as users install it: a wheel that carries every shipped loss, a light import, and a
loss-only install (torch + safetensors + tqdm) that loads and trains.

CI builds the wheel, installs it (not editable) into the test environment and into a second,
minimal one, and sets EDLOSS_WHEEL, EDLOSS_USER_PYTHON and EDLOSS_EXPECT_INSTALLED; without them
the wheel is built here and the minimal-environment test skips, saying so.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("matplotlib", "scipy", "cma", "ray")

SMOKE = r"""
import sys
import edloss
heavy = [m for m in {heavy!r} if m in sys.modules]
assert not heavy, f"import edloss imported {{heavy}}"
import torch
from edloss import EDLLoss
torch.manual_seed(0)
model = torch.nn.Linear(8, 10)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
criterion = EDLLoss.pretrained()
x, y = torch.randn(32, 8), torch.randint(0, 10, (32,))
before = criterion(model(x), y).item()
for _ in range(20):
    opt.zero_grad()
    criterion(model(x), y).backward()
    opt.step()
after = criterion(model(x), y).item()
assert after < before, (before, after)
print("ok", edloss.__file__, before, after)
"""


def shipped_losses() -> list[str]:
    return sorted(p.name for p in (ROOT / "src" / "edloss" / "weights").iterdir() if p.is_dir())


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    if os.environ.get("EDLOSS_WHEEL"):
        return Path(os.environ["EDLOSS_WHEEL"])
    out = tmp_path_factory.mktemp("wheel")
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(ROOT)],
        capture_output=True, text=True,
    )
    if result.returncode != 0:
        pytest.skip(f"cannot build a wheel here (pip wheel failed: {result.stderr.strip()[-200:]})")
    return next(out.glob("edloss-*.whl"))


def test_wheel_carries_every_shipped_loss(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for loss in shipped_losses():
        for file in ("loss.json", "loss.safetensors"):
            assert f"edloss/weights/{loss}/{file}" in names, f"{wheel.name} lacks the shipped loss {loss}/{file}"
    assert "edloss/lab/train.py" in names


def test_import_edloss_is_light():
    code = f"import sys, edloss; print([m for m in {HEAVY!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"


def test_tests_run_against_the_installed_wheel():
    if not os.environ.get("EDLOSS_EXPECT_INSTALLED"):
        pytest.skip("EDLOSS_EXPECT_INSTALLED is set by CI, which installs the wheel (not editable)")
    import edloss

    assert "site-packages" in edloss.__file__, f"tests imported {edloss.__file__}, not the installed wheel"
    from edloss.configs import source_revision

    # CI's venv lies inside the checkout: the installed copy must not claim the checkout's commit
    assert source_revision() == "not a git checkout"


def test_loss_only_install_loads_and_trains():
    python = os.environ.get("EDLOSS_USER_PYTHON")
    if not python:
        pytest.skip("EDLOSS_USER_PYTHON (a venv with only torch and the wheel) is set by CI")
    result = subprocess.run([python, "-c", SMOKE.format(heavy=HEAVY)], capture_output=True, text=True, cwd="/")
    assert result.returncode == 0, result.stderr
    assert "site-packages" in result.stdout
    # the lab commands say what they need instead of failing with a traceback
    edloss_cli = Path(python).parent / "edloss"
    lab = subprocess.run([str(edloss_cli), "train"], capture_output=True, text=True)
    assert lab.returncode == 2 and "pip install 'edloss[lab]'" in lab.stderr
    assert "Traceback" not in lab.stderr
