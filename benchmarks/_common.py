"""Shared helpers for benchmark scripts: timing, tables, JSON results with provenance."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
ROOT = Path(__file__).resolve().parents[1]


def repo_relative(path: str | os.PathLike[str]) -> str:
    """A path as recorded in results: relative to the repository, never this machine's absolute path."""
    return os.path.relpath(Path(path).resolve(), ROOT)


def best_time(fn: Callable[[], object], repeat: int = 5, number: int = 10, warmup: int = 3) -> float:
    """Seconds per call: the best of ``repeat`` averages over ``number`` calls (noise only adds time)."""
    for _ in range(warmup):
        fn()
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(number):
            fn()
        best = min(best, (time.perf_counter() - start) / number)
    return best


def print_table(rows: list[dict], columns: list[str]) -> None:
    widths = [max(len(c), *(len(_fmt(r.get(c))) for r in rows)) for c in columns]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    for r in rows:
        print("  ".join(_fmt(r.get(c)).ljust(w) for c, w in zip(columns, widths)))


def _fmt(v: object) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "" if v is None else str(v)


def write_results(name: str, payload: dict) -> Path:
    """Write ``benchmarks/results/NAME.json`` atomically, with versions and thread count."""
    import torch

    from edloss.configs import versions

    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    payload = {**payload, "versions": versions(), "threads": torch.get_num_threads(), "cpus": os.cpu_count()}
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    tmp.replace(path)
    return path


class WithKernel:
    """A loss whose fused calls run EDL's inductor-compiled kernel (compiled on the first call per shape
    family). A plain callable, so ``torch.compile`` compiles the loss inside and the switch stays outside."""

    def __init__(self, loss: Callable) -> None:
        self.loss = loss

    def __call__(self, logits, target):
        from edloss import fused_op

        fused_op.use_compiled_kernel(True)
        try:
            return self.loss(logits, target)
        finally:
            fused_op.use_compiled_kernel(False)
