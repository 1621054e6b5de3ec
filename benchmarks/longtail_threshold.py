"""Where does the loss evolved for a long tail start to beat the default prior-aware loss? Asked of
the long-tail students world (the one the LT world-check trusted: gaussian-hard +0.80 held-out,
gaussian-default +1.00), over imbalance factors, before ``EDLLoss.pretrained(class_counts=...)``
switches between them.

Each world and imbalance factor: 2 draws x 32 tasks (the world-check's PANEL_SEED draws), each
loss told the tasks' counts; score = balanced test accuracy of its students minus CE's students'
(points). Prints a table and writes JSON (atomically; reruns resume from it).

    python benchmarks/longtail_threshold.py --out docs/figures/longtail/threshold.json --threads 1
    python benchmarks/longtail_threshold.py --classes 100 --imbalances 10 100 --repeats 2   # does K matter?
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from edloss.files import atomic_write_json
from edloss.lab.world import PANEL_DIR, PANEL_SEED, told_counts, world_loss
from edloss.students import PRESETS, WorldConfig, reference_results, sample_tasks, score_module

LOSSES = {
    "edl-prior (default weights)": "edl:prior_aware=true",
    "edl-lt (evolved, gaussian-default)": "edl:checkpoint={panel}/students-longtail-100,prior_aware=true",
    "edl-lt-hard (evolved, gaussian-hard)": "edl:checkpoint={panel}/students-longtail-100-hard,prior_aware=true",
    "edl (default, not told)": "edl",
    "logit_adjusted": "logit_adjusted",
}
WORLDS = ("gaussian-default", "gaussian-hard")
IMBALANCES = (1.0, 2.0, 5.0, 10.0, 30.0, 100.0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("docs/figures/longtail/threshold.json"))
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--classes", type=int, default=10, help="K of every task (the losses were evolved at 10)")
    ap.add_argument("--imbalances", type=float, nargs="+", default=list(IMBALANCES))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    done = json.loads(args.out.read_text())["rows"] if args.out.is_file() else []
    rows = list(done)
    seen = {(r["world"], r.get("classes", 10), r["imbalance"], r["loss"]) for r in rows}
    for world_name in WORLDS:
        for rho in args.imbalances:
            todo = [name for name in LOSSES if (world_name, args.classes, rho, name) not in seen]
            if not todo:
                continue
            cfg = replace(WorldConfig(), **PRESETS[world_name], imbalance=rho, label_noise=0.0,
                          classes=(args.classes, args.classes))
            draws = []
            for r in range(args.repeats):
                tasks = sample_tasks(cfg, torch.Generator().manual_seed(PANEL_SEED + r))
                draws.append((tasks, reference_results(tasks, cfg)))
            for name in todo:
                module = world_loss(LOSSES[name], PANEL_DIR)
                start = time.perf_counter()
                scores = [score_module(told_counts(module, t), t, cfg, ref)["accuracy_delta"] for t, ref in draws]
                row = {"world": world_name, "classes": args.classes, "imbalance": rho, "loss": name, "spec": LOSSES[name],
                       "score": 100 * sum(scores) / len(scores), "draws": [100 * s for s in scores],
                       "seconds": time.perf_counter() - start}
                print(f"{world_name:17s} K {args.classes} rho {rho:5g}  {name:38s} {row['score']:+6.2f}", file=sys.stderr, flush=True)
                rows.append(row)
                atomic_write_json(args.out, {"tasks": WorldConfig().tasks, "repeats": args.repeats, "panel_seed": PANEL_SEED,
                                             "torch": torch.__version__, "rows": rows})
    print_table(rows)
    return 0


def print_table(rows: list[dict]) -> None:
    for world_name in WORLDS:
        for k in sorted({r.get("classes", 10) for r in rows}):
            mine = [r for r in rows if r["world"] == world_name and r.get("classes", 10) == k]
            rhos = sorted({r["imbalance"] for r in mine})
            print(f"\n{world_name}, K = {k}: balanced accuracy of the students minus CE's (points)")
            print("| loss | " + " | ".join(f"rho {r:g}" for r in rhos) + " |")
            print("|---|" + "---|" * len(rhos))
            for name in LOSSES:
                cells = {r["imbalance"]: r["score"] for r in mine if r["loss"] == name}
                print(f"| {name} | " + " | ".join(f"{cells[r]:+.2f}" if r in cells else "—" for r in rhos) + " |")


if __name__ == "__main__":
    raise SystemExit(main())
