"""Seconds of one search generation in an image students world, with the students' convolutions as
batched matmuls over unfolded patches (the form scoring keeps) or as grouped convolutions (the
form training uses now), side by side.

    python benchmarks/bench_images_world.py --threads 2 [--world images-k100] [--population 32] [--rounds 2]

A generation is what pretraining pays for each one: fresh tasks, CE's reference students, P x T
students trained and scored (``evaluate_population``). The two forms alternate so machine noise
hits both alike. The two forms round differently, and 300 steps of training amplify that, so a
single student can end a point apart; the table gives each form's population-mean fitness and
accuracy over CE's students, which should agree within the draws' noise. Issue 34's budget
for a K = 100 world is 15 s a generation on the project's 2 cores. Prints a table and writes
``benchmarks/results/bench_images_world.json``.
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

import edloss.students as students  # noqa: E402
from edloss import EDLLoss  # noqa: E402


def generation(world: students.WorldConfig, theta: torch.Tensor, grouped: bool) -> tuple[float, dict[str, torch.Tensor]]:
    """Wall seconds of one generation with the given convolution form, and its metrics."""
    students.GROUPED_CONV = grouped
    start = time.perf_counter()
    tasks = students.sample_tasks(world, torch.Generator().manual_seed(0))
    metrics = students.evaluate_population(theta, EDLLoss.pretrained().net.config, tasks, world)
    return time.perf_counter() - start, metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--world", default="images-k100", choices=[n for n, p in students.PRESETS.items()
                                                                   if p.get("family") == "images"])
    parser.add_argument("--population", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    if args.threads < 1 or args.population < 1 or args.rounds < 1:
        parser.error(f"--threads, --population and --rounds must be >= 1, got {args.threads}, {args.population}, {args.rounds}")
    torch.set_num_threads(args.threads)
    world = replace(students.WorldConfig(), **students.PRESETS[args.world])
    flat = EDLLoss.pretrained().net.flat().detach()
    theta = flat + 0.05 * torch.randn(args.population, flat.numel(), generator=torch.Generator().manual_seed(0))
    seconds: dict[bool, list[float]] = {False: [], True: []}
    metrics: dict[bool, dict[str, torch.Tensor]] = {}
    try:
        for _ in range(args.rounds):
            for grouped in (False, True):
                took, metrics[grouped] = generation(world, theta, grouped)
                seconds[grouped].append(took)
                print(f"{'grouped conv' if grouped else 'bmm over patches'}: {took:.1f} s", flush=True)
    finally:
        students.GROUPED_CONV = True
    rows = [{"form": "grouped conv" if g else "bmm over patches", "s_per_gen": min(v),
             "speedup": min(seconds[False]) / min(v), "mean_fitness": float(metrics[g]["fitness"].mean()),
             "mean_accuracy_delta": 100 * float(metrics[g]["accuracy_delta"].mean())} for g, v in seconds.items()]
    print_table(rows, list(rows[0]))
    print(f"wrote {write_results('bench_images_world', {'rows': rows, 'world': args.world, 'threads': args.threads, 'population': args.population, 'target_seconds': 15})}")


if __name__ == "__main__":
    main()
