"""Runs that mean what they say (issue 23) and CIFAR labels that are what they claim (issue 21.6):
a --fresh that waits for the lock, resumed and reused runs checked against the loss definition,
summaries labelled with the runs' own recipe, repeated seeds, and one-line errors for the damaged
files and values a hostile user tried."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest

from _cifar_fixtures import _one_thread, tiny_cifar  # noqa: F401
from edloss.lab import data as D


# ---------------------------------------------------------------------- CIFAR labels (issue 21.6)
def _batch(path: Path, labels: list, extra: dict | None = None) -> Path:
    batch = {b"batch_label": b"x", b"labels": labels, b"data": np.zeros((len(labels), 3072), np.uint8), **(extra or {})}
    path.write_bytes(pickle.dumps(batch, protocol=2))
    return path


@pytest.mark.parametrize("labels, what", [([0, 3.7, 1], "3.7"), ([0, 2**70], f"outside 0..9 (e.g. {2**70})"), ([0, float("nan")], "nan"),
                                          (["1", "2"], "integer class indices")])
def test_non_integer_or_huge_labels_are_refused_naming_the_file(tmp_path: Path, labels: list, what: str) -> None:
    path = _batch(tmp_path / "data_batch_1", labels)
    with pytest.raises(ValueError, match="data_batch_1") as err:
        D.load_batch(path, "labels", 10)
    assert what in str(err.value)


def test_integral_float_labels_still_load(tmp_path: Path) -> None:
    _, y = D.load_batch(_batch(tmp_path / "b", [0.0, 3.0, 9.0]), "labels", 10)
    assert y.tolist() == [0, 3, 9]


def test_a_batch_with_bytes_and_text_label_keys_is_refused(tmp_path: Path) -> None:
    path = _batch(tmp_path / "data_batch_1", [0, 1], {"labels": [5, 6]})
    with pytest.raises(ValueError, match="data_batch_1.*'labels'.*both as bytes and as text"):
        D.load_batch(path, "labels", 10)
