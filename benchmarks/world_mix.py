"""Do mixtures of worlds predict CIFAR better than one world? Read from the world grid, no training.

A mixture's score for a loss is the mean of its scores in the mixture's worlds (``world.mix``;
``edloss world-check`` of a mixture computes exactly that, tested), so every mixture of the
grid's worlds can be judged from ``benchmarks/world_grid.py``'s rows. Two readings:

* **pre-registered** mixtures, named before looking (all worlds; the Gaussian ones; the search
  mixture of ``configs/students-mix-*.toml``), reported on both halves;
* **the calibration rule** over all 255 mixtures: best mean calibration-half Spearman over the
  regimes, ties broken by the calibration half's Pearson correlation, then by cost. With halves of
  4-7 arms many mixtures tie at a perfect calibration rank order, so the table also gives the
  held-out Spearman averaged over all tied mixtures: what the rule is worth on average.

    python benchmarks/world_mix.py [--grid runs/world-grid] [--out docs/figures/students/world-mix.json]
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import numpy as np
from scipy.stats import pearsonr, spearmanr

from edloss.files import atomic_write_json

PRE_REGISTERED = {
    "all worlds": None,  # filled with every world of the grid
    "gaussian worlds": ["gaussian-default", "gaussian-long", "gaussian-small-data", "gaussian-wide", "gaussian-hard", "gaussian-lr0.1"],
    "search mix (default + long + lr0.1 + wide)": ["gaussian-default", "gaussian-long", "gaussian-lr0.1", "gaussian-wide"],
    "selection (images-default + images-long)": ["images-default", "images-long"],
}
HALVES = ("calibration", "heldout", "all")


def load(grid: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in sorted(grid.glob("*/world_check.json"))}


def mixture_scores(checks: dict[str, dict], worlds: list[str], regime: str) -> dict[str, float]:
    per_arm: dict[str, list[float]] = {}
    for name in worlds:
        for row in checks[name]["rows"]:
            if row["regime"] == regime:
                per_arm.setdefault(row["label"], []).append(row["fitness"])
    return {label: float(np.mean(v)) for label, v in per_arm.items() if len(v) == len(worlds)}


def correlations(checks: dict[str, dict], worlds: list[str]) -> dict[str, dict[str, tuple[float, float]]]:
    """{regime: {half: (Spearman, Pearson)}} of the mixture's score against CIFAR accuracy."""
    first = checks[worlds[0]]
    out = {}
    for regime, by in first["regimes"].items():
        scores = mixture_scores(checks, worlds, regime)
        cifar = {r["label"]: r["cifar"] for r in first["rows"] if r["regime"] == regime}
        out[regime] = {}
        for half in HALVES:
            arms = [a for a in by["world"][half]["arms"] if a in scores]
            x, y = [scores[a] for a in arms], [cifar[a] for a in arms]
            out[regime][half] = (float(spearmanr(x, y)[0]), float(pearsonr(x, y)[0]))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grid", default="runs/world-grid")
    parser.add_argument("--out", default="runs/world-mix.json")
    args = parser.parse_args()
    checks = load(Path(args.grid))
    names = list(checks)
    regimes = list(checks[names[0]]["regimes"])
    minutes = {n: checks[n]["wall_seconds"] / 60 for n in names}
    table = {}
    for k in range(1, len(names) + 1):
        for worlds in itertools.combinations(names, k):
            table["+".join(worlds)] = correlations(checks, list(worlds))

    def calibration_key(name: str) -> tuple[float, float, float]:
        c = table[name]
        return (-np.mean([c[r]["calibration"][0] for r in regimes]), -np.mean([c[r]["calibration"][1] for r in regimes]),
                sum(minutes[w] for w in name.split("+")))

    ranked = sorted(table, key=calibration_key)
    tied = [n for n in ranked if calibration_key(n)[0] == calibration_key(ranked[0])[0]]
    pre = {label: "+".join(n for n in names if n in (worlds or names)) for label, worlds in PRE_REGISTERED.items()}

    def cells(c: dict) -> str:
        return " | ".join(" / ".join(f"{c[r][h][0]:+.2f}" for h in HALVES) for r in regimes)

    print("| mixture | " + " | ".join(f"{r}: cal / held-out / all" for r in regimes) + " |")
    print("|---" * (len(regimes) + 1) + "|")
    for label, name in pre.items():
        print(f"| {label} | {cells(table[name])} |")
    for name in names:
        print(f"| {name} alone | {cells(table[name])} |")
    print(f"| calibration rule's pick: {ranked[0]} | {cells(table[ranked[0]])} |")
    per_regime = {}  # the rule for one world per regime, as the world grid's table is read
    for r in regimes:
        pick = max(names, key=lambda n: (table[n][r]["calibration"][0], table[n][r]["calibration"][1]))
        per_regime[r] = {"world": pick, "calibration": table[pick][r]["calibration"][0], "heldout": table[pick][r]["heldout"][0]}
    print("one world per regime by the rule: " + "; ".join(f"{r} {v['world']} (calibration {v['calibration']:+.2f}, held-out {v['heldout']:+.2f})"
                                                         for r, v in per_regime.items()))
    mean_tied = {r: float(np.mean([table[n][r]["heldout"][0] for n in tied])) for r in regimes}
    print(f"\n{len(tied)} of {len(table)} mixtures tie at the best mean calibration Spearman; their mean held-out Spearman: "
          + ", ".join(f"{r} {v:+.2f}" for r, v in mean_tied.items()))
    atomic_write_json(Path(args.out), {"pre_registered": {label: table[name] for label, name in pre.items()},
                                       "single": {n: table[n] for n in names}, "rule_pick": {"mixture": ranked[0], **table[ranked[0]]}, "rule_pick_per_regime": per_regime,
                                       "tied_at_best_calibration": len(tied), "tied_mean_heldout": mean_tied,
                                       "mixtures": len(table), "grid": args.grid, "value": "(Spearman, Pearson) per regime and half"})


if __name__ == "__main__":
    main()
