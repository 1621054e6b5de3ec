"""CIFAR-10/100 on disk: where the data folder is, downloading it (md5-checked), and reading its
pickled batches safely (an unpickler that builds nothing but arrays, lists and strings) into
uint8 tensors, with errors that say which file is missing or damaged and how to fix it."""

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
from typing import Any, BinaryIO

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
