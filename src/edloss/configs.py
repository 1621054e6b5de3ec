"""Dataclass configs to and from plain dicts (JSON/TOML), with errors that name the bad key."""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import platform
import sys
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def to_dict(cfg: Any) -> dict[str, Any]:
    """A (nested) dataclass as JSON-ready data: tuples become lists."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def from_dict(cls: type[T], data: dict[str, Any], where: str = "config") -> T:
    """Build ``cls`` from a dict, recursing into nested dataclasses; unknown keys are an error.

    Every value is type-checked against its field (with the key in the message) before the
    dataclass's own range checks run, and their errors are prefixed with ``where``."""
    if not isinstance(data, dict):
        raise ValueError(f"{where} must be a table/object, got {type(data).__name__}")
    hints = _hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"unknown key(s) {unknown} in {where}; valid keys: {sorted(fields)}")
    kwargs = {}
    for name, value in data.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = from_dict(hint, value, f"{where}.{name}")
        else:
            check_value(hint, value, f"{where}.{name}")
            kwargs[name] = tuple(value) if typing.get_origin(hint) is tuple else value
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as err:
        raise ValueError(f"invalid {where}: {err}") from err


@functools.lru_cache(maxsize=None)
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def check_fields(obj: Any) -> None:
    """Type-check every non-dataclass field of a dataclass instance (call from ``__post_init__``),
    so a float, string or flag where an integer belongs is named before any range check or run."""
    hints = _hints(type(obj))
    for f in dataclasses.fields(obj):
        hint = hints[f.name]
        if not dataclasses.is_dataclass(hint):
            check_value(hint, getattr(obj, f.name), f.name)


def describe_type(hint: Any) -> str | None:
    """'an integer', 'a list of 2 numbers', ... for the hints configs use; None for others."""
    simple = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}
    if hint in simple:
        return simple[hint]
    args = typing.get_args(hint)
    if _is_union(hint) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        inner = describe_type(rest[0]) if len(rest) == 1 else None
        return f"{inner} or null" if inner else None
    if typing.get_origin(hint) is tuple and args:
        plural = {int: "integers", float: "numbers", str: "strings", bool: "flags"}
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {plural.get(args[0], 'values')}"
        if len(set(args)) == 1:
            return f"a list of {len(args)} {plural.get(args[0], 'values')}"
    return None


def _is_union(hint: Any) -> bool:
    return typing.get_origin(hint) is typing.Union or isinstance(hint, types.UnionType)


def _matches(hint: Any, value: Any) -> bool:
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint in (str, bool):
        return isinstance(value, hint)
    args = typing.get_args(hint)
    if _is_union(hint):
        return any(value is None if a is type(None) else _matches(a, value) for a in args)
    if typing.get_origin(hint) is tuple and args:
        if not isinstance(value, (list, tuple)):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_matches(args[0], v) for v in value)
        return len(value) == len(args) and all(_matches(a, v) for a, v in zip(args, value))
    return True  # a hint configs don't use: left to the dataclass's own checks


def check_value(hint: Any, value: Any, where: str) -> None:
    """A number, string, flag or list of the wrong type is named here, before a check deep inside fails vaguely."""
    if not _matches(hint, value):
        raise ValueError(f"{where} must be {describe_type(hint) or hint}, got {value!r}")


def check_range(where: str, value: Any, lo: float | None = None, hi: float | None = None, lo_open: bool = False) -> None:
    """A finite ``value`` with ``lo <= value <= hi`` (``lo < value`` when ``lo_open``), or an error naming the key and range."""
    ok = isinstance(value, (int, float)) and math.isfinite(value)
    ok = ok and (lo is None or (value > lo if lo_open else value >= lo)) and (hi is None or value <= hi)
    if ok:
        return
    if lo is not None and hi is not None:
        bounds = f"in {'(' if lo_open else '['}{lo:g}, {hi:g}]"
    elif lo is not None:
        bounds = f"{'>' if lo_open else '>='} {lo:g}"
    else:
        bounds = f"<= {hi:g}"
    finite = "" if isinstance(value, int) else "finite and "
    raise ValueError(f"{where} must be {finite}{bounds}, got {value!r}")


def load_file(path: Path, sections: tuple[str, ...] = ("lossnet", "objective", "es")) -> dict[str, Any]:
    """Read a JSON or TOML config file, which must hold one object (a table of ``sections``)."""
    if path.is_dir():
        raise ValueError(f"config file {path} is a folder; pass the JSON or TOML file inside it")
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"config file {path} is not a text file (byte {err.start} is not UTF-8); "
                         "pass a JSON or TOML config") from None
    if path.suffix == ".toml":
        try:
            import tomllib
        except ModuleNotFoundError:  # Python 3.10
            import tomli as tomllib  # type: ignore[no-redef]
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as err:
            raise ValueError(f"{path} is not valid TOML: {err}") from err
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} is not valid JSON (use .toml for TOML): {err}") from err
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold an object/table with sections {', '.join(sections)}, got a JSON {type(data).__name__}")
    return data


def diff_dicts(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Human-readable differences between two nested dicts, e.g. ``es.seed: 0 -> 1``."""
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for key in sorted(set(old) | set(new)):
            out += diff_dicts(old.get(key), new.get(key), f"{prefix}{key}.")
        return out
    return [] if old == new else [f"{prefix.rstrip('.')}: {old!r} -> {new!r}"]


@functools.lru_cache(maxsize=1)
def source_revision() -> str:
    """The git commit the running edloss was imported from ("+dirty" when its files differ from
    it), or "not a git checkout" (an installed wheel: its version says which release). Numbers
    can move between commits of the same version (docs/EXPERIMENTS.md), so runs record it."""
    import subprocess

    here = Path(__file__).resolve().parent
    try:
        tracked = subprocess.run(["git", "-C", str(here), "ls-files", "--error-unmatch", "__init__.py"], capture_output=True,
                                 text=True, timeout=10)
        if tracked.returncode != 0:  # no repository, or a wheel installed into a venv inside someone's checkout
            return "not a git checkout"
        commit = subprocess.run(["git", "-C", str(here), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                                text=True, timeout=10)
        if commit.returncode != 0:
            return "not a git checkout"
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--", "."], capture_output=True,
                               text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "not a git checkout"
    return commit.stdout.strip() + ("+dirty" if dirty else "")


@functools.lru_cache(maxsize=1)
def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo's 'model name', else ``platform.processor()``, else the
    machine type). Pretraining's bytes depend on it: the same command and torch build gave other
    weights on an Intel Xeon than on the AMD EPYC the shipped losses were made on (issue 35)."""
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")) and ":" in line:
                name = line.split(":", 1)[1].strip()
                if name:
                    return name
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def cpu_capability() -> str:
    """The instruction set torch's CPU kernels dispatch to (AVX2, AVX512, ...): with the CPU model,
    what decides how float sums are ordered."""
    import torch

    try:
        return str(torch.backends.cpu.get_cpu_capability())
    except (AttributeError, RuntimeError):
        return "unknown"


def versions() -> dict[str, str]:
    """Versions that decide the numbers a run produces, with the CPU: pretraining and training are
    reproduced bit for bit on the same CPU and torch build, elsewhere only approximately."""
    import torch

    from edloss._version import __version__

    try:
        import numpy

        numpy_version = numpy.__version__
    except ModuleNotFoundError:  # the loss and its pretraining don't need numpy
        numpy_version = "absent"
    return {
        "edloss": __version__,
        "source": source_revision(),
        "torch": torch.__version__,
        "numpy": numpy_version,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cpu_capability": cpu_capability(),
    }
