"""Would charging calibration make a world predict CIFAR better? Read from the world grid, no training.

The students fitness can charge ECE (``world.ece_weight``: fitness = accuracy delta + lambda * ECE
delta, both vs CE's students: ``ece_delta`` is CE's students' ECE minus this loss's, so positive is
better calibrated). Each world's ``world_check.json`` records both terms per panel arm,
so every lambda can be judged without rescoring: the Spearman correlation with CIFAR on the
calibration / held-out halves / all arms (``edloss.lab.world.correlations``, as world-check reports), and the test a search
cares about most: does the world rank each loss the search evolved in a world *below* the shipped
loss it started from, as CIFAR does? (A world that ranks it above is one the search exploits.)

    python benchmarks/world_terms.py [--grid docs/figures/students/world-grid] [--out docs/figures/students/world-terms.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from edloss.files import atomic_write_json
from edloss.lab.world import correlations

LAMBDAS = (0.0, 0.05, 0.1, 0.2, 0.5, 1.0)
EVOLVED = {  # (loss the search found in a world, the shipped loss it started from): CIFAR has every one below
    "clean": [("edl-students-clean", "edl-v4")],
    "noise-0.4": [("edl-students-noise", "edl-noise-tv-k10"), ("edl-students-noise-long", "edl-noise-tv-k10")],
    "noise-0.6": [("edl-students-noise-wide", "edl-noise-tv-k10"), ("edl-students-noise-images-cal", "edl-noise-tv-k10")],
}


def judge(rows: dict[str, dict], regime: str, lam: float) -> dict[str, float | int]:
    """Spearman per half for the score accuracy_delta + lam * ece_delta (the search's fitness), and evolved-below-start count."""
    score = {k: r["accuracy_delta"] + lam * r["ece_delta"] for k, r in rows.items()}
    by_half = correlations([{**r, "score": score[k]} for k, r in rows.items()], "score")
    out: dict[str, float | int] = {half: by_half[half]["spearman"] for half in ("calibration", "heldout", "all")}
    pairs = [(e, s) for e, s in EVOLVED[regime] if e in rows and s in rows]
    out["evolved_below_start"] = sum(score[e] < score[s] for e, s in pairs)
    out["evolved_pairs"] = len(pairs)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grid", default="docs/figures/students/world-grid")
    parser.add_argument("--out", default="docs/figures/students/world-terms.json")
    args = parser.parse_args()
    checks = sorted(Path(args.grid).glob("*/world_check.json"))
    if not checks:
        raise SystemExit(f"no WORLD/world_check.json under {args.grid}: point --grid at the output of benchmarks/world_grid.py")
    table: dict[str, dict[str, dict[str, dict]]] = {}
    for path in checks:
        result = json.loads(path.read_text())
        world = path.parent.name
        for regime in EVOLVED:
            rows = {r["label"]: r for r in result["rows"] if r["regime"] == regime and "ece_delta" in r}
            if rows:
                table.setdefault(regime, {})[world] = {f"{lam:g}": judge(rows, regime, lam) for lam in LAMBDAS}
    atomic_write_json(Path(args.out), {"lambdas": list(LAMBDAS), "grid": args.grid, "table": table,
                                       "score": "accuracy_delta + lambda * ece_delta (vs CE's students; ece_delta = CE's ECE - this loss's)"})
    for regime, worlds in table.items():
        print(f"\n{regime}: Spearman calibration / held-out / all; evolved losses ranked below their starts")
        print("| world | " + " | ".join(f"λ = {lam:g}" for lam in LAMBDAS) + " |")
        print("|---" * (len(LAMBDAS) + 1) + "|")
        for world, by in worlds.items():
            cells = [f"{c['calibration']:+.2f} / {c['heldout']:+.2f} / {c['all']:+.2f}, {c['evolved_below_start']}/{c['evolved_pairs']}"
                     for c in by.values()]
            print(f"| {world} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
