"""Core speed: one ES generation (batched population vs a per-individual loop) and EDLLoss vs CE.

    python benchmarks/bench_core.py            # prints tables, writes benchmarks/results/bench_core.json

Targets (issue 2): >= 20 generations/s for P = 64, K = 10, 4,096 loss evaluations per
individual on 2 CPU cores; EDLLoss forward+backward under 2x cross-entropy's for batch 512, K = 10.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from _common import best_time, print_table, write_results  # noqa: E402

from edloss import EDLLoss, evolve  # noqa: E402
from edloss.evolve import ESConfig  # noqa: E402
from edloss.lossnet import LossNet, LossNetConfig, init_scale  # noqa: E402
from edloss.objective import ObjectiveConfig, evaluate, population_penalty, sample_batches  # noqa: E402


def looped_penalty(theta: torch.Tensor, net: LossNetConfig):
    """The same penalty as ``population_penalty``, one ``LossNet`` module per individual."""
    modules = [LossNet.from_flat(t, net) for t in theta]

    def penalty(logp: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        from edloss.features import label_features

        outs = []
        for i, module in enumerate(modules):
            lp = logp[i if logp.shape[0] > 1 else 0]
            outs.append(module.forward_features(label_features(lp, labels[0], net.features)))
        return torch.stack(outs)

    return penalty


def bench_generation(population: int, k: int, evals: int, repeat: int) -> list[dict]:
    net = LossNetConfig()
    es = ESConfig(population=population, generations=1000)
    objective = ObjectiveConfig(classes=(k, k), evals_per_block=evals)
    state = evolve.init(es, init_scale(net))
    gen = torch.Generator().manual_seed(0)
    batches = sample_batches(objective, gen)
    evals_done = batches[0].labels.numel()
    rows = []
    for name, make in (("batched population", population_penalty), ("per-individual loop", looped_penalty)):
        holder = {"state": state}

        def generation() -> None:
            b = sample_batches(objective, gen)
            theta = evolve.ask(holder["state"])
            fitness = evaluate(make(theta, net), population, b, objective)["fitness"]
            holder["state"] = evolve.tell(holder["state"], fitness, es)

        seconds = best_time(generation, repeat=repeat, number=5, warmup=2)
        rows.append({"pass": name, "P": population, "K": k, "evals/individual": evals_done, "gen/s": 1 / seconds, "ms/gen": 1e3 * seconds})
    rows[0]["speedup"] = rows[1]["ms/gen"] / rows[0]["ms/gen"]
    return rows


def bench_loss(batch: int, k: int, repeat: int) -> list[dict]:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(batch, k, generator=gen).requires_grad_(True)
    target = torch.randint(0, k, (batch,), generator=gen)
    cfg = LossNetConfig()
    net = LossNet.from_flat(torch.randn(cfg.num_params, generator=gen) * init_scale(cfg), cfg)
    checked, unchecked = EDLLoss(net), EDLLoss(net, check_inputs=False)

    def step(fn):
        def run() -> None:
            logits.grad = None
            fn(logits, target).backward()

        return run

    ce = best_time(step(F.cross_entropy), repeat=repeat, number=50)
    rows = [{"loss": "cross-entropy", "batch": batch, "K": k, "us/step": 1e6 * ce, "ratio vs CE": 1.0}]
    for name, fn in (("EDLLoss (checked inputs)", checked), ("EDLLoss (check_inputs=False)", unchecked)):
        t = best_time(step(fn), repeat=repeat, number=50)
        rows.append({"loss": name, "batch": batch, "K": k, "us/step": 1e6 * t, "ratio vs CE": t / ce})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    generation = bench_generation(64, 10, 4096, args.repeat)
    print_table(generation, ["pass", "P", "K", "evals/individual", "gen/s", "ms/gen", "speedup"])
    print()
    loss = bench_loss(512, 10, args.repeat) + bench_loss(512, 1000, args.repeat)
    print_table(loss, ["loss", "batch", "K", "us/step", "ratio vs CE"])
    path = write_results("bench_core", {"generation": generation, "loss": loss})
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
