"""Ray path cost: a miniature ``edloss compare`` grid locally vs on Ray, and population evaluation at P = 4096.

    python benchmarks/bench_ray.py        # prints tables, writes benchmarks/results/bench_ray.json

Grid: ce and focal x seeds 0, 1 (4 runs) of ResNet-20 on 64 tiny CIFAR images for one epoch, the
test suite's miniature grid. Timed: the local grid (one process, one torch thread); starting a
local Ray cluster; the same grid as Ray tasks of one CPU on a 1-CPU cluster (runs one at a time,
as locally: the difference is Ray's overhead) and on a 2-CPU cluster (two at a time).

Population evaluation: one generation's fitness of P = 4096 individuals on the default objective
(4 blocks x 4,096 loss evaluations), with one torch thread everywhere: ``evaluate_population`` in
this process, and ``RayEvaluator`` with 1 and 2 single-thread actors (after a warm-up call; best
of ``--repeat``). Also the unchunked single ``evaluate`` call the ES used before (for reference:
fixed chunks of 256 individuals are what make the distributed result bit-identical, and they are
also faster). The result of every Ray call is checked with torch.equal against the local one.

All on one 2-core machine: with more cores (or machines) the grid and the actors scale further;
on a shared machine the timings include whatever else runs (the load average is recorded).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))
from _cifar_fixtures import write_cifar  # noqa: E402
from _common import print_table, write_results  # noqa: E402

from edloss.lab import compare as C  # noqa: E402
from edloss import distributed as D  # noqa: E402
from edloss import evolve  # noqa: E402
from edloss.evolve import ESConfig  # noqa: E402
from edloss.lossnet import init_scale  # noqa: E402
from edloss.objective import evaluate, evaluate_population, population_penalty, sample_batches  # noqa: E402
from edloss.pretrain import PretrainConfig, batch_seed  # noqa: E402
from edloss.lab.train import TrainConfig  # noqa: E402

LOSSES = ["ce", "focal"]
SEEDS = [0, 1]


def start_cluster(cpus: int) -> float:
    import ray

    if ray.is_initialized():
        ray.shutdown()
    start = time.perf_counter()
    D.connect("local", num_cpus=cpus)
    return time.perf_counter() - start


def grid(tmp: Path, data: Path) -> list[dict]:
    config = TrainConfig(model="resnet20", data_dir=str(data), epochs=1, batch_size=32, lr=0.05, val_size=32,
                         train_subset=64, eval_batch_size=64, device="cpu")
    rows = []
    start = time.perf_counter()
    local = C.compare(config, LOSSES, SEEDS, tmp / "local", progress=False)
    rows.append({"path": "local, 1 process", "cluster_start_s": 0.0, "grid_s": time.perf_counter() - start})
    reference = [r["test_acc"] for r in local["runs"]]
    for cpus in (1, 2):
        startup = start_cluster(cpus)
        start = time.perf_counter()
        import ray

        summary = C.compare(config, LOSSES, SEEDS, tmp / f"ray{cpus}", progress=False,
                            ray=ray.get_runtime_context().gcs_address, threads=1)
        rows.append({"path": f"Ray, {cpus}-CPU local cluster", "cluster_start_s": startup, "grid_s": time.perf_counter() - start,
                     "same_numbers": [r["test_acc"] for r in summary["runs"]] == reference})
        ray.shutdown()
    base = rows[0]["grid_s"]
    for row in rows:
        row["vs_local"] = row["grid_s"] / base
        row["per_run_overhead_s"] = (row["grid_s"] - base) / len(local["runs"])
    return rows


def population(repeat: int) -> list[dict]:
    cfg = PretrainConfig(es=ESConfig(population=4096))
    theta = evolve.init(cfg.es, init_scale(cfg.lossnet)).population
    batches = sample_batches(cfg.objective, torch.Generator().manual_seed(batch_seed(0, 0)))

    def best(fn) -> tuple[float, dict]:
        times, out = [], None
        for _ in range(repeat):
            start = time.perf_counter()
            out = fn()
            times.append(time.perf_counter() - start)
        return min(times), out

    rows = []
    whole, _ = best(lambda: evaluate(population_penalty(theta, cfg.lossnet), theta.shape[0], batches, cfg.objective))
    rows.append({"path": "local, one evaluate() call (before: unchunked)", "seconds": whole})
    local_s, local = best(lambda: evaluate_population(theta, cfg.lossnet, batches, cfg.objective))
    rows.append({"path": "local, evaluate_population (chunks of 256)", "seconds": local_s})
    start_cluster(2)
    for actors in (1, 2):
        with D.RayEvaluator(actors=actors, address="auto", threads=1) as evaluator:
            evaluator(theta, cfg.lossnet, batches, cfg.objective)  # warm-up: actor start, imports
            seconds, remote = best(lambda: evaluator(theta, cfg.lossnet, batches, cfg.objective))
        rows.append({"path": f"Ray, {actors} actor(s) x 1 thread", "seconds": seconds,
                     "bit_identical": all(torch.equal(remote[k], local[k]) for k in local)})
    import ray

    ray.shutdown()
    for row in rows:
        row["speedup_vs_local"] = local_s / row["seconds"]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3, help="population timings: best of this many (default %(default)s)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    load_before = os.getloadavg()
    tmp = Path(tempfile.mkdtemp(prefix="bench_ray"))
    try:
        grid_rows = grid(tmp, write_cifar(tmp / "data").parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print("miniature grid (4 runs: ce, focal x seeds 0, 1; ResNet-20, 64 images, 1 epoch):")
    print_table(grid_rows, ["path", "cluster_start_s", "grid_s", "vs_local", "per_run_overhead_s", "same_numbers"])
    pop_rows = population(args.repeat)
    print("\npopulation evaluation, P = 4096, default objective, one generation:")
    print_table(pop_rows, ["path", "seconds", "speedup_vs_local", "bit_identical"])
    path = write_results("bench_ray", {
        "grid": {"runs": len(LOSSES) * len(SEEDS), "losses": LOSSES, "seeds": SEEDS, "rows": grid_rows},
        "population": {"P": 4096, "repeat": args.repeat, "rows": pop_rows},
        "load_average_before_after": [list(load_before), list(os.getloadavg())],
        "note": "2-core machine shared with two CIFAR training runs while measuring; one torch thread per process/task/actor",
    })
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
