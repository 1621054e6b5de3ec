"""Shared by the examples: one-line errors for bad input, arrays from a file, tiny synthetic data."""
from __future__ import annotations

import os
import sys

import torch


def fail(message: str) -> None:
    """Print ``SCRIPT: error: MESSAGE`` on one line and exit with status 2 (as argparse does)."""
    print(f"{os.path.basename(sys.argv[0])}: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def load_arrays(path: str, keys: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """``keys`` from a ``.pt`` file (a dict saved with ``torch.save``) or a ``.npz`` file (needs numpy)."""
    if not os.path.isfile(path):
        fail(f"--data {path}: no such file")
    try:
        if path.endswith(".npz"):
            try:
                import numpy as np
            except ImportError:
                fail("reading a .npz file needs numpy (pip install numpy), or pass a .pt file saved with torch.save")
            with np.load(path) as f:
                data = {k: torch.from_numpy(f[k]) for k in f.files}
        elif path.endswith(".pt"):
            data = torch.load(path, weights_only=True)
        else:
            fail(f"--data {path}: expected a .pt or .npz file")
    except Exception as err:  # noqa: BLE001 - any failure to parse the file is the file's fault
        kind = "a .npz file" if path.endswith(".npz") else "a file saved with torch.save"
        fail(f"--data {path}: cannot read it as {kind} ({type(err).__name__})")
    if not isinstance(data, dict) or any(k not in data for k in keys):
        fail(f"--data {path}: expected arrays named {', '.join(keys)}")
    return {k: torch.as_tensor(data[k]) for k in keys}


def images(n: int, classes: int = 10, size: int = 16, seed: int = 0, counts: list[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Tiny synthetic 3 x size x size images: a fixed random template per class plus noise.

    ``counts`` gives the number of images per class (a long tail); otherwise ``n`` split evenly."""
    gen = torch.Generator().manual_seed(seed)
    templates = torch.randn(classes, 3, size, size, generator=torch.Generator().manual_seed(1234))
    if counts is None:
        y = torch.arange(n) % classes
    else:
        y = torch.repeat_interleave(torch.arange(classes), torch.tensor(counts))
    x = templates[y] + torch.randn(len(y), 3, size, size, generator=gen)
    return x, y


def small_cnn(classes: int, channels: int = 3) -> torch.nn.Module:
    """A two-layer convnet for the examples' images."""
    return torch.nn.Sequential(
        torch.nn.Conv2d(channels, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(16, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(4),
        torch.nn.Flatten(), torch.nn.Linear(32 * 16, classes),
    )


def check_images(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N, 3, H, W) as float and class indices (N,) as int64, or a one-line error."""
    if x.dim() != 4 or x.shape[1] != 3 or y.dim() != 1 or len(y) != len(x):
        fail(f"--data: expected x of shape (N, 3, H, W) and y of shape (N,), got {tuple(x.shape)} and {tuple(y.shape)}")
    if x.dtype == torch.uint8:
        x = x.float() / 255
    return x.float(), y.long()
