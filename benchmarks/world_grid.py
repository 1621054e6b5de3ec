"""Which world predicts CIFAR? ``edloss world-check`` over a grid of world knobs, one world at a time.

Each world's panel scores go to ``OUT/WORLD/world_check.json`` (every finished arm is kept in
``OUT/WORLD/rows.jsonl``, so a stopped grid resumes and a panel arm added later costs only itself), and a table of Spearman correlations per regime and half to ``OUT/grid.json`` and
stdout. Choose a world by its **calibration** half; its **held-out** half is the honest estimate.

    python benchmarks/world_grid.py --out runs/world-grid --threads 1 [--only NAME ...]
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import torch

from edloss.files import atomic_write_json
from edloss.lab.world import REGIMES, world_check
from edloss.students import PRESETS, WorldConfig

BASE = WorldConfig()
WORLDS: dict[str, WorldConfig] = {name: replace(BASE, **knobs) for name, knobs in PRESETS.items()}  # edloss.students.PRESETS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/world-grid")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--only", nargs="+", choices=list(WORLDS))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    table = {}
    for name in args.only or list(WORLDS):
        path = out / name / "world_check.json"
        print(f"== {name}", flush=True)  # arms scored before are read back from the world's rows.jsonl
        world_check(WORLDS[name], list(REGIMES), out / name, args.repeats, with_ranking=name == "gaussian-default",
                    progress=False, command=f"benchmarks/world_grid.py --only {name}")
        result = json.loads(path.read_text())
        table[name] = {regime: {half: c["spearman"] for half, c in by["world"].items()} for regime, by in result["regimes"].items()}
        table[name]["seconds"] = result["wall_seconds"]
    atomic_write_json(out / "grid.json", table)
    print("| world | " + " | ".join(f"{r} cal / held-out / all" for r in REGIMES) + " | minutes |")
    print("|---" * (len(REGIMES) + 2) + "|")
    for name, row in table.items():
        cells = [f"{row[r]['calibration']:+.2f} / {row[r]['heldout']:+.2f} / {row[r]['all']:+.2f}" for r in REGIMES if r in row]
        print(f"| {name} | " + " | ".join(cells) + f" | {row['seconds'] / 60:.1f} |")


if __name__ == "__main__":
    main()
