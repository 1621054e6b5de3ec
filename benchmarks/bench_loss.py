"""Speed of EDLLoss beside cross-entropy and Poly-1: forward+backward per call, and a small training run.

    python benchmarks/bench_loss.py                 # eager + torch.compile, prints a table, writes JSON
    python benchmarks/bench_loss.py --no-compile    # skip the compile rows (no C++ compiler needed)
    python benchmarks/bench_loss.py --loss PATH     # time another EDL checkpoint too

Every timing is the best of several repeats, and the losses are timed side by side in one run, so
the ratios (EDL / CE) are what to read: these machines are noisy. Targets (issue 8): <= 1.5x CE at
512 x 10 and 4096 x 1000 in eager mode with input checks, <= 1.3x under torch.compile, and a small
MLP on a 100-class task training in <= 1.15x CE's wall time.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from _common import best_time, print_table, write_results  # noqa: E402

from edloss import EDLLoss  # noqa: E402

SHAPES = [(512, 10), (4096, 10), (512, 1000), (4096, 1000)]


def poly1(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """CE + (1 - p_y), written as users write it (Leng et al., 2022)."""
    ce = F.cross_entropy(logits, target, reduction="none")
    return (ce + 1 - torch.exp(-ce)).mean()


def fwd_bwd(loss_fn, n: int, k: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(n, k, generator=g) * 3).requires_grad_(True)
    target = torch.randint(0, k, (n,), generator=g)

    def step() -> None:
        logits.grad = None
        loss_fn(logits, target).backward()

    return step


def call_times(losses: dict, shapes: list[tuple[int, int]]) -> list[dict]:
    rows = []
    for n, k in shapes:
        number = max(3, int(2e6 // (n * k)))
        times = {name: best_time(fwd_bwd(fn, n, k), repeat=7, number=number) for name, fn in losses.items()}
        row = {"shape": f"{n} x {k}", **{f"{name} us": t * 1e6 for name, t in times.items()}}
        for name in losses:
            if name != "CE":
                row[f"{name} / CE"] = times[name] / times["CE"]
        rows.append(row)
    return rows


def train_mlp(loss_fn, epochs: int = 3, seed: int = 0) -> float:
    """Wall seconds to train a 2-layer MLP on a synthetic 100-class task (batch 256)."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(100, 64, generator=g) * 2
    labels = torch.randint(0, 100, (20_000,), generator=g)
    data = centers[labels] + torch.randn(20_000, 64, generator=g)
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 100))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    start = time.perf_counter()
    for _ in range(epochs):
        for i in range(0, len(data), 256):
            opt.zero_grad(set_to_none=True)
            loss_fn(model(data[i : i + 256]), labels[i : i + 256]).backward()
            opt.step()
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--loss", action="append", default=[], metavar="PATH", help="another EDL checkpoint to time")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--quick", action="store_true", help="fewer shapes, for a smoke test")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    losses = {"CE": F.cross_entropy, "Poly-1": poly1, "EDL": EDLLoss.pretrained()}
    for i, path in enumerate(args.loss):
        losses[f"EDL[{i}]"] = EDLLoss.from_file(path)
    shapes = SHAPES[:1] if args.quick else SHAPES

    print("forward + backward per call, eager, input checks on")
    eager = call_times(losses, shapes)
    columns = ["shape", *[f"{n} us" for n in losses], *[f"{n} / CE" for n in losses if n != "CE"]]
    print_table(eager, columns)

    compiled = []
    if not args.no_compile:
        print("\nforward + backward per call, torch.compile (each loss compiled alone)")
        compiled_losses = {name: torch.compile(fn) for name, fn in losses.items()}
        compiled = call_times(compiled_losses, shapes[:1])
        print_table(compiled, columns)

    print("\ntraining a 2-layer MLP, 100 classes, 20k samples, 3 epochs (wall seconds, best of 2)")
    training = {name: min(train_mlp(fn) for _ in range(2)) for name, fn in losses.items()}
    train_row = {**{f"{n} s": t for n, t in training.items()}, **{f"{n} / CE": training[n] / training["CE"] for n in losses if n != "CE"}}
    print_table([train_row], list(train_row))
    path = write_results("bench_loss", {"eager": eager, "compiled": compiled, "mlp_training": train_row})
    print(f"\nwrote {path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
