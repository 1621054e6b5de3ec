"""edloss.lab.data: loading the pickle layout, errors, splits, augmentation, the batch loader."""

from __future__ import annotations

import hashlib
import pickle
import tarfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from _cifar_fixtures import (PER_BATCH, TEST_IMAGES, _one_thread, shared_data_dir,  # noqa: F401
                             tiny_cifar, write_batch, write_cifar)
from edloss.lab import data as D


def test_load_tiny_cifar10(tiny_cifar: Path) -> None:
    arrays = D.load_cifar("cifar10", tiny_cifar)
    assert arrays.train_x.shape == (5 * PER_BATCH, 3, 32, 32)
    assert arrays.train_x.dtype == torch.uint8
    assert arrays.train_y.dtype == torch.int64 and arrays.train_y.shape == (5 * PER_BATCH,)
    assert arrays.test_x.shape == (TEST_IMAGES, 3, 32, 32)
    assert arrays.classes == [f"c{i}" for i in range(10)]
    # rows are channel-major: the first 1024 values are the red plane, row by row
    with open(tiny_cifar / "cifar-10-batches-py" / "data_batch_2", "rb") as f:
        raw = pickle.load(f, encoding="bytes")
    row = raw[b"data"][3]
    image = arrays.train_x[PER_BATCH + 3]
    assert image[0, 0, :].tolist() == row[:32].tolist()
    assert image[1, 2, 5] == row[1024 + 2 * 32 + 5]
    assert arrays.train_y[PER_BATCH + 3] == raw[b"labels"][3]


def test_data_dir_may_be_the_batches_folder(tiny_cifar: Path) -> None:
    arrays = D.load_cifar("cifar10", tiny_cifar / "cifar-10-batches-py")
    assert arrays.train_x.shape[0] == 5 * PER_BATCH


def test_cifar100_layout(tmp_path: Path) -> None:
    write_cifar(tmp_path, "cifar100", per_batch=20, test=30)
    arrays = D.load_cifar("cifar-100", tmp_path)
    assert arrays.train_x.shape == (100, 3, 32, 32) and arrays.test_x.shape == (30, 3, 32, 32)
    assert len(arrays.classes) == 100 and arrays.classes[7] == "f7"
    assert int(arrays.train_y.max()) < 100


def test_resolve_data_dir_priority(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(D.ENV_VAR, str(tmp_path / "env"))
    assert D.resolve_data_dir(tmp_path / "arg") == (tmp_path / "arg").resolve()
    assert D.resolve_data_dir(None) == (tmp_path / "env").resolve()
    monkeypatch.delenv(D.ENV_VAR)
    monkeypatch.chdir(tmp_path)
    assert D.resolve_data_dir(None) == (tmp_path / "data").resolve()


def test_missing_folder_explains_where_and_how(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(D.ENV_VAR, str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError) as err:
        D.load_cifar("cifar10")
    message = str(err.value)
    assert str((tmp_path / "nowhere").resolve()) in message
    assert "EDLOSS_DATA" in message and "--download" in message
    assert "cifar-10-python.tar.gz" in message and "cifar-10-batches-py" in message


def test_unknown_dataset() -> None:
    with pytest.raises(ValueError, match="cifar10, cifar100"):
        D.load_cifar("mnist")


def _copy_tiny(dst: Path) -> Path:
    write_cifar(dst)
    return dst / "cifar-10-batches-py"


def test_truncated_batch_names_the_file(tmp_path: Path) -> None:
    folder = _copy_tiny(tmp_path)
    path = folder / "data_batch_3"
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(ValueError, match="data_batch_3.*truncated"):
        D.load_cifar("cifar10", tmp_path)


def test_wrong_shape_names_the_file(tmp_path: Path) -> None:
    folder = _copy_tiny(tmp_path)
    write_batch(folder / "test_batch", np.zeros((10, 1000), np.uint8), np.zeros(10, int))
    with pytest.raises(ValueError, match=r"test_batch.*\(10, 1000\)"):
        D.load_cifar("cifar10", tmp_path)


def test_wrong_labels_name_the_file(tmp_path: Path) -> None:
    folder = _copy_tiny(tmp_path)
    write_batch(folder / "data_batch_1", np.zeros((4, 3072), np.uint8), np.array([0, 1, 2, 10]))
    with pytest.raises(ValueError, match="data_batch_1.*labels outside"):
        D.load_cifar("cifar10", tmp_path)
    write_batch(folder / "data_batch_1", np.zeros((4, 3072), np.uint8), np.array([0, 1]))
    with pytest.raises(ValueError, match="data_batch_1.*2 labels for 4 images"):
        D.load_cifar("cifar10", tmp_path)


class _CreatesAFile:
    """A hostile pickle payload: unpickling it calls ``open(path, "w")``, which creates the file."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_a_batch_that_runs_code_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Plain pickle.load ran whatever a batch asked; only numpy's array rebuilders may be named."""
    folder = _copy_tiny(tmp_path / "data")
    marker = tmp_path / "created-by-the-pickle"
    hostile = pickle.dumps({b"batch_label": b"x", b"labels": [0], b"data": _CreatesAFile(marker)}, protocol=2)
    (folder / "data_batch_1").write_bytes(hostile)
    with pytest.raises(ValueError, match=r"refusing to load \S*data_batch_1: it asks to run io\.open; "
                                         "CIFAR batches hold only arrays and lists"):
        D.load_cifar("cifar10", tmp_path / "data")
    assert not marker.exists()
    # the way the report found it: `edloss train` reading the folder
    from edloss.cli import main as cli_main

    code = cli_main(["train", "--data-dir", str(tmp_path / "data"), "--epochs", "1", "--device", "cpu",
                     "--val-size", "32", "--out", str(tmp_path / "run"), "--quiet"])
    assert code == 2 and "refusing to load" in capsys.readouterr().err and not marker.exists()
    # a hostile meta file is refused too, not skipped for generic class names
    write_cifar(tmp_path / "data")
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": _CreatesAFile(marker)}, protocol=4))
    with pytest.raises(ValueError, match="batches.meta: it asks to run io.open"):
        D.load_cifar("cifar10", tmp_path / "data")
    assert not marker.exists()
    # the payload is real: plain pickle would have created the file
    pickle.loads(hostile)[b"data"].close()
    assert marker.exists()


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_batches_of_every_pickle_protocol_load(protocol: int, tmp_path: Path) -> None:
    """numpy arrays pickle through _reconstruct (protocols 2-4) or _frombuffer (5); both load."""
    data = np.arange(4 * 3072, dtype=np.int64).astype(np.uint8).reshape(4, 3072)
    batch = {b"batch_label": b"x", b"labels": [0, 1, 2, 3], b"data": data,
             b"filenames": [b"a.png", b"b.png", b"c.png", b"d.png"]}
    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps(batch, protocol=protocol))
    x, y = D.load_batch(path, "labels", 10)
    assert torch.equal(x.reshape(4, -1), torch.from_numpy(data)) and y.tolist() == [0, 1, 2, 3]


# ----------------------------------------------------------------------------- download


def _archive(tmp_path: Path) -> tuple[str, str]:
    """A tar.gz of a tiny CIFAR-10, as a file:// URL, and its md5."""
    src = tmp_path / "src"
    write_cifar(src)
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(src / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    return archive.as_uri(), hashlib.md5(archive.read_bytes()).hexdigest()


def test_download_verifies_and_extracts(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    url, md5 = _archive(tmp_path)
    spec = replace(D.DATASETS["cifar10"], url=url, md5=md5)
    monkeypatch.setitem(D.DATASETS, "cifar10", spec)
    target = tmp_path / "data"
    with pytest.raises(FileNotFoundError):
        D.load_cifar("cifar10", target)  # no download unless asked
    arrays = D.load_cifar("cifar10", target, download=True)
    assert arrays.train_x.shape[0] == 5 * PER_BATCH
    assert not list(target.glob("*.part"))


def test_download_rejects_bad_checksum(tmp_path: Path) -> None:
    url, _ = _archive(tmp_path)
    target = tmp_path / "data"
    with pytest.raises(ValueError, match="checksum mismatch"):
        D.download_and_extract(url, target, md5="0" * 32)
    assert not (target / "cifar-10-batches-py").exists()
    assert not list(target.iterdir())  # the partial archive is gone too


# ----------------------------------------------------------------------------- splits


def test_splits_validation_is_the_tail(tiny_cifar: Path) -> None:
    arrays = D.load_cifar("cifar10", tiny_cifar)
    splits = D.make_splits(arrays, val_size=40)
    n = arrays.train_x.shape[0]
    assert torch.equal(splits.val_x, arrays.train_x[n - 40:])
    assert torch.equal(splits.train_x, arrays.train_x[: n - 40])
    mean, std = D.channel_stats(arrays.train_x[: n - 40])
    x = arrays.train_x[: n - 40].double() / 255
    assert torch.allclose(mean.double(), x.mean((0, 2, 3)), atol=1e-5)
    assert torch.allclose(std.double(), x.std((0, 2, 3), unbiased=False), atol=1e-5)
    assert torch.equal(splits.mean, mean)


def test_subset_first_n_and_balanced(tiny_cifar: Path) -> None:
    arrays = D.load_cifar("cifar10", tiny_cifar)
    first = D.make_splits(arrays, val_size=20, train_subset=30)
    assert torch.equal(first.train_x, arrays.train_x[:30])
    balanced = D.make_splits(arrays, val_size=20, train_subset=20, balanced=True)
    assert torch.bincount(balanced.train_y, minlength=10).tolist() == [2] * 10
    idx = D.subset_indices(arrays.train_y[:300], 23, 10, True)
    assert torch.bincount(arrays.train_y[idx], minlength=10).tolist() == [3, 3, 3] + [2] * 7
    assert torch.all(idx[1:] > idx[:-1])  # original order kept
    # each chosen image is among the first of its class
    for k in range(10):
        chosen = idx[arrays.train_y[idx] == k]
        assert torch.equal(chosen, (arrays.train_y[:300] == k).nonzero().squeeze(1)[: len(chosen)])
    with pytest.raises(ValueError, match="train-subset"):
        D.make_splits(arrays, val_size=20, train_subset=10_000)
    with pytest.raises(ValueError, match="validation size"):
        D.make_splits(arrays, val_size=10_000)


# ----------------------------------------------------------------------------- augmentation


def _images(n: int = 16) -> torch.Tensor:
    return torch.randint(1, 256, (n, 3, 32, 32), generator=torch.Generator().manual_seed(0),
                         dtype=torch.uint8)


def test_augment_shape_and_determinism() -> None:
    x = _images()
    a = D.augment(x, torch.Generator().manual_seed(1))
    b = D.augment(x, torch.Generator().manual_seed(1))
    c = D.augment(x, torch.Generator().manual_seed(2))
    assert a.shape == x.shape and a.dtype == torch.uint8
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_augment_really_crops() -> None:
    x = _images(64)
    out = D.augment(x, torch.Generator().manual_seed(3), pad=4, flip=False)
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    offsets = []
    for i in range(len(x)):
        hits = [(dy, dx) for dy in range(9) for dx in range(9)
                if torch.equal(out[i], padded[i, :, dy:dy + 32, dx:dx + 32])]
        assert len(hits) == 1
        offsets.append(hits[0])
    assert len(set(offsets)) > 20  # many different offsets, including shifted ones
    assert (out == 0).any()  # zero padding shows up


def test_augment_really_flips() -> None:
    x = _images(64)
    out = D.augment(x, torch.Generator().manual_seed(4), pad=0, flip=True)
    same = [torch.equal(out[i], x[i]) for i in range(64)]
    flipped = [torch.equal(out[i], x[i].flip(2)) for i in range(64)]
    assert all(s or f for s, f in zip(same, flipped))
    assert 15 < sum(flipped) < 49


def test_loader_covers_every_image_once_and_normalises(tiny_cifar: Path) -> None:
    splits = D.make_splits(D.load_cifar("cifar10", tiny_cifar), val_size=20)
    n = splits.train_x.shape[0]  # 300
    loader = D.BatchLoader(splits.train_x, torch.arange(n), 32, splits.mean, splits.std,
                           train=True, generator=torch.Generator().manual_seed(0))
    seen = torch.cat([y for _, y in loader])
    assert len(loader) == 10 and sorted(seen.tolist()) == list(range(n))
    assert not torch.equal(seen, torch.arange(n))  # shuffled
    plain = D.BatchLoader(splits.train_x, splits.train_y, 1000, splits.mean, splits.std, train=False)
    x, _ = next(iter(plain))
    assert x.dtype == torch.float32
    assert torch.allclose(x.mean((0, 2, 3)), torch.zeros(3), atol=1e-4)
    assert torch.allclose(x.std((0, 2, 3)), torch.ones(3), atol=1e-2)
    cl = D.BatchLoader(splits.val_x, splits.val_y, 8, splits.mean, splits.std, train=False,
                       channels_last=True)
    assert next(iter(cl))[0].is_contiguous(memory_format=torch.channels_last)


def test_loader_drops_a_single_trailing_training_image() -> None:
    x = _images(33)
    loader = D.BatchLoader(x, torch.zeros(33, dtype=torch.long), 16, torch.zeros(3), torch.ones(3),
                           train=True, generator=torch.Generator().manual_seed(0))
    assert [len(y) for _, y in loader] == [16, 16]
    evaluation = D.BatchLoader(x, torch.zeros(33, dtype=torch.long), 16, torch.zeros(3),
                               torch.ones(3), train=False)
    assert [len(y) for _, y in evaluation] == [16, 16, 1]


# ----------------------------------------------------------------------------- real data


def test_real_cifar10_slice() -> None:
    root = shared_data_dir()
    if root is None:
        pytest.skip("real CIFAR-10 not found in ../shared/data or $EDLOSS_DATA")
    folder = root / "cifar-10-batches-py"
    x, y = D.load_batch(folder / "data_batch_5", "labels", 10)
    assert x.shape == (10_000, 3, 32, 32) and y.shape == (10_000,)
    assert torch.bincount(y, minlength=10).min() > 900
    # the data README's train statistics (over all 50,000 images) hold on one batch to ~1e-2
    mean, std = D.channel_stats(x)
    assert torch.allclose(mean, torch.tensor([0.4913, 0.4821, 0.4465]), atol=0.01)
    assert torch.allclose(std, torch.tensor([0.2452, 0.2428, 0.2606]), atol=0.01)
    # last 5,000 images of the training set = the default validation split
    out = D.augment(x[-256:], torch.Generator().manual_seed(0))
    assert out.shape == (256, 3, 32, 32)


def test_symmetric_label_noise_flips_exactly_the_asked_share_of_each_class() -> None:
    labels = torch.arange(10).repeat_interleave(50)[torch.randperm(500, generator=torch.Generator().manual_seed(1))]
    noisy, flipped = D.flip_labels(labels, 10, 0.4, seed=7)
    changed = (noisy != labels).nonzero().flatten()
    assert torch.equal(changed, flipped)  # every flipped label moved to another class
    for c in range(10):
        assert int(((labels == c) & (noisy != labels)).sum()) == 20  # floor(0.4 * 50)
    again, same = D.flip_labels(labels, 10, 0.4, seed=7)
    assert torch.equal(again, noisy) and torch.equal(same, flipped)  # the noise seed decides
    assert not torch.equal(D.flip_labels(labels, 10, 0.4, seed=8)[0], noisy)
    assert torch.equal(D.flip_labels(labels, 10, 0.0, seed=7)[0], labels)


def test_label_noise_refuses_what_it_cannot_do() -> None:
    labels = torch.arange(10).repeat(3)
    with pytest.raises(ValueError, match="flips no label"):
        D.flip_labels(labels, 10, 0.2, seed=0)  # floor(0.2 * 3) = 0 for every class
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        D.flip_labels(labels, 10, 1.0, seed=0)


@pytest.fixture(scope="session")
def real_cifar100(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from _cifar_fixtures import shared_cifar100_dir

    root = shared_cifar100_dir(tmp_path_factory.mktemp("cifar100"))
    if root is None:
        pytest.skip("real CIFAR-100 not found: no cifar-100-python/ in $EDLOSS_DATA or ./data, and no "
                    "../shared/data/cifar-100-jpeg archive (with Pillow) to materialise one from")
    return root


def test_real_cifar100_slice(real_cifar100: Path) -> None:
    """The real CIFAR-100: fine labels, 500/100 images per class, validation as the tail, a balanced subset."""
    splits = D.load_splits("cifar100", real_cifar100, val_size=5000, train_subset=1000, balanced=True)
    assert splits.num_classes == 100 and len(splits.classes) == 100 and "apple" in splits.classes
    assert torch.bincount(splits.train_y, minlength=100).tolist() == [10] * 100
    assert splits.val_x.shape == (5000, 3, 32, 32) and splits.test_x.shape[0] == 10_000
    assert torch.bincount(splits.test_y, minlength=100).tolist() == [100] * 100
    assert 0.45 < float(splits.mean[0]) < 0.55  # CIFAR-100's red-channel mean is 0.507


def test_reserve_sets_the_tail_aside_before_validation(tiny_cifar: Path) -> None:
    full = D.load_splits("cifar10", tiny_cifar, val_size=32)
    reserved = D.load_splits("cifar10", tiny_cifar, val_size=32, reserve=40)
    n = full.train_x.shape[0] + 32
    assert reserved.train_x.shape[0] == n - 40 - 32
    assert torch.equal(reserved.val_x, full.train_x[n - 40 - 32 : n - 40])  # validation: just before the reserve
    with pytest.raises(ValueError, match="reserve"):
        D.load_splits("cifar10", tiny_cifar, reserve=n)
