"""Speed of the students world: one generation (P individuals x T tasks, plus CE's T students).

    python benchmarks/bench_students.py [--threads 1 2]   # table + benchmarks/results/bench_students.json

Target (issue 19): P = 32 x 8 tasks, one generation <= 10 s on the 2 cores. Run it on a quiet
machine: a generation is a few hundred batched matmuls per step, and a second job halves it.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import print_table, write_results  # noqa: E402

from edloss import EDLLoss  # noqa: E402
from edloss.students import WorldConfig, evaluate_population, sample_tasks  # noqa: E402


def time_generation(world: WorldConfig, population: int, repeat: int) -> float:
    """Best wall seconds of a whole generation: fresh tasks, CE reference, P x T students, scoring."""
    loss = EDLLoss.pretrained()
    theta = loss.net.flat().detach() + 0.05 * torch.randn(population, loss.net.flat().numel(), generator=torch.Generator().manual_seed(0))
    best = float("inf")
    for r in range(repeat):
        start = time.perf_counter()
        tasks = sample_tasks(world, torch.Generator().manual_seed(r))
        evaluate_population(theta, loss.net.config, tasks, world)
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--population", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    worlds = {"gaussian (default)": WorldConfig(), "gaussian, width 128": replace(WorldConfig(), width=128),
              "images": replace(WorldConfig(), family="images")}
    rows = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        for name, world in worlds.items():
            seconds = time_generation(world, args.population, args.repeat)
            rows.append({"world": name, "threads": threads, "population": args.population, "tasks": world.tasks,
                         "students": (args.population + 1) * world.tasks, "seconds_per_generation": seconds})
            print_table(rows[-1:], list(rows[-1]))
    print()
    print_table(rows, list(rows[0]))
    print(f"wrote {write_results('bench_students', {'rows': rows, 'target_seconds': 10})}")


if __name__ == "__main__":
    main()
