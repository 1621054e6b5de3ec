"""A run folder's records: the file names, result.json read back, the checkpoint checked
against the config and the loss it was made with, and epochs.jsonl kept in step with it."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from edloss.files import atomic_write_text, read_jsonl
from edloss.files import writing as _writing
from edloss.lab.losses import spec_definition
from edloss.lab.recipe import TrainConfig, config_diff

CHECKPOINT = "checkpoint.pt"
EPOCHS = "epochs.jsonl"
RESULT = "result.json"
CHECKPOINT_FORMAT = "edloss-train-checkpoint"


def _refuse(out_dir: Path, what: str, diff: list[str]) -> ValueError:
    if diff and diff[0].startswith("the loss "):  # same options, another loss behind them
        return ValueError(f"{out_dir} holds a {what} of another loss: {'; '.join(diff)}. Restore that loss, "
                          "choose another --out folder, or start over with --fresh (deletes that run's "
                          "checkpoint and results)")
    return ValueError(
        f"{out_dir} holds a {what} from a different config ({'; '.join(diff)}). "
        "Pass the same options to resume it, choose another --out folder, "
        "or start over with --fresh (deletes that run's checkpoint and results)."
    )


def read_result(out_dir: Path) -> dict[str, Any] | None:
    """The run's result.json, None when there is none (or a torn one: it is retrained), or a
    ValueError naming the file when it holds something else than a result."""
    path = Path(out_dir) / RESULT
    if not path.is_file():
        return None
    try:
        result = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None  # a torn file cannot happen with atomic writes, but never trust one
    if not isinstance(result, dict) or not isinstance(result.get("config", {}), dict):
        raise ValueError(f"{path} is not a training result (it holds a JSON {type(result).__name__}); "
                         "delete it or rerun with --fresh")
    missing = [key for key in RESULT_KEYS if key not in result]
    if missing:  # a foreign file: describing it against a config it never had would invent one
        raise ValueError(f"{path} is not an edloss training result (it has no {' or '.join(repr(k) for k in missing)}); "
                         "move it away, choose another --out folder, or rerun with --fresh")
    return result


RESULT_KEYS = ("status",)  # what every result.json edloss writes holds, finished, diverged or incomplete


DEFINITION_KEY = "loss_definition_sha256"  # in results and checkpoints: which loss the run trained with


def definition_diff(saved: dict[str, Any], spec: str, definition: str | None) -> list[str]:
    """The loss behind ``spec`` differs from the one a saved run (result or checkpoint) trained
    with: the same ``edl:PATH`` after PATH was overwritten. Runs saved before the field existed
    are trusted, as config fields added later are."""
    if DEFINITION_KEY not in saved or saved[DEFINITION_KEY] == definition:
        return []
    return [f"the loss {spec!r} is not the one the run trained with (definition sha256 "
            f"{str(saved[DEFINITION_KEY])[:12]}... then, {str(definition)[:12]}... now)"]


def is_finished(out_dir: Path, config: TrainConfig) -> bool:
    """True when ``out_dir`` holds a result (finished or diverged) for exactly this config and
    the loss its spec builds today."""
    result = read_result(out_dir)
    return (bool(result) and not config_diff(result.get("config", {}), asdict(config))
            and not definition_diff(result, config.loss, spec_definition(config.loss)))


CHECKPOINT_KEYS = ("epoch", "config", "model", "optimizer", "scheduler", "rng", "history", "train_seconds")


def _load_checkpoint(path: Path, config: TrainConfig, definition: str | None) -> dict[str, Any]:
    """The checkpoint to resume from, refusing one of another config or another loss (resuming
    would train one run with two losses), and naming a damaged one with the way out."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(f"{path} cannot be read ({type(err).__name__}: {err}); delete it or "
                         "rerun with --fresh") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not an edloss training checkpoint; delete it or rerun with --fresh "
                         "(or use another --out)")
    missing = [key for key in CHECKPOINT_KEYS if key not in ckpt]
    if missing or not isinstance(ckpt["config"], dict):
        raise ValueError(f"{path} is damaged (no valid {', '.join(missing) or 'config'}); delete it or rerun with --fresh")
    diff = config_diff(ckpt["config"], asdict(config)) or definition_diff(ckpt, config.loss, definition)
    if diff:
        raise _refuse(path.parent, "checkpoint", diff)
    return ckpt


def _sync_epochs(path: Path, history: list[dict]) -> None:
    """Make epochs.jsonl say what the checkpoint says. A torn last line (a crash or full disk
    mid-write) is cut with a note, and lines of an epoch whose checkpoint never landed are
    dropped; the checkpoint's history is the record, the file only mirrors it."""
    try:
        logged = read_jsonl(path, repair=True)
    except ValueError as err:  # damage before the last line: the checkpoint still has it all
        print(f"note: {err}; rewriting it from the checkpoint", file=sys.stderr)
        logged = None
    if logged != history or not path.exists():
        with _writing(path):
            atomic_write_text(path, "".join(json.dumps(row) + "\n" for row in history))


def _remove_run_files(out_dir: Path) -> None:
    for name in (CHECKPOINT, EPOCHS, RESULT):
        (out_dir / name).unlink(missing_ok=True)
