"""CIFAR-10/100 held in memory as uint8 tensors, with augmentation done on whole batches.

Why this shape: a 32x32 data set fits in memory many times over, so the per-image Python
``Dataset``/``DataLoader`` machinery only costs time (see ``benchmarks/bench_training.py``).
Images stay uint8 (N, 3, 32, 32) on the training device; each batch is cropped, flipped and
normalised with a handful of tensor ops driven by a ``torch.Generator`` (airbench style), so the
data order and augmentation are reproducible and their state can be checkpointed.

Splits: the validation set is a fixed slice of the training set (default: its last 5,000
images) and is what every tuning choice looks at; the test set is only for reported numbers.

Long tail (``imbalance``): the training part is cut in this order, each step on what the last
one left: (1) the reserve, then validation, off the end (both stay as they are: balanced);
(2) ``train_subset`` (with ``balanced``: the first N/K images of each class); (3) the
exponential profile of Cao et al. (2019): class c keeps its first
floor(n_max * RHO^(-c/(K-1))) images, n_max being the smallest class count of the pool step 2
left (with ``val_size=0`` and no subset: 5,000 for CIFAR-10 and 500 for CIFAR-100, the
literature's CIFAR-10-LT / CIFAR-100-LT: 12,406 and 10,847 images at RHO = 100); (4) label
noise, if any, on the long-tailed labels (``flip_labels``, in the trainer).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import torch

# the files' layer, importable from here as before the split
from edloss.lab.cifar import (DATASETS, ENV_VAR, CifarArrays, DatasetSpec, UnsafePickle,  # noqa: F401
                              check_present, download_and_extract, find_batches, get_spec, load_batch, load_cifar,
                              read_pickle, resolve_data_dir)


# ----------------------------------------------------------------------------- splits


@dataclass
class Splits:
    """Train / validation / test tensors plus the normalisation every loader applies."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    mean: torch.Tensor  # (3,) on the 0..1 scale
    std: torch.Tensor
    num_classes: int
    classes: list[str]
    imbalance: float | None = None  # the long-tail factor RHO the training part was cut to (None: not cut)

    @property
    def class_counts(self) -> list[int]:
        """Training images per class (the labels as loaded, before any label noise)."""
        return torch.bincount(self.train_y, minlength=self.num_classes).tolist()


def check_imbalance(rho: Any) -> float:
    """``rho`` as a float >= 1, or ValueError: a long-tail factor is n_max / n_min."""
    if isinstance(rho, bool) or not isinstance(rho, (int, float)) or not np.isfinite(rho) or rho < 1:
        raise ValueError(f"--imbalance must be a finite number >= 1 (n_max / n_min of the long-tailed training "
                         f"set; 1 = balanced), got {rho!r}")
    return float(rho)


def long_tail_counts(n_max: int, num_classes: int, rho: float) -> list[int]:
    """The exponential profile of Cao et al. (2019): class c keeps int(n_max * (1/RHO)^(c/(K-1)))
    images, computed exactly as their code does (so n_max 5,000, K 10, RHO 100 gives the
    literature's 12,406 CIFAR-10-LT images). A class left with none: ValueError."""
    rho = check_imbalance(rho)
    counts = [int(n_max * (1.0 / rho) ** (c / (num_classes - 1.0))) for c in range(num_classes)]
    if min(counts) < 1:
        empty = counts.index(0)
        raise ValueError(f"--imbalance {rho:g} is too steep: the pool has n_max = {n_max} images per class, so "
                         f"class {empty} would keep int({n_max} / {rho:g}^({empty}/{num_classes - 1})) = 0 images; "
                         f"use --imbalance <= {n_max} (or more training images)")
    return counts


def long_tail_indices(labels: torch.Tensor, num_classes: int, rho: float) -> tuple[torch.Tensor, list[int]]:
    """Indices (in original order) keeping the first ``long_tail_counts`` images of each class,
    with n_max the smallest class count in ``labels``; returns (indices, counts)."""
    available = torch.bincount(labels, minlength=num_classes)
    n_max = int(available.min())
    if n_max < 1:
        short = int((available == 0).nonzero()[0])
        raise ValueError(f"--imbalance needs every class in the training pool, but class {short} has no image "
                         "there (use more images: a larger --train-subset, or --balanced-subset)")
    quota = torch.tensor(long_tail_counts(n_max, num_classes, rho))
    onehot = torch.nn.functional.one_hot(labels, num_classes)
    rank = (onehot.cumsum(0) * onehot).sum(1) - 1
    keep = rank < quota[labels]
    return keep.nonzero().squeeze(1), quota.tolist()


def training_indices(labels: torch.Tensor, num_classes: int, train_subset: int | None = None,
                     balanced: bool = False, imbalance: float | None = None) -> torch.Tensor:
    """The training images kept from the training part (``labels``): the subset, then the long
    tail (see the module docstring for the order)."""
    idx = torch.arange(labels.numel())
    if train_subset is not None:
        idx = subset_indices(labels, train_subset, num_classes, balanced)
    if imbalance is not None:
        if train_subset is not None and not balanced:
            raise ValueError("--imbalance with --train-subset needs --balanced-subset: the long-tail profile "
                             "starts from a balanced pool of N/K images per class")
        kept, _ = long_tail_indices(labels[idx], num_classes, imbalance)
        idx = idx[kept]
    return idx


def subset_indices(labels: torch.Tensor, n: int, num_classes: int, balanced: bool) -> torch.Tensor:
    """The first ``n`` indices, or (balanced) the first n/K of each class, in original order.

    With ``n`` not divisible by K the first ``n % K`` classes get one image more.
    """
    if n <= 0 or n > labels.numel():
        raise ValueError(f"--train-subset {n} must be in 1..{labels.numel()} (the images left "
                         "for training after --val-size)")
    if not balanced:
        return torch.arange(n)
    quota = torch.full((num_classes,), n // num_classes, dtype=torch.long)
    quota[: n % num_classes] += 1
    # rank of each image within its class (0 for a class's first image, 1 for its second, ...)
    onehot = torch.nn.functional.one_hot(labels, num_classes)
    rank = (onehot.cumsum(0) * onehot).sum(1) - 1
    keep = rank < quota[labels]
    counts = torch.bincount(labels[keep], minlength=num_classes)
    if not torch.equal(counts, quota):
        short = [i for i in range(num_classes) if counts[i] < quota[i]]
        raise ValueError(f"balanced subset of {n} needs {int(quota.max())} images per class, "
                         f"but classes {short} have fewer in the training part")
    return keep.nonzero().squeeze(1)


def channel_stats(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std on the 0..1 scale (float64 accumulation, chunked)."""
    total = torch.zeros(3, dtype=torch.float64)
    total_sq = torch.zeros(3, dtype=torch.float64)
    for chunk in images.split(10_000):
        x = chunk.to(torch.float64) / 255
        total += x.sum((0, 2, 3))
        total_sq += (x * x).sum((0, 2, 3))
    count = images.shape[0] * images.shape[2] * images.shape[3]
    mean = total / count
    std = (total_sq / count - mean * mean).clamp_min(1e-12).sqrt()
    return mean.float(), std.float()


def make_splits(arrays: CifarArrays, val_size: int = 5000, train_subset: int | None = None,
                balanced: bool = False, reserve: int = 0, imbalance: float | None = None) -> Splits:
    """Cut validation off the end of the training set, then optionally subset the rest.

    ``reserve`` sets the last images of the training set aside first, never read: the proxy
    trainings of ``edloss adapt`` reserve the reporting validation split, so what is later
    measured on it was not selected on it. Normalisation uses the mean/std of the whole
    training part (all non-validation, non-reserved images), so runs with different subset
    sizes see identically normalised pixels. ``imbalance`` cuts the training images (after the
    subset) to the long-tail profile of factor RHO; validation and test are left balanced.
    """
    n = arrays.train_x.shape[0]
    if not 0 <= reserve < n:
        raise ValueError(f"reserve {reserve} must be in 0..{n - 1} (the training set has {n} images)")
    n -= reserve
    if not 0 <= val_size < n:
        raise ValueError(f"--val-size (validation size) {val_size} must be in 0..{n - 1} "
                         f"(the training set has {n} images" + (f" after {reserve} reserved" if reserve else "") + ")")
    cut = n - val_size
    train_x, train_y = arrays.train_x[:cut], arrays.train_y[:cut]
    mean, std = channel_stats(train_x)
    if train_subset is not None or imbalance is not None:
        idx = training_indices(train_y, len(arrays.classes), train_subset, balanced, imbalance)
        train_x, train_y = train_x[idx], train_y[idx]
    return Splits(train_x, train_y, arrays.train_x[cut:n], arrays.train_y[cut:n],
                  arrays.test_x, arrays.test_y, mean, std, len(arrays.classes), arrays.classes,
                  imbalance=None if imbalance is None else float(imbalance))


def load_splits(dataset: str = "cifar10", data_dir: str | os.PathLike | None = None,
                val_size: int = 5000, train_subset: int | None = None, balanced: bool = False,
                download: bool = False, reserve: int = 0, imbalance: float | None = None) -> Splits:
    """``load_cifar`` + ``make_splits`` in one call."""
    arrays = load_cifar(dataset, data_dir, download)
    return make_splits(arrays, val_size, train_subset, balanced, reserve, imbalance)


def check_imbalance_feasible(dataset: str, data_dir: str | os.PathLike | None, val_size: int,
                             train_subset: int | None, balanced: bool, reserve: int, imbalance: float) -> list[int]:
    """The long-tailed class counts a run would train on, from the labels alone (no images
    normalised): a profile so steep a class keeps no image is refused here, before a run folder
    is made. Data still to be downloaded is checked when the run loads it; returns [] then."""
    if find_batches(get_spec(dataset), resolve_data_dir(data_dir)) is None:
        return []
    arrays = load_cifar(dataset, data_dir)
    n = arrays.train_y.numel() - reserve
    labels = arrays.train_y[: max(0, n - val_size)]
    idx = training_indices(labels, len(arrays.classes), train_subset, balanced, imbalance)
    return torch.bincount(labels[idx], minlength=len(arrays.classes)).tolist()


# ----------------------------------------------------------------------------- augmentation


def augment(images: torch.Tensor, generator: torch.Generator, pad: int = 4,
            flip: bool = True) -> torch.Tensor:
    """Random crop (zero padding of ``pad`` pixels) and horizontal flip of a whole batch.

    The batch is padded once; every output pixel is then read with a single ``gather`` from
    the flattened padded image, at an index that already holds the image's own crop offset
    and, for flipped images, the mirrored column. Crop and flip thus cost one pass over
    memory, with no Python loop over images (5x faster than 4-way advanced indexing).
    """
    n, c, h, w = images.shape
    if n == 0 or (pad == 0 and not flip):
        return images
    device = images.device
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=device)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=device)
    cols = torch.arange(w, device=device).expand(n, w)
    if flip:
        flipped = torch.rand(n, generator=generator, device=device) < 0.5
        cols = torch.where(flipped[:, None], cols.flip(1), cols)
    padded = torch.nn.functional.pad(images, (pad, pad, pad, pad)) if pad else images
    rows = dy[:, None] + torch.arange(h, device=device)  # (n, h)
    index = rows[:, :, None] * (w + 2 * pad) + (dx[:, None] + cols)[:, None, :]  # (n, h, w)
    flat = padded.reshape(n, c, -1)
    return flat.gather(2, index.view(n, 1, h * w).expand(n, c, h * w)).view(n, c, h, w)


class BatchLoader:
    """Iterate (normalised float images, labels) batches from uint8 tensors held in memory.

    Training loaders shuffle and augment with ``generator``; its state is all there is to
    checkpoint for the data pipeline. A trailing batch of a single image is dropped in training
    (batch norm cannot train on one sample); evaluation loaders keep every image, in order.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int,
                 mean: torch.Tensor, std: torch.Tensor, *, train: bool,
                 generator: torch.Generator | None = None, device: str | torch.device = "cpu",
                 channels_last: bool = False, pad: int = 4, flip: bool = True,
                 augment_data: bool = True) -> None:
        if batch_size < 1:
            raise ValueError(f"batch size must be positive, got {batch_size}")
        if train and generator is None:
            raise ValueError("a training loader needs a torch.Generator for shuffling")
        self.device = torch.device(device)
        self.images = images.to(self.device)
        self.labels = labels.to(self.device)
        self.batch_size = batch_size
        self.train = train
        self.generator = generator
        self.channels_last = channels_last
        self.pad, self.flip, self.augment_data = pad, flip, augment_data
        # (x/255 - mean)/std == x*scale + shift
        std = std.to(self.device, torch.float32)
        self.scale = (1 / (255 * std)).view(1, 3, 1, 1)
        self.shift = (-mean.to(self.device, torch.float32) / std).view(1, 3, 1, 1)

    def __len__(self) -> int:
        n, b = self.images.shape[0], self.batch_size
        full, rest = divmod(n, b)
        return full + (1 if rest > 1 or (rest == 1 and not self.train) else 0)

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float().mul_(self.scale).add_(self.shift)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = self.images.shape[0]
        if self.train:
            order = torch.randperm(n, generator=self.generator, device=self.device)
        else:
            order = torch.arange(n, device=self.device)
        for i in range(len(self)):
            idx = order[i * self.batch_size:(i + 1) * self.batch_size]
            x = self.images[idx]
            if self.train and self.augment_data:
                x = augment(x, self.generator, self.pad, self.flip)
            yield self.normalise(x), self.labels[idx]


def flip_labels(labels: torch.Tensor, num_classes: int, rate: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric label noise as in the SCE and APL papers: exactly floor(rate * n_c) labels of each
    class c are moved to a class drawn uniformly from the other K - 1. Seeded by ``seed`` alone,
    so every loss of a comparison sees the same noisy labels. Returns (noisy labels, flipped
    indices, sorted)."""
    if not 0 <= rate < 1:
        raise ValueError(f"--label-noise must be a rate in [0, 1), got {rate!r}")
    gen = torch.Generator().manual_seed(seed)
    noisy = labels.clone()
    flipped = []
    for c in range(num_classes):
        members = (labels == c).nonzero().flatten()
        count = int(rate * members.numel())
        chosen = members[torch.randperm(members.numel(), generator=gen)[:count]]
        noisy[chosen] = (c + torch.randint(1, num_classes, (count,), generator=gen)) % num_classes
        flipped.append(chosen)
    indices = torch.cat(flipped).sort().values if flipped else torch.zeros(0, dtype=torch.long)
    if rate > 0 and indices.numel() == 0:
        smallest = int(torch.bincount(labels, minlength=num_classes).min())
        raise ValueError(f"--label-noise {rate} flips no label: the smallest class has {smallest} training images "
                         f"and floor({rate} x {smallest}) = 0; use more images or a higher rate")
    return noisy, indices
