"""bf16 autocast on the CPU (``TrainConfig.cpu_amp``): seconds per ResNet-20 training step, side by side.

    python benchmarks/bench_cpu_amp.py --threads 1 [--steps 10] [--compile]
    python benchmarks/bench_cpu_amp.py --threads 1 --parity runs/cpu-amp-parity --data-dir data   # + accuracy

Times float32 and bf16-autocast training steps of the lab's ResNet-20 (batch 128, channels-last,
SGD), alternating the two so machine noise hits both alike, and reports the ratio. The speedup needs
a CPU with bf16 instructions (AVX512-BF16 or AMX); elsewhere bf16 can be slower. With ``--parity``,
it also trains CE and the default EDL in bf16 on ``c10-limited-50`` at 0.5x, seed 0 (about 4
minutes each on one thread; finished runs in that folder are reused) and sets them beside the
matrix's float32 records of the same runs: one seed each, so it catches a gross failure, not a
fraction of a point. Prints tables and writes ``benchmarks/results/bench_cpu_amp.json``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import print_table, write_results  # noqa: E402

from edloss.lab.models import build_model  # noqa: E402


def step_seconds(model: torch.nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
                 bf16: bool, steps: int) -> float:
    """Median seconds of one training step, as the lab takes it (float32 loss on the logits)."""
    times = []
    for _ in range(steps + 1):  # the first is a warm-up (and a compile)
        t = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model(x)
        loss = torch.nn.functional.cross_entropy(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - t)
    return statistics.median(times[1:])


def parity(out: Path, data_dir: str | None) -> list[dict]:
    """bf16 against the matrix's float32 records: c10-limited-50, CE and EDL at 0.5x, seed 0."""
    import json
    from dataclasses import replace

    from edloss.lab.recipe import TrainConfig
    from edloss.lab.regimes import REGIMES
    from edloss.lab.train import train
    from edloss.lab.tuning import lr_folder, scaled_lr

    recipe = REGIMES["c10-limited-50"].recipe(TrainConfig(data_dir=data_dir, device="cpu", cpu_amp=True))
    records = Path(__file__).resolve().parents[1] / "docs/figures/regimes/c10-limited-50/resnet20"
    rows = []
    for loss in ("ce", "edl"):
        bf16 = train(replace(recipe, loss=loss, lr=scaled_lr(recipe, 0.5), seed=0), out / loss, progress=False)
        fp32 = json.loads((records / loss / lr_folder(0.5) / "seed0" / "result.json").read_text())
        rows.append({"loss": loss, "bf16_val": 100 * bf16["best_val_acc"], "fp32_val": 100 * fp32["best_val_acc"],
                     "bf16_test": 100 * bf16["test_acc"], "fp32_test": 100 * fp32["test_acc"]})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=2, help="alternations of the two precisions")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model, as the long regimes do")
    parser.add_argument("--parity", default=None, metavar="DIR", help="also train the bf16 parity runs into DIR")
    parser.add_argument("--data-dir", default=None, help="CIFAR folder for --parity (default: $EDLOSS_DATA, then ./data)")
    args = parser.parse_args()
    if args.threads < 1 or args.steps < 1 or args.rounds < 1:
        parser.error(f"--threads, --steps and --rounds must be >= 1, got {args.threads}, {args.steps}, {args.rounds}")
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    model = build_model("resnet20", 10).to(memory_format=torch.channels_last)
    forward = torch.compile(model) if args.compile else model
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(128, 3, 32, 32).to(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (128,))
    seconds: dict[str, list[float]] = {"float32": [], "bf16": []}
    for _ in range(args.rounds):
        for name in seconds:
            seconds[name].append(step_seconds(forward, optimizer, x, y, name == "bf16", args.steps))
    fp32, bf16 = min(seconds["float32"]), min(seconds["bf16"])
    rows = [{"precision": name, "s_per_step": min(v), "speedup_vs_float32": fp32 / min(v)} for name, v in seconds.items()]
    print_table(rows, list(rows[0]))
    print(f"bf16 autocast: {fp32 / bf16:.2f}x the float32 speed")
    accuracy = parity(Path(args.parity), args.data_dir) if args.parity else None
    if accuracy:
        print_table(accuracy, list(accuracy[0]))
    print(f"wrote {write_results('bench_cpu_amp', {'rows': rows, 'threads': args.threads, 'steps': args.steps, 'compile': args.compile, 'parity': accuracy})}")


if __name__ == "__main__":
    main()
