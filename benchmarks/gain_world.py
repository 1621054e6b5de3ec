"""Shape or size? The students worlds asked what a loss's gradient *size* does, before CIFAR is.

Every EDL loss is exported with its gradient anchored to cross-entropy's at the uniform prediction
(so CE's learning rate carries over). GCE's gradient is 3-5 times smaller than CE's wherever it
is not saturated, and the shipped noise losses have GCE's bounded shape at CE's size. With one
learning rate for every arm the size is a step size, and under label noise a smaller step
memorises less in a fixed budget. This scores each loss at several ``gain`` values (the lab's
``name:gain=G``, the loss times G) in every world of the grid (``edloss.students.PRESETS``) on
the panel's tasks (2 draws x 32 tasks, the same for every arm), per regime, and writes what each
world predicts: which gain of each loss is best and whether it beats GCE. The CIFAR runs that
test the prediction are in ``docs/figures/students/cifar/``.

    python benchmarks/gain_world.py --out docs/figures/students/gain-world.json [--only WORLD ...]

Resumable: rows already in ``OUT``'s jsonl beside it are kept.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

import torch

from edloss.configs import versions
from edloss.files import append_jsonl, atomic_write_json, read_jsonl
from edloss.lab.world import PANEL_SEED, REGIMES, world_loss
from edloss.students import PRESETS, WorldConfig, reference_results, sample_tasks, score_module

GAINS = (0.25, 0.5, 1.0, 2.0)
LOSSES: dict[str, list[str]] = {  # regime -> the losses scored at every gain (GCE and CE at 1 and below: the references)
    "clean": ["edl", "poly1", "ce"],
    "noise-0.4": ["edl:name=noise-0.4-k10", "gce", "ce"],
    "noise-0.6": ["edl:name=noise-0.6-k10", "gce", "ce"],
}


def spec_at(spec: str, gain: float) -> str:
    """``spec`` with ``gain=G`` added (gain 1: the spec itself, as the panel names it)."""
    if gain == 1.0:
        return spec
    return f"{spec}{',' if ':' in spec else ':'}gain={gain:g}"


def score(world: WorldConfig, regime: str, specs: list[str], repeats: int, done: set[tuple[str, str, str]],
          name: str, rows_path: Path) -> None:
    """Score every spec not yet in ``done`` in this world at this regime; append each row."""
    todo = [s for s in specs if (name, regime, s) not in done]
    if not todo:
        return
    cfg = replace(world, **REGIMES[regime])
    draws = []
    for r in range(repeats):
        tasks = sample_tasks(cfg, torch.Generator().manual_seed(PANEL_SEED + r))
        draws.append((tasks, reference_results(tasks, cfg)))
    for spec in todo:
        start = time.perf_counter()
        module = world_loss(spec)
        scores = [score_module(module, tasks, cfg, ref) for tasks, ref in draws]
        row = {"world": name, "regime": regime, "spec": spec,
               **{k: sum(s[k] for s in scores) / len(scores) for k in scores[0]}, "seconds": time.perf_counter() - start}
        append_jsonl(rows_path, row)
        print(f"  {name:18s} {regime:9s} {spec:36s} acc {100 * row['accuracy_delta']:+6.2f}  ECE {100 * row['ece_delta']:+6.2f}", flush=True)


def summarise(rows: list[dict], worlds: list[str]) -> dict:
    """Per world and regime: every spec's accuracy delta, and each loss's best gain."""
    out: dict = {}
    for name in worlds:
        for regime, bases in LOSSES.items():
            mine = {r["spec"]: r for r in rows if r["world"] == name and r["regime"] == regime}
            if not mine:
                continue
            entry = {"accuracy_delta": {s: round(100 * r["accuracy_delta"], 3) for s, r in mine.items()},
                     "ece_delta": {s: round(100 * r["ece_delta"], 3) for s, r in mine.items()}, "best_gain": {}}
            for base in bases:
                at = {g: mine[spec_at(base, g)]["accuracy_delta"] for g in GAINS if spec_at(base, g) in mine}
                if at:
                    entry["best_gain"][base] = max(at, key=at.get)
            out.setdefault(name, {})[regime] = entry
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="docs/figures/students/gain-world.json")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--only", nargs="+", choices=list(PRESETS))
    parser.add_argument("--regimes", nargs="+", choices=list(LOSSES), default=list(LOSSES))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    rows_path = out.with_suffix(".rows.jsonl")
    rows = read_jsonl(rows_path) if rows_path.exists() else []
    done = {(r["world"], r["regime"], r["spec"]) for r in rows}
    worlds = args.only or list(PRESETS)
    for name in worlds:
        for regime in args.regimes:
            specs = [spec_at(base, g) for base in LOSSES[regime] for g in GAINS]
            score(replace(WorldConfig(), **PRESETS[name]), regime, specs, args.repeats, done, name, rows_path)
    rows = read_jsonl(rows_path)
    result = {"gains": GAINS, "losses": LOSSES, "repeats": args.repeats, "tasks_seed": PANEL_SEED, "versions": versions(),
              "worlds": summarise(rows, list(PRESETS))}
    atomic_write_json(out, result)
    for name, by in result["worlds"].items():
        for regime, entry in by.items():
            print(f"{name:18s} {regime:9s} best gain: " + ", ".join(f"{b} x{g:g}" for b, g in entry["best_gain"].items()))


if __name__ == "__main__":
    main()
