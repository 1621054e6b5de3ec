"""Shared helpers for the data/model/train/compare tests: a tiny CIFAR written to disk.

Imported by the test modules (``from _cifar_fixtures import ...``) rather than living in
conftest.py. The tiny set uses the exact pickle layout of ``cifar-10-batches-py`` so the real
loading code runs; its images carry a class-dependent colour so a model can learn something.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from edloss.lab.train import TrainConfig

REPO_ROOT = Path(__file__).resolve().parents[1]
PER_BATCH = 64  # train images per data_batch_k file (5 files -> 320 train images)
TEST_IMAGES = 64


def shared_data_dir() -> Path | None:
    """The real CIFAR-10 of the project (``../shared/data`` or $EDLOSS_DATA), if present."""
    for candidate in (os.environ.get("EDLOSS_DATA"), REPO_ROOT.parent / "shared" / "data"):
        if candidate and (Path(candidate) / "cifar-10-batches-py" / "data_batch_1").is_file():
            return Path(candidate)
    return None


def shared_cifar100_dir(tmp_root: Path) -> Path | None:
    """A folder holding the real CIFAR-100 in the pickle layout: $EDLOSS_DATA or ./data when one is
    materialised there, else materialised from ``../shared/data/cifar-100-jpeg`` into ``tmp_root``
    (~20 s, needs Pillow), else None."""
    for candidate in (os.environ.get("EDLOSS_DATA"), REPO_ROOT / "data"):
        if candidate and (Path(candidate) / "cifar-100-python" / "train").is_file():
            return Path(candidate)
    script = REPO_ROOT.parent / "shared" / "data" / "materialize.py"
    if not script.is_file() or not (script.parent / "cifar-100-jpeg" / "cifar100_jpeg.npz").is_file():
        return None
    try:
        import PIL  # noqa: F401
    except ModuleNotFoundError:
        return None
    import subprocess
    import sys

    subprocess.run([sys.executable, str(script), str(tmp_root)], check=True, capture_output=True, cwd=script.parent)
    return tmp_root


def fake_images(labels: np.ndarray, palette: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(n, 3072) uint8 rows: noise plus a per-class colour, channel-major like CIFAR."""
    n = len(labels)
    noise = rng.integers(-40, 41, size=(n, 3, 1024))
    pixels = np.clip(palette[labels][:, :, None] + noise, 0, 255).astype(np.uint8)
    return pixels.reshape(n, 3072)


def write_batch(path: Path, data: np.ndarray, labels: np.ndarray, label_key: bytes = b"labels") -> None:
    batch = {b"batch_label": b"fake", label_key: [int(x) for x in labels], b"data": data,
             b"filenames": [b"img%d.png" % i for i in range(len(labels))]}
    with open(path, "wb") as f:
        pickle.dump(batch, f, protocol=2)


def write_cifar(root: Path, dataset: str = "cifar10", per_batch: int = PER_BATCH,
                test: int = TEST_IMAGES, seed: int = 0) -> Path:
    """Write a tiny CIFAR-10 (``cifar-10-batches-py``) or CIFAR-100 (``cifar-100-python``)."""
    rng = np.random.default_rng(seed)
    if dataset == "cifar10":
        folder, k, key = root / "cifar-10-batches-py", 10, b"labels"
        train_files = [f"data_batch_{i}" for i in range(1, 6)]
        meta = ("batches.meta", {b"label_names": [b"c%d" % i for i in range(k)]})
    else:
        folder, k, key = root / "cifar-100-python", 100, b"fine_labels"
        train_files = ["train"]
        per_batch *= 5
        meta = ("meta", {b"fine_label_names": [b"f%d" % i for i in range(k)]})
    folder.mkdir(parents=True, exist_ok=True)
    palette = rng.integers(0, 256, size=(k, 3))
    for name, n in [(f, per_batch) for f in train_files] + [(("test_batch" if k == 10 else "test"), test)]:
        labels = rng.integers(0, k, size=n)
        data = fake_images(labels, palette, rng)
        write_batch(folder / name, data, labels, key)
    with open(folder / meta[0], "wb") as f:
        pickle.dump(meta[1], f, protocol=2)
    return folder


@pytest.fixture(scope="session")
def tiny_cifar(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data folder holding a tiny cifar-10-batches-py/ (320 train, 64 test images)."""
    root = tmp_path_factory.mktemp("cifar")
    write_cifar(root)
    return root


@pytest.fixture
def tiny_config(tiny_cifar: Path) -> TrainConfig:
    """ResNet-20, one epoch of 64 images in batches of 32, 32 validation images."""
    return TrainConfig(model="resnet20", data_dir=str(tiny_cifar), epochs=1, batch_size=32,
                       lr=0.05, val_size=32, train_subset=64, eval_batch_size=64, device="cpu")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One torch thread: the tests are tiny, and the machine is shared (with 2 cores and a busy
    neighbour, 2 OpenMP threads make every op wait for a time slice: 20x slower)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def pretrained_edl_or_skip():
    """The shipped EDL loss, or skip the test (with the reason) while no weights ship."""
    try:
        from edloss.loss import EDLLoss

        return EDLLoss.pretrained()
    except Exception as err:  # noqa: BLE001 - missing weights, API still landing, ...
        pytest.skip(f"EDLLoss.pretrained() unavailable: {type(err).__name__}: {err}")


def make_edl_checkpoint(folder: Path) -> Path:
    """An EDL checkpoint folder holding a randomly initialised loss network (API smoke only)."""
    import torch

    try:
        from edloss.loss import EDLLoss
        from edloss.lossnet import LossNet, LossNetConfig

        torch.manual_seed(0)
        return Path(EDLLoss(LossNet(LossNetConfig())).save(folder))
    except (ImportError, TypeError, AttributeError) as err:
        pytest.skip(f"cannot write an EDL checkpoint with the current edloss.loss API: {err}")
