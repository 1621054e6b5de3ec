"""Files a run writes: atomic writes, run-folder locks, and JSONL that survives a torn last line.

A crash, a kill or a full disk never leaves half a result or checkpoint behind (write to a
temporary file beside the target, then rename), two runs never write into one folder (an
exclusive lock held for the run's lifetime), and a line cut off mid-write is dropped on resume
with a note instead of blocking it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import io
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import torch

LOCK_FILE = ".lock"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file beside ``path``, then rename over it (atomic on POSIX).
    On any failure (a full disk, a read-only folder) the temporary file is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


def atomic_torch_save(obj: Any, path: Path) -> None:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue())


@contextlib.contextmanager
def writing(path: Path) -> Iterator[None]:
    """Name the file and the way out when a write fails (a full disk, a folder made read-only):
    the atomic writers have already removed their temporary file, and the last checkpoint stands."""
    try:
        yield
    except OSError as err:
        fix = "free some disk space" if err.errno in (errno.ENOSPC, errno.EDQUOT) else "fix the folder"
        raise OSError(err.errno, f"cannot write {path}: {err.strerror or err}; {fix}, then rerun the "
                                 "same command to resume from the last checkpoint") from None


def save_figure(fig: Any, path: Path, dpi: int = 110) -> Path:
    """Save a matplotlib figure atomically as PNG and close it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}.png")
    try:
        fig.savefig(tmp, dpi=dpi)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)
    return path


# ---------------------------------------------------------------------- output folders
def check_output_path(out: Path | str | None, option: str = "--out") -> Path:
    """The checks of ``prepare_output_folder`` that need no folder made (empty, a file, under a
    file): a command runs them first, so a bad --out is named before other errors and nothing is written."""
    if out is None or str(out).strip() == "":
        raise ValueError(f"{option} is empty; give a folder for the run's files")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{option} {out} exists and is not a folder; choose a folder path")
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(f"{option} {out} lies under {parent}, which is a file, not a folder")
            break
    return out


def prepare_output_folder(out: Path | str, option: str = "--out") -> Path:
    """Check that ``out`` can be a run folder (create it if needed), or raise a one-line error
    naming the path: empty, an existing file, under a file, a device, or not writable."""
    out = check_output_path(out, option)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ValueError(f"cannot create {option} {out}: {err.strerror or err}") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise ValueError(f"{option} {out} is not writable; choose another folder or fix its permissions")
    return out


@contextlib.contextmanager
def folder_kept_only_if_used(out: Path) -> Iterator[None]:
    """Remove ``out`` again when the block fails and ``out`` did not exist before it and holds
    nothing but the lock file: a one-line error (Ray missing, memory exhausted before the first
    write) then leaves no empty run folder behind to puzzle over."""
    existed = Path(out).exists()
    try:
        yield
    except BaseException:
        if not existed and Path(out).is_dir() and {p.name for p in Path(out).iterdir()} <= {LOCK_FILE}:
            (Path(out) / LOCK_FILE).unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                Path(out).rmdir()
        raise


class RunLock:
    """An exclusive lock on a run folder, held while the run writes into it.

    ``fcntl.flock`` on ``out/.lock``: released by the kernel when the process dies (even by
    kill -9), so a stale lock never blocks a resume. The file records who holds it."""

    def __init__(self, out: Path, what: str = "run") -> None:
        self.path = Path(out) / LOCK_FILE
        self.what = what
        self._fd: int | None = None

    def __enter__(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            holder = ""
            try:
                holder = os.read(fd, 500).decode(errors="replace").strip()
            finally:
                os.close(fd)
            if err.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise RunFolderBusy(f"{self.path.parent} is in use by another {self.what} ({holder or 'unknown process'}); "
                                    "wait for it to finish or choose another --out") from None
            raise
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()}, started {time.strftime('%Y-%m-%d %H:%M:%S')}, {' '.join(sys.argv[:1] + sys.argv[1:4])}".encode())
        self._fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


class RunFolderBusy(RuntimeError):
    """Another live process holds the run folder's lock."""


class LockedRun:
    """Base of a run that holds its folder's lock from construction until ``close()`` (or the end
    of a ``with`` block, or garbage collection; the kernel also drops it when the process dies),
    and counts wall time over resumed segments: ``elapsed_before`` comes from the checkpoint."""

    _lock: RunLock | None = None
    elapsed_before: float = 0.0
    segment_start: float = 0.0

    def close(self) -> None:
        if self._lock is not None:
            self._lock.__exit__(None, None, None)
            self._lock = None

    def __enter__(self) -> LockedRun:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - at interpreter exit; the kernel drops the lock anyway
            pass

    def elapsed(self) -> float:
        """Wall seconds of the whole run: earlier segments plus this one."""
        return self.elapsed_before + time.perf_counter() - self.segment_start


# ---------------------------------------------------------------------- JSONL
def read_jsonl(path: Path, repair: bool = False) -> list[dict[str, Any]]:
    """Rows of a JSONL file. A torn *last* line (a crash or full disk mid-write) is dropped with a
    note (and cut from the file when ``repair``); a damaged line elsewhere is an error naming it."""
    path = Path(path)
    if not path.exists():
        return []
    lines = path.read_text(errors="replace").splitlines()
    rows: list[dict[str, Any]] = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if not isinstance(row, dict):
                raise ValueError("not a JSON object")
        except ValueError as err:
            if number == len(lines):
                print(f"note: {path}: dropped a torn last line ({number}): the run was cut off mid-write", file=sys.stderr)
                if repair:
                    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))
                break
            raise ValueError(f"{path}, line {number}, is damaged ({err}); delete the file or the line, or pass --fresh") from None
        rows.append(row)
    return rows


def append_jsonl(path: Path, row: dict[str, Any]) -> None:
    """Append one row; the line is written with a single write call."""
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")
