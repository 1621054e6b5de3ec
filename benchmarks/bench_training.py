"""Training throughput of ResNet-20 on CPU: data pipelines, memory formats, EDL's cost over CE.

Measures, side by side in one run (configurations interleaved round by round, so a neighbour's
load hits all of them alike; the median round is reported):

- data pipeline alone: the in-memory tensor pipeline (``edloss.lab.data.BatchLoader``: whole-batch
  crop/flip/normalise) vs a per-image Python ``Dataset`` + ``DataLoader`` doing the same
  augmentation image by image with plain torch;
- a full training step (forward, backward, SGD) with each pipeline, NCHW and channels-last;
- EDL's cost over cross-entropy: the same step with ``EDLLoss`` instead of CE (ratio of step
  times), and the loss forward+backward alone relative to a CE step (the precise estimate;
  step-time ratios on a shared CPU carry a few percent of noise);
- EDL's cost per training step on three models (issue 22): a ResNet-20 step (batch 128, K = 10),
  a character transformer (K = 128, 32 x 64 characters) and an MLP (K = 100, batch 256), each
  with CE, EDL and EDL with the inductor-compiled kernel (``fused_op.use_compiled_kernel``),
  interleaved round by round.

    .venv/bin/python benchmarks/bench_training.py                # ~2-4 min on 2 cores
    .venv/bin/python benchmarks/bench_training.py --steps 20 --rounds 5 --threads 2
    .venv/bin/python benchmarks/bench_training.py --overhead-only  # only the per-step table

Writes benchmarks/results/bench_training.json (the per-step table also to
bench_training_overhead.json) and prints tables.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from edloss.lab.data import BatchLoader, channel_stats, load_batch
from edloss.lab.models import build_model

sys.path.insert(0, str(Path(__file__).parent))
from _common import WithKernel, repo_relative  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "bench_training.json"


# ----------------------------------------------------------------------------- data


def load_images(data_dir: str | None, n: int) -> tuple[torch.Tensor, torch.Tensor, str]:
    """Real CIFAR-10 images (data_batch_1) if available, random uint8 otherwise."""
    candidates = [data_dir, os.environ.get("EDLOSS_DATA"), str(ROOT.parent / "shared" / "data")]
    for c in candidates:
        if c and (Path(c) / "cifar-10-batches-py" / "data_batch_1").is_file():
            x, y = load_batch(Path(c) / "cifar-10-batches-py" / "data_batch_1", "labels", 10)
            return x[:n], y[:n], f"CIFAR-10 data_batch_1 ({repo_relative(c)})"
    g = torch.Generator().manual_seed(0)
    return (torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8),
            torch.randint(0, 10, (n,), generator=g), "random uint8 images")


class PerImageCifar(torch.utils.data.Dataset):
    """The conventional pipeline: one image per ``__getitem__``, augmented in Python."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, mean: torch.Tensor,
                 std: torch.Tensor, pad: int = 4) -> None:
        self.images, self.labels, self.pad = images, labels, pad
        self.mean, self.std = mean.view(3, 1, 1), std.view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        p = self.pad
        padded = F.pad(self.images[i], (p, p, p, p))
        dy, dx = torch.randint(0, 2 * p + 1, (2,)).tolist()
        img = padded[:, dy:dy + 32, dx:dx + 32]
        if torch.rand(()) < 0.5:
            img = img.flip(2)
        return (img.float() / 255 - self.mean) / self.std, self.labels[i]


def endless(make: Callable[[], Iterator]) -> Iterator:
    while True:
        yield from make()


def pipelines(images, labels, batch, workers, channels_last) -> dict[str, Iterator]:
    mean, std = channel_stats(images)
    tensor = BatchLoader(images, labels, batch, mean, std, train=True,
                         generator=torch.Generator().manual_seed(0), channels_last=channels_last)
    per_image = torch.utils.data.DataLoader(PerImageCifar(images, labels, mean, std), batch,
                                            shuffle=True, drop_last=True, num_workers=workers,
                                            persistent_workers=workers > 0)

    def converted():
        for x, y in per_image:
            yield (x.contiguous(memory_format=torch.channels_last) if channels_last else x), y

    return {"tensor": endless(lambda: iter(tensor)), "dataloader": endless(converted)}


# ----------------------------------------------------------------------------- timing


def edl_loss() -> tuple[nn.Module | None, str]:
    """The shipped EDL loss, else a randomly initialised one of the default architecture
    (same cost), else None."""
    try:
        from edloss.loss import EDLLoss

        try:
            return EDLLoss.pretrained(), "EDLLoss.pretrained()"
        except Exception:
            from edloss.lossnet import LossNet, LossNetConfig

            return EDLLoss(LossNet(LossNetConfig())), "EDLLoss(LossNet(LossNetConfig())) (random init: no shipped weights)"
    except Exception as err:  # noqa: BLE001
        return None, f"unavailable: {type(err).__name__}: {err}"


class StepBench:
    """One configuration: a model, an optimizer, a batch source and a loss."""

    def __init__(self, source: Iterator, loss_fn: nn.Module, channels_last: bool) -> None:
        torch.manual_seed(0)
        self.model = build_model("resnet20", 10, channels_last=channels_last)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.05, momentum=0.9, nesterov=True,
                                   weight_decay=5e-4)
        self.source, self.loss_fn = source, loss_fn

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.loss_fn(self.model(x), y)

    def step(self) -> None:
        loss = self.loss(*next(self.source))
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()

    def time(self, steps: int) -> float:
        """Seconds per step over ``steps`` steps (data loading included)."""
        t0 = time.perf_counter()
        for _ in range(steps):
            self.step()
        return (time.perf_counter() - t0) / steps


def time_pipeline(source: Iterator, batches: int) -> float:
    t0 = time.perf_counter()
    for _ in range(batches):
        next(source)
    return (time.perf_counter() - t0) / batches


def time_loss(loss_fn: nn.Module, batch: int, repeats: int, k: int = 10) -> float:
    """Median seconds for the loss's forward + backward on (batch, k) logits."""
    g = torch.Generator().manual_seed(0)
    z = torch.randn(batch, k, generator=g).requires_grad_(True)
    y = torch.randint(0, k, (batch,), generator=g)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        loss_fn(z, y).backward()
        times.append(time.perf_counter() - t0)
        z.grad = None
    return statistics.median(times)


# ----------------------------------------------------------------------------- EDL's cost per training step


class CharTransformer(nn.Module):
    """A small character-level transformer (next-byte prediction over K = 128 classes)."""

    def __init__(self, vocab: int = 128, width: int = 128, layers: int = 2, heads: int = 4, context: int = 64) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.position = nn.Parameter(torch.zeros(context, width))
        layer = nn.TransformerEncoderLayer(width, heads, 2 * width, dropout=0.0, batch_first=True)
        self.body = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(width, vocab)
        self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(context), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x) + self.position[: x.shape[1]]
        return self.head(self.body(h, mask=self.mask[: x.shape[1], : x.shape[1]], is_causal=True))


def text_batches(batch: int = 32, context: int = 64, count: int = 8) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Windows of this repository's README as bytes (ASCII, clamped below 128): real characters."""
    data = torch.tensor(list((ROOT / "README.md").read_bytes()), dtype=torch.long).clamp_max(127)
    g = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(count):
        start = torch.randint(0, len(data) - context - 1, (batch,), generator=g)
        windows = torch.stack([data[s : s + context + 1] for s in start.tolist()])
        batches.append((windows[:, :-1], windows[:, 1:]))
    return batches


def overhead_workloads() -> dict[str, tuple[Callable[[], nn.Module], list, int]]:
    """name -> (model factory, a few (input, target) batches, classes K)."""
    g = torch.Generator().manual_seed(0)
    images = [(torch.randn(128, 3, 32, 32, generator=g), torch.randint(0, 10, (128,), generator=g)) for _ in range(4)]
    centers = torch.randn(100, 64, generator=g) * 2
    mlp = []
    for _ in range(8):
        y = torch.randint(0, 100, (256,), generator=g)
        mlp.append((centers[y] + torch.randn(256, 64, generator=g), y))
    return {
        "ResNet-20 step, batch 128, K = 10": (lambda: build_model("resnet20", 10), images, 10),
        "character transformer, 32 x 64 chars, K = 128": (CharTransformer, text_batches(), 128),
        "MLP 64-256-100, batch 256, K = 100": (lambda: nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 100)), mlp, 100),
    }


class Trainer(StepBench):
    """One model + SGD + loss over a cycle of fixed batches; logits flattened to (rows, K)."""

    def __init__(self, make: Callable[[], nn.Module], batches: list, k: int, loss_fn: Callable) -> None:
        torch.manual_seed(0)
        self.model, self.source, self.k, self.loss_fn = make(), itertools.cycle(batches), k, loss_fn
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.01, momentum=0.9)

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.loss_fn(self.model(x).reshape(-1, self.k), y.reshape(-1))


def overhead_table(rounds: int, steps: int, warmup: int) -> list[dict]:
    """Per model: seconds per training step with CE, EDL and EDL+kernel (median of interleaved
    rounds), their ratios, and the loss's forward + backward alone as a share of a CE step."""
    from edloss import EDLLoss

    rows = []
    for name, (make, batches, k) in overhead_workloads().items():
        losses = {"CE": nn.CrossEntropyLoss(), "EDL": EDLLoss.pretrained(), "EDL+kernel": WithKernel(EDLLoss.pretrained())}
        trainers = {loss: Trainer(make, batches, k, fn) for loss, fn in losses.items()}
        for trainer in trainers.values():
            for _ in range(warmup):
                trainer.step()  # EDL+kernel: the kernel compiles here
        per_round = max(steps, math.ceil(0.25 / trainers["CE"].time(2)))  # >= 0.25 s a round: cheap steps are noisy
        times: dict[str, list[float]] = {loss: [] for loss in trainers}
        for _ in range(rounds):
            for loss, trainer in trainers.items():
                times[loss].append(trainer.time(per_round))
        med = {loss: statistics.median(v) for loss, v in times.items()}
        rows_k = batches[0][1].numel()
        alone = {loss: time_loss(fn, rows_k, 50, k) for loss, fn in losses.items()}
        rows.append({
            "workload": name, "loss rows": rows_k, "steps_per_round": per_round,
            **{f"{loss} ms/step": 1e3 * t for loss, t in med.items()},
            "EDL / CE": med["EDL"] / med["CE"], "EDL+kernel / CE": med["EDL+kernel"] / med["CE"],
            "EDL loss alone, % of a CE step": 100 * (alone["EDL"] - alone["CE"]) / med["CE"],
            "EDL+kernel loss alone, % of a CE step": 100 * (alone["EDL+kernel"] - alone["CE"]) / med["CE"],
            "rounds_seconds_per_step": times,
        })
        print(f"{name}: CE {1e3 * med['CE']:.1f} ms, EDL x{med['EDL'] / med['CE']:.3f}, "
              f"EDL+kernel x{med['EDL+kernel'] / med['CE']:.3f}", file=sys.stderr)
    return rows


def print_overhead(rows: list[dict]) -> None:
    print(f"\n{'EDL cost per training step':<48}{'CE ms':>8}{'EDL/CE':>8}{'+kernel/CE':>11}{'loss alone':>12}{'+kernel':>9}")
    for r in rows:
        print(f"{r['workload']:<48}{r['CE ms/step']:>8.1f}{r['EDL / CE']:>8.3f}{r['EDL+kernel / CE']:>11.3f}"
              f"{r['EDL loss alone, % of a CE step']:>11.1f}%{r['EDL+kernel loss alone, % of a CE step']:>8.1f}%")


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=6, help="timed training steps per round")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median reported)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps per configuration")
    ap.add_argument("--pipeline-batches", type=int, default=20,
                    help="batches timed per round for the pipeline-only measurement")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (default 1: on a shared 2-core machine two OpenMP "
                         "threads stall whenever a neighbour holds a core)")
    ap.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    ap.add_argument("--images", type=int, default=10_000, help="images held in memory")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--overhead-only", action="store_true", help="only the per-step EDL cost table on three models")
    ap.add_argument("--skip-overhead", action="store_true", help="skip the per-step EDL cost table")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    overhead_rows = [] if args.skip_overhead else overhead_table(args.rounds, args.steps, args.warmup + 1)
    if overhead_rows:
        out = args.out.with_name(args.out.stem + "_overhead.json")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"benchmark": "bench_training --overhead-only", "edl_step_overhead": overhead_rows,
                                   "threads": torch.get_num_threads(), "torch": torch.__version__,
                                   "note": "measured beside another job on a 2-core machine"}, indent=2) + "\n")
        print_overhead(overhead_rows)
    if args.overhead_only:
        return 0

    images, labels, source = load_images(args.data_dir, args.images)
    b = args.batch_size
    edl, edl_kind = edl_loss()
    ce = nn.CrossEntropyLoss()

    # pipelines alone
    feeds = pipelines(images, labels, b, args.workers, channels_last=False)
    pipe_times: dict[str, list[float]] = {k: [] for k in feeds}
    for _ in range(args.rounds):
        for name, feed in feeds.items():
            next(feed)
            pipe_times[name].append(time_pipeline(feed, args.pipeline_batches))

    # full training steps, interleaved
    configs: dict[str, StepBench] = {}
    for cl in (False, True):
        feeds = pipelines(images, labels, b, args.workers, channels_last=cl)
        fmt = "channels_last" if cl else "NCHW"
        configs[f"tensor / {fmt} / CE"] = StepBench(feeds["tensor"], ce, cl)
        configs[f"dataloader / {fmt} / CE"] = StepBench(feeds["dataloader"], ce, cl)
        if edl is not None and not cl:
            configs[f"tensor / {fmt} / EDL"] = StepBench(
                pipelines(images, labels, b, args.workers, False)["tensor"], edl, cl)
    for bench in configs.values():
        for _ in range(args.warmup):
            bench.step()
    step_times: dict[str, list[float]] = {k: [] for k in configs}
    for r in range(args.rounds):
        for name, bench in configs.items():
            step_times[name].append(bench.time(args.steps))
        print(f"round {r + 1}/{args.rounds} done ({time.perf_counter() - t_start:.0f}s)",
              file=sys.stderr)

    med = {k: statistics.median(v) for k, v in step_times.items()}
    training = {k: {"seconds_per_step": med[k], "images_per_s": b / med[k],
                    "rounds_images_per_s": [b / t for t in v]} for k, v in step_times.items()}
    pipeline = {k: {"seconds_per_batch": statistics.median(v),
                    "images_per_s": b / statistics.median(v)} for k, v in pipe_times.items()}

    overhead: dict[str, object] = {"edl_loss": edl_kind}
    if edl is not None:
        ce_step = med["tensor / NCHW / CE"]
        t_ce, t_edl = time_loss(ce, b, 200), time_loss(edl, b, 200)
        overhead.update({
            "step_ratio_edl_over_ce": med["tensor / NCHW / EDL"] / ce_step,
            "loss_fwd_bwd_seconds": {"ce": t_ce, "edl": t_edl},
            "isolated_overhead_fraction": (t_edl - t_ce) / ce_step,
            "target_fraction": 0.03,
        })

    report = {
        "benchmark": "bench_training", "model": "resnet20", "batch_size": b,
        "data": source, "images_in_memory": int(images.shape[0]),
        "settings": {k: (repo_relative(v) if isinstance(v, Path) or (k == "data_dir" and v) else v) for k, v in vars(args).items()},
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "threads": torch.get_num_threads(), "python": platform.python_version(),
                    "torch": torch.__version__},
        "pipeline_only": pipeline, "training_step": training, "edl_overhead": overhead, "edl_step_overhead": overhead_rows,
        "wall_seconds": time.perf_counter() - t_start,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")

    print(f"\nResNet-20, batch {b}, CPU, {torch.get_num_threads()} thread(s), {source}")
    print(f"\n{'data pipeline alone':<34}{'images/s':>12}")
    for k, v in pipeline.items():
        print(f"{k:<34}{v['images_per_s']:>12.0f}")
    print(f"speed-up tensor / dataloader: "
          f"{pipeline['tensor']['images_per_s'] / pipeline['dataloader']['images_per_s']:.1f}x")
    print(f"\n{'training step (pipeline / format / loss)':<42}{'images/s':>10}{'s/step':>9}")
    for k, v in training.items():
        print(f"{k:<42}{v['images_per_s']:>10.1f}{v['seconds_per_step']:>9.3f}")
    if edl is not None:
        print(f"\nEDL cost over CE ({edl_kind}):")
        print(f"  step time ratio EDL/CE:            {overhead['step_ratio_edl_over_ce']:.3f}")
        print(f"  loss fwd+bwd: CE {t_ce * 1e3:.2f} ms, EDL {t_edl * 1e3:.2f} ms -> "
              f"{100 * overhead['isolated_overhead_fraction']:.2f}% of a CE step (target < 3%)")
    else:
        print(f"\nEDL: {edl_kind}")
    print(f"\nwrote {args.out} ({time.perf_counter() - t_start:.0f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
