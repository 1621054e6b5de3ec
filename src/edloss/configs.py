"""Dataclass configs to and from plain dicts (JSON/TOML), with errors that name the bad key."""

from __future__ import annotations

import dataclasses
import json
import platform
import sys
import typing
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def to_dict(cfg: Any) -> dict[str, Any]:
    """A (nested) dataclass as JSON-ready data: tuples become lists."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def from_dict(cls: type[T], data: dict[str, Any], where: str = "config") -> T:
    """Build ``cls`` from a dict, recursing into nested dataclasses; unknown keys are an error."""
    if not isinstance(data, dict):
        raise ValueError(f"{where} must be a table/object, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"unknown key(s) {unknown} in {where}; valid keys: {sorted(fields)}")
    kwargs = {}
    for name, value in data.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = from_dict(hint, value, f"{where}.{name}")
        elif typing.get_origin(hint) is tuple and isinstance(value, (list, tuple)):
            kwargs[name] = tuple(value)
        else:
            _check_scalar(hint, value, f"{where}.{name}")
            kwargs[name] = value
    try:
        return cls(**kwargs)
    except TypeError as err:
        raise ValueError(f"invalid {where}: {err}") from err


def _check_scalar(hint: Any, value: Any, where: str) -> None:
    """A number, string or flag of the wrong type is named here, before a check deep inside fails vaguely."""
    numbers = {float: (int, float), int: (int,)}
    if hint in numbers and (isinstance(value, bool) or not isinstance(value, numbers[hint])):
        raise ValueError(f"{where} must be {'a number' if hint is float else 'an integer'}, got {value!r}")
    if hint in (str, bool) and not isinstance(value, hint):
        raise ValueError(f"{where} must be {'a string' if hint is str else 'true or false'}, got {value!r}")


def load_file(path: Path) -> dict[str, Any]:
    """Read a JSON or TOML config file."""
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    text = path.read_text()
    if path.suffix == ".toml":
        try:
            import tomllib
        except ModuleNotFoundError:  # Python 3.10
            import tomli as tomllib  # type: ignore[no-redef]
        try:
            return tomllib.loads(text)
        except tomllib.TOMLDecodeError as err:
            raise ValueError(f"{path} is not valid TOML: {err}") from err
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON (use .toml for TOML): {err}") from err


def diff_dicts(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Human-readable differences between two nested dicts, e.g. ``es.seed: 0 -> 1``."""
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for key in sorted(set(old) | set(new)):
            out += diff_dicts(old.get(key), new.get(key), f"{prefix}{key}.")
        return out
    return [] if old == new else [f"{prefix.rstrip('.')}: {old!r} -> {new!r}"]


def versions() -> dict[str, str]:
    """Versions that decide the numbers a run produces."""
    import torch

    from edloss import __version__

    try:
        import numpy

        numpy_version = numpy.__version__
    except ModuleNotFoundError:  # the loss and its pretraining don't need numpy
        numpy_version = "absent"
    return {
        "edloss": __version__,
        "torch": torch.__version__,
        "numpy": numpy_version,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
    }
