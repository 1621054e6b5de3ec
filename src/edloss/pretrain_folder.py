"""A pretraining run's folder: what a run writes there (and removes on ``--fresh``), the refusal of
a folder that holds someone else's files, and the metrics rows (``metrics.jsonl``, torn lines
repaired; ``metrics.csv``)."""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path
from typing import Any

from edloss.files import append_jsonl, atomic_write_text, read_jsonl, writing
from edloss.loss_file import CONFIG_FILE, WEIGHTS_FILE

# What a run writes into its folder; --fresh (or a start without a checkpoint) removes all of it.
RUN_FILES = ("loss", "summary.json", "loss_shape.png", "metrics.csv", "metrics.jsonl", "checkpoint.pt", "config.json")
LOSS_FILES = (CONFIG_FILE, WEIGHTS_FILE)  # what EDLLoss.save writes into loss/


def discard_previous_run(out: Path, names: tuple[str, ...] = RUN_FILES) -> None:
    """Remove what an earlier run wrote into ``out`` (exported loss first, config last), so an
    interrupted new run can never leave the old loss or summary looking like its own."""
    for name in names:
        path = Path(out) / name
        if path.is_dir() and not path.is_symlink():
            foreign = sorted(p.name for p in path.iterdir() if p.name not in LOSS_FILES and not p.name.startswith("."))
            if foreign:  # not a folder a run exported: never delete what we did not write
                raise ValueError(f"{path} holds files a pretraining run does not write ({', '.join(foreign[:3])}); "
                                 "move them or choose another --out")
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def holds_pretraining_run(out: Path) -> bool:
    """Whether ``out`` holds what ``edloss pretrain`` writes: a checkpoint, or the config.json it
    writes first (an object with its ``config``, ``command`` and ``versions``)."""
    if (Path(out) / "checkpoint.pt").is_file():
        return True
    try:
        saved = json.loads((Path(out) / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(saved, dict) and {"config", "command", "versions"} <= set(saved)


def check_run_folder(out: Path) -> None:
    """Refuse an existing, non-empty ``out`` that holds no pretraining run: starting (or
    ``--fresh``) replaces config.json, summary.json, metrics.csv and loss/, which there would be
    a user's own files. Hidden files (the lock) do not count."""
    out = Path(out)
    if not out.is_dir() or holds_pretraining_run(out):
        return
    present = sorted(_visible(out))
    if present:
        raise ValueError(f"--out {out} is not empty ({', '.join(present[:4])}{', ...' if len(present) > 4 else ''}) and holds no "
                         "edloss pretraining run, so its files could be replaced; choose a new or empty folder for --out")


def _visible(out: Path) -> list[str]:
    """The entries of ``out``, a folder's by its files (``loss/notes.txt``), hidden ones (the lock) left out."""
    names = []
    for path in out.iterdir():
        if path.name.startswith("."):
            continue
        inner = sorted(p.name for p in path.iterdir() if not p.name.startswith(".")) if path.is_dir() and not path.is_symlink() else []
        names += [f"{path.name}/{name}" for name in inner] or [path.name]
    return names


def append_row(out: Path, row: dict[str, Any]) -> None:
    with writing(out / "metrics.jsonl"):
        append_jsonl(out / "metrics.jsonl", row)


def truncate_metrics(out: Path, generation: int) -> None:
    """Drop metric rows written after the checkpoint (a resumed run recomputes them identically),
    and a last line torn by a crash or a full disk, with a note."""
    path = out / "metrics.jsonl"
    if path.exists():
        rows = [r for r in read_jsonl(path, repair=True) if isinstance(r.get("generation"), int) and r["generation"] < generation]
        atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


def write_csv(jsonl: Path, csv_path: Path) -> None:
    """The JSONL rows as a CSV table, written atomically."""
    rows = read_jsonl(jsonl, repair=True)
    columns: list[str] = []
    for row in rows:
        columns += [c for c in row if c not in columns]
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=columns)
    writer.writeheader()
    for row in rows:
        writer.writerow({k: json.dumps(v) if isinstance(v, list) else v for k, v in row.items()})
    atomic_write_text(csv_path, text.getvalue())
