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

import codecs
import hashlib
import os
import pickle
import shutil
import tarfile
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Iterator

import numpy as np
import torch

ENV_VAR = "EDLOSS_DATA"
DEFAULT_DIR = "./data"
IMAGE_SHAPE = (3, 32, 32)
_ROW = 3 * 32 * 32


@dataclass(frozen=True)
class DatasetSpec:
    """Where a CIFAR variant lives inside the data folder and how to fetch it."""

    name: str
    folder: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    meta_file: str
    label_key: str
    names_key: str
    num_classes: int
    url: str
    md5: str


DATASETS: dict[str, DatasetSpec] = {
    "cifar10": DatasetSpec(
        name="CIFAR-10",
        folder="cifar-10-batches-py",
        train_files=tuple(f"data_batch_{i}" for i in range(1, 6)),
        test_files=("test_batch",),
        meta_file="batches.meta",
        label_key="labels",
        names_key="label_names",
        num_classes=10,
        url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        md5="c58f30108f718f92721af3b95e74349a",
    ),
    "cifar100": DatasetSpec(
        name="CIFAR-100",
        folder="cifar-100-python",
        train_files=("train",),
        test_files=("test",),
        meta_file="meta",
        label_key="fine_labels",
        names_key="fine_label_names",
        num_classes=100,
        url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        md5="eb9058c3a382ffc7106e4002c42a8d85",
    ),
}


def get_spec(dataset: str) -> DatasetSpec:
    key = dataset.lower().replace("-", "").replace("_", "")
    if key not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; valid names: {', '.join(DATASETS)}")
    return DATASETS[key]


# ----------------------------------------------------------------------------- locating files


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """The data folder: the argument, else ``$EDLOSS_DATA``, else ``./data``."""
    if data_dir is None or str(data_dir) == "":
        data_dir = os.environ.get(ENV_VAR) or DEFAULT_DIR
    return Path(data_dir).expanduser().resolve()


def _where_from(data_dir: str | os.PathLike | None) -> str:
    if data_dir not in (None, ""):
        return "given as data_dir / --data-dir"
    env = os.environ.get(ENV_VAR)
    return f"from ${ENV_VAR}={env}" if env else f"${ENV_VAR} is unset, so the default {DEFAULT_DIR}"


def find_batches(spec: DatasetSpec, root: Path) -> Path | None:
    """The folder holding the batch files: ``root/<folder>`` or ``root`` itself; None if absent."""
    needed = spec.train_files + spec.test_files
    for candidate in (root / spec.folder, root):
        if all((candidate / f).is_file() for f in needed):
            return candidate
    return None


def _missing_message(spec: DatasetSpec, root: Path, data_dir) -> str:
    folder = root / spec.folder
    missing = [f for f in spec.train_files + spec.test_files if not (folder / f).is_file()]
    return (
        f"{spec.name} not found: looked in {folder} (and {root}) for "
        f"{', '.join(missing)}; data folder {root} ({_where_from(data_dir)}). "
        f"To get it, rerun with --download (Python: download=True), or fetch {spec.url} "
        f"and extract it into {root} so that {folder}/ exists; "
        f"or point --data-dir / ${ENV_VAR} at the folder that holds {spec.folder}/."
    )


# ----------------------------------------------------------------------------- downloading


def _file_digest(path: Path, algorithm: str) -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def download_and_extract(url: str, root: Path, md5: str | None = None,
                         sha256: str | None = None) -> None:
    """Fetch a tar.gz, verify its checksum, and extract it into ``root``.

    The archive is written to a temporary file first, so a broken download never leaves a
    half-written archive that looks valid; a checksum mismatch raises ValueError.
    """
    root.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=root, suffix=".tar.gz.part")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        print(f"downloading {url} -> {root}")
        with urllib.request.urlopen(url) as response, open(tmp, "wb") as out:
            shutil.copyfileobj(response, out)
        for algorithm, expected in (("md5", md5), ("sha256", sha256)):
            if expected and _file_digest(tmp, algorithm) != expected.lower():
                raise ValueError(
                    f"checksum mismatch for {url}: {algorithm} {_file_digest(tmp, algorithm)} "
                    f"!= expected {expected}; the download is corrupt or the file changed upstream"
                )
        with tarfile.open(tmp, "r:gz") as tar:
            if hasattr(tarfile, "data_filter"):
                tar.extractall(root, filter="data")
            else:  # Python < 3.12 without the filter backport: refuse unsafe member paths
                for member in tar.getmembers():
                    target = (root / member.name).resolve()
                    if root.resolve() not in target.parents and target != root.resolve():
                        raise ValueError(f"unsafe path {member.name!r} in archive {url}")
                tar.extractall(root)
    finally:
        tmp.unlink(missing_ok=True)


# ----------------------------------------------------------------------------- reading batches


def _latin1_encode(text: str, encoding: str = "utf-8") -> bytes:
    """``_codecs.encode`` as Python 3 protocol-2 pickles use it for bytes (``encode(s, 'latin1')``),
    and nothing else: pickles name the codec, so any other one is refused."""
    if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
        raise pickle.UnpicklingError(f"bytes encoded as {encoding!r}; CIFAR batches use latin1 only")
    return codecs.encode(text, "latin1")


def _numpy_globals() -> dict[tuple[str, str], Any]:
    """The only callables a pickled CIFAR batch may name: what rebuilds a numpy array (under
    numpy 1 and 2 module names, protocols 2 to 5) and the latin1 bytes codec of protocol 2."""
    try:  # numpy >= 2
        from numpy._core.multiarray import _reconstruct
        from numpy._core.numeric import _frombuffer
    except ImportError:  # numpy 1.x
        from numpy.core.multiarray import _reconstruct  # type: ignore[no-redef]
        from numpy.core.numeric import _frombuffer  # type: ignore[no-redef]
    allowed: dict[tuple[str, str], Any] = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
                                           ("_codecs", "encode"): _latin1_encode}
    for core in ("numpy.core", "numpy._core"):
        allowed[(f"{core}.multiarray", "_reconstruct")] = _reconstruct
        allowed[(f"{core}.numeric", "_frombuffer")] = _frombuffer
    return allowed


class UnsafePickle(ValueError):
    """A data file asked the unpickler for something other than arrays, lists and plain values."""


class _CifarUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` that resolves only numpy's array rebuilders.

    A pickle can name any importable callable and have it called while loading (``os.system``,
    ``builtins.exec``...), so reading a downloaded or shared batch with plain ``pickle.load``
    runs whatever the file asks. CIFAR batches hold only dicts, lists, ints, bytes/strings and
    numpy arrays; everything else is refused before it is even imported."""

    def __init__(self, file: BinaryIO, path: Path) -> None:
        super().__init__(file, encoding="bytes")
        self.path = path
        self.allowed = _numpy_globals()

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self.allowed:
            return self.allowed[(module, name)]
        raise UnsafePickle(f"refusing to load {self.path}: it asks to run {module}.{name}; CIFAR batches "
                           "hold only arrays and lists. The file is not a genuine CIFAR batch: delete "
                           "the data folder and get it again (--download)")


def read_pickle(path: Path) -> Any:
    """Unpickle a CIFAR data file without running code from it (see ``_CifarUnpickler``)."""
    with open(path, "rb") as f:
        return _CifarUnpickler(f, Path(path)).load()


def load_batch(path: Path, label_key: str, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One pickled CIFAR batch -> (uint8 images (N, 3, 32, 32), int64 labels (N,))."""
    try:
        raw = read_pickle(path)
    except UnsafePickle:
        raise
    except Exception as err:  # truncated files raise EOFError, UnpicklingError, ValueError...
        raise ValueError(
            f"{path}: cannot be read as a CIFAR batch pickle ({type(err).__name__}: {err}); "
            "the file is truncated or corrupt: delete the folder and get it again (--download)"
        ) from None
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a pickled dict, found {type(raw).__name__}")
    batch = {k.decode() if isinstance(k, bytes) else k: v for k, v in raw.items()}
    if len(batch) < len(raw):  # b"labels" and "labels" both present: which one is meant cannot be told
        twice = sorted(k.decode() for k in raw if isinstance(k, bytes) and k.decode() in raw)
        raise ValueError(f"{path}: holds the key(s) {twice} both as bytes and as text; a CIFAR batch has each once: "
                         "the file is not a genuine CIFAR batch")
    if "data" not in batch or label_key not in batch:
        raise ValueError(
            f"{path}: missing key 'data' or {label_key!r} (has {sorted(batch)}); "
            "is this the right data set (CIFAR-10 uses 'labels', CIFAR-100 'fine_labels')?"
        )
    data = np.asarray(batch["data"])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != _ROW:
        raise ValueError(
            f"{path}: 'data' has shape {data.shape} and dtype {data.dtype}; expected "
            f"(N, {_ROW}) uint8 (channel-major RGB rows); the file is not a CIFAR batch"
        )
    labels = _labels(batch[label_key], path, num_classes)
    if labels.shape != (data.shape[0],):
        raise ValueError(f"{path}: {labels.shape[0] if labels.ndim else 0} labels for "
                         f"{data.shape[0]} images")
    images = torch.from_numpy(np.ascontiguousarray(data)).view(-1, *IMAGE_SHAPE)
    return images, torch.from_numpy(labels)


def _labels(values: Any, path: Path, num_classes: int) -> np.ndarray:
    """A batch's labels as int64 class indices, or an error naming the file: a cast alone would
    truncate a float label (3.7 -> 3) into a wrong class and overflow on one beyond int64 (2**70)."""
    labels = np.asarray(values)
    if labels.dtype.kind == "O":  # Python ints beyond int64, or mixed types
        bad = [v for v in labels.ravel() if isinstance(v, bool) or not isinstance(v, (int, np.integer))]
        if bad:
            raise ValueError(f"{path}: label {bad[0]!r} is not an integer class index")
    elif labels.dtype.kind == "f":
        bad = labels[~np.isfinite(labels) | (labels != np.trunc(labels))]
        if bad.size:
            raise ValueError(f"{path}: label {bad[0]!r} is not an integer class index")
    elif labels.dtype.kind not in "iub":
        raise ValueError(f"{path}: labels must be integer class indices, got {labels.dtype} values")
    outside = labels[(labels < 0) | (labels >= num_classes)] if labels.size else labels
    if outside.size:
        raise ValueError(f"{path}: labels outside 0..{num_classes - 1} (e.g. {outside.ravel()[0]!r})")
    return labels.astype(np.int64)


def _class_names(spec: DatasetSpec, folder: Path) -> list[str]:
    """Class names from the meta file if it is readable; generic names otherwise. A meta file
    that asks to run code is refused, not skipped: the folder is not what it claims to be."""
    try:
        meta = read_pickle(folder / spec.meta_file)
        names = meta.get(spec.names_key.encode(), meta.get(spec.names_key))
        names = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
        if len(names) == spec.num_classes:
            return names
    except UnsafePickle:
        raise
    except Exception:
        pass
    return [f"class{i}" for i in range(spec.num_classes)]


@dataclass
class CifarArrays:
    """The whole data set as loaded from disk: uint8 (N, 3, 32, 32) images, int64 labels."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    classes: list[str]


def check_present(dataset: str = "cifar10", data_dir: str | os.PathLike | None = None, download: bool = False) -> None:
    """FileNotFoundError naming where the data was looked for, unless it is there (or will be
    downloaded): called before a run makes its folder, so a wrong --data-dir writes nothing."""
    spec = get_spec(dataset)
    root = resolve_data_dir(data_dir)
    if find_batches(spec, root) is None and not download:
        raise FileNotFoundError(_missing_message(spec, root, data_dir))


def load_cifar(dataset: str = "cifar10", data_dir: str | os.PathLike | None = None,
               download: bool = False) -> CifarArrays:
    """Read every batch of CIFAR-10 or CIFAR-100 into memory.

    Downloads (with md5 verification) only if ``download`` is true and the files are missing.
    """
    spec = get_spec(dataset)
    root = resolve_data_dir(data_dir)
    folder = find_batches(spec, root)
    if folder is None and download:
        download_and_extract(spec.url, root, md5=spec.md5)
        folder = find_batches(spec, root)
    if folder is None:
        raise FileNotFoundError(_missing_message(spec, root, data_dir))

    def read(files: tuple[str, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        parts = [load_batch(folder / f, spec.label_key, spec.num_classes) for f in files]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])

    train_x, train_y = read(spec.train_files)
    test_x, test_y = read(spec.test_files)
    return CifarArrays(train_x, train_y, test_x, test_y, _class_names(spec, folder))


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

