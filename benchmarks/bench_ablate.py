"""Ablation cost: one run of each arm at the default ablation budget, and the whole default ablation's estimate.

    python benchmarks/bench_ablate.py            # prints a table, writes benchmarks/results/bench_ablate.json

Each arm runs once (seed 0, sigma 0.1) with one torch/BLAS thread, as an ``edloss ablate`` worker
does; the estimate multiplies by the default grid (10 seeds; chaotic and Gaussian at 3 sigmas,
CMA-ES at 1) for 1 and 2 worker processes. Target (issue 4): the default ablation under 15 minutes
on 2 CPU cores. Two workers on two cores scale by less than 2x when the cores share memory
bandwidth; the measured single-process figure is the safe bound.

It also times the same 16,384 evaluations per generation laid out as the default's 4 blocks of
4,096 and as the fitness-noise axis's 64 blocks of 256 (interleaved, best of two each): the same
evaluation count does not cost the same, because each block is sampled and evaluated on its own.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):  # before numpy loads: cma's numpy, one thread
    os.environ[_var] = "1"

import argparse  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from dataclasses import replace  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from _common import print_table, write_results  # noqa: E402

from edloss.lab import ablate as A  # noqa: E402
from edloss.configs import to_dict  # noqa: E402
from edloss.pretrain import pretrain  # noqa: E402


def time_run(arm: str, sigma: float, out: Path) -> dict:
    cfg = A.run_config(A.default_base(), arm, sigma, 0)
    start = time.perf_counter()
    result = A.run_task({"arm": arm, "sigma": sigma, "seed": 0, "out_dir": str(out / arm), "config": to_dict(cfg), "command": "bench"})
    total = time.perf_counter() - start
    rows = A.read_jsonl(out / arm / "metrics.jsonl")
    loop = sum(r["seconds"] for r in rows)
    return {"arm": arm, "generations": len(rows), "run_s": total, "generation_ms": 1000 * loop / len(rows),
            "export_and_setup_s": total - loop, "heldout_fitness": result["heldout_fitness"]}


def time_block_layouts(generations: int = 20, layouts: tuple[tuple[int, int], ...] = ((4, 4096), (64, 256)),
                       repeats: int = 2) -> list[dict]:
    """Seconds per generation of the default pretraining at each (blocks, evaluations per block)."""
    base = A.default_base()
    best: dict[tuple[int, int], float] = {}
    for _ in range(repeats):  # interleaved so a busy spell on the machine hits every layout
        for blocks, per_block in layouts:
            objective = replace(base.objective, blocks=blocks, evals_per_block=per_block)
            cfg = replace(base, objective=objective, es=replace(base.es, generations=generations), heldout_every=10 * generations)
            with tempfile.TemporaryDirectory() as tmp:
                start = time.perf_counter()
                pretrain(cfg, Path(tmp), progress=False)
                seconds = (time.perf_counter() - start) / generations
            best[blocks, per_block] = min(seconds, best.get((blocks, per_block), float("inf")))
    reference = best[layouts[0]]
    return [{"blocks": b, "evals_per_block": e, "evals_per_generation": b * e, "generation_ms": 1000 * s,
             "vs_first_layout": s / reference} for (b, e), s in best.items()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sigma", type=float, default=0.1)
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        A.run_task  # noqa: B018 - import cost paid before timing
        rows = [time_run(arm, args.sigma, Path(tmp)) for arm in A.ARMS]
    print_table(rows, ["arm", "generations", "run_s", "generation_ms", "export_and_setup_s", "heldout_fitness"])
    cfg = A.AblationConfig()
    per_arm = {r["arm"]: r["run_s"] for r in rows}
    counts = {arm: len(cfg.seeds) * len(cfg.arm_sigmas(arm)) for arm in cfg.arms}
    serial = sum(per_arm[arm] * n for arm, n in counts.items())
    layouts = time_block_layouts()
    print("\nsame evaluations per generation, different block layouts (pretraining, one thread):")
    print_table(layouts, ["blocks", "evals_per_block", "evals_per_generation", "generation_ms", "vs_first_layout"])
    print(f"\ndefault ablation: {sum(counts.values())} runs ({counts}); estimated {serial / 60:.1f} min with 1 process, "
          f"{serial / 120:.1f} min with 2 processes on 2 free cores (ideal scaling)")
    path = write_results("bench_ablate", {"runs": rows, "default_runs": counts, "estimate_1_process_s": serial,
                                          "estimate_2_processes_ideal_s": serial / 2, "sigma": args.sigma,
                                          "block_layouts": layouts,
                                          "note": "one torch/BLAS thread; the machine may have been shared while measuring"})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
