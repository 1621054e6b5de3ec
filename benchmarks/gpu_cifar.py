"""The GPU comparison, prepared for a lent GPU: full-data CIFAR-10, CE / Poly-1 / EDL, in minutes.

    python benchmarks/gpu_cifar.py                          # on a GPU: ResNet-18 x {ce, poly1, edl} x seeds 0 1, then ResNet-20
    python benchmarks/gpu_cifar.py --data data/cifar10_jpeg.npz --out $OUT --budget 480
    python benchmarks/gpu_cifar.py --tiny --device cpu      # a CPU smoke test of the whole path
    python benchmarks/gpu_cifar.py --long-tail              # CIFAR-10-LT at imbalance 100, the literature's recipe
    python benchmarks/gpu_cifar.py --long-tail --dataset cifar100   # CIFAR-100-LT (from cifar100_jpeg.npz)

What it does, in order, writing ``results.json`` (atomically, after every finished run, so a
cut-off still leaves data) and ``table.md`` into ``--out``:

1. data: the compact JPEG copy ``cifar10_jpeg.npz`` (decoded with Pillow in parallel and written
   as the standard pickle layout into a temporary folder) or a folder holding
   ``cifar-10-batches-py``; 45,000 train / 5,000 validation (the last training images) / 10,000 test;
2. speed: ``EDLLoss`` forward+backward against ``F.cross_entropy`` at 512 x 10 and 4096 x 1000,
   and one ResNet-18 training step with each (CUDA events); then the compiled rows (issue 22): each
   loss under ``torch.compile`` (EDL as one ``edloss::fused_loss`` node) and EDL with the
   inductor-compiled (Triton) kernel, at 512 x 10 and 4096 x 1000 (a failure is recorded, not fatal);
3. training: ``edloss train`` runs, several at once on the one GPU (``--parallel``), bf16 autocast
   and channels-last, the recipe below, identical for every loss; whatever has not finished when
   the budget runs out is stopped and reported as such.

Recipe (not tuned on the test set; ResNet-18 is expected to pass 93% test accuracy with CE):
batch 512, SGD Nesterov 0.9, peak lr 0.4, weight decay 5e-4, one-cycle schedule, crop + flip,
ResNet-18 20 epochs, ResNet-20 30 epochs.

``--long-tail`` (issue 20): the long-tail literature's recipe instead (Cao et al. 2019, whose
LDAM-DRW code Menon et al. 2021 and later papers reuse): CIFAR-10-LT (``--dataset cifar100``:
CIFAR-100-LT) at imbalance 100 (``--imbalance``) built from the whole training set (no
validation split, so n_max = 5,000 / 500 and 12,406 / 10,847 training images, as published),
ResNet-32, 200 epochs, batch 128, SGD momentum 0.9 (no Nesterov), lr 0.1 with a linear warm-up
of 5 epochs, x0.01 at epoch 160 and again at 180, weight decay 2e-4; losses CE, logit-adjusted,
balanced softmax, LDAM-DRW, class-balanced CE and EDL by default. The table prints the published
numbers (CIFAR-10-LT / CIFAR-100-LT at imbalance 100, ResNet-32, 200 epochs) beside ours:
CE 70.4 / 38.3 (Cao et al.), LDAM-DRW 77.0 / 42.0 (Cao et al.), logit-adjusted 77.9 / 44.1
(Menon et al., their official code).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import pickle
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECIPE = {"batch-size": 512, "lr": 0.4, "weight-decay": 5e-4, "schedule": "onecycle", "val-size": 5000}
EPOCHS = {"resnet18": 20, "resnet20": 30}
LONG_TAIL_RECIPE = {"batch-size": 128, "lr": 0.1, "momentum": 0.9, "no-nesterov": True, "weight-decay": 2e-4,
                    "schedule": "step", "warmup-epochs": 5, "epochs": 200, "val-size": 0}
TINY_IMBALANCE = 2  # --tiny --long-tail: 3 images per class cut to 3..1
LONG_TAIL_LOSSES = ["ce", "logit_adjusted", "balanced_softmax", "ldam_drw", "cb_ce", "edl"]
# published balanced test accuracy (%) at imbalance 100, ResNet-32, 200 epochs: (CIFAR-10-LT, CIFAR-100-LT)
PUBLISHED = {"ce": (70.4, 38.3, "Cao et al. 2019"), "ldam_drw": (77.0, 42.0, "Cao et al. 2019"),
             "logit_adjusted": (77.9, 44.1, "Menon et al. 2021, official code")}


# ---------------------------------------------------------------------- data
def _decode(blob: bytes) -> bytes:
    from PIL import Image

    image = Image.open(io.BytesIO(blob)).convert("RGB")
    return image.tobytes("raw", "RGB")  # HWC


def _decode_all(jpeg, offsets, workers: int):
    import numpy as np

    blobs = [bytes(jpeg[offsets[i]:offsets[i + 1]]) for i in range(len(offsets) - 1)]
    with ProcessPoolExecutor(workers) as pool:
        pixels = list(pool.map(_decode, blobs, chunksize=512))
    hwc = np.frombuffer(b"".join(pixels), dtype=np.uint8).reshape(len(blobs), 32, 32, 3)
    return np.ascontiguousarray(hwc.transpose(0, 3, 1, 2).reshape(len(blobs), 3072))  # channel-major rows


def npz_to_pickle_layout(npz: Path, dest: Path, workers: int) -> Path:
    """Write ``dest/cifar-10-batches-py`` (or ``dest/cifar-100-python`` for the CIFAR-100 archive,
    which holds ``fine_label_names``) from the compact JPEG archive (the same pixels as the
    pickled copy, see ../shared/data/README.md); returns ``dest``."""
    import numpy as np

    arrays = np.load(npz)
    if "fine_label_names" in arrays.files:
        folder = dest / "cifar-100-python"
        folder.mkdir(parents=True, exist_ok=True)
        for split in ("train", "test"):
            pixels = _decode_all(arrays[f"{split}_jpeg"], arrays[f"{split}_offsets"], workers)
            _dump(folder / split, {b"data": pixels, b"fine_labels": arrays[f"{split}_labels"].astype(int).tolist()})
        _dump(folder / "meta", {b"fine_label_names": [str(n).encode() for n in arrays["fine_label_names"]]})
        return dest
    folder = dest / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    train = _decode_all(arrays["train_jpeg"], arrays["train_offsets"], workers)
    test = _decode_all(arrays["test_jpeg"], arrays["test_offsets"], workers)
    train_labels, test_labels = arrays["train_labels"].astype(int).tolist(), arrays["test_labels"].astype(int).tolist()
    per_batch = -(-len(train_labels) // 5)
    for b in range(5):
        part = slice(b * per_batch, (b + 1) * per_batch)
        _dump(folder / f"data_batch_{b + 1}", {b"data": train[part], b"labels": train_labels[part]})
    _dump(folder / "test_batch", {b"data": test, b"labels": test_labels})
    names = [n.encode() for n in ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")]
    _dump(folder / "batches.meta", {b"label_names": names})
    return dest


def _dump(path: Path, obj: dict) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=4)


def find_data(given: str | None, dataset: str = "cifar10") -> Path:
    """An npz file or a folder holding cifar-10-batches-py (cifar-100-python): the option, the repo's data/,
    $EDLOSS_DATA, ../shared/data."""
    if given and not (Path(given).is_file() or Path(given).is_dir()):  # never fall back from a path the user named
        raise FileNotFoundError(f"--data {given}: no such file or folder")
    c100 = dataset == "cifar100"
    folder, probe = ("cifar-100-python", "train") if c100 else ("cifar-10-batches-py", "data_batch_1")
    npz = ("cifar-100-jpeg", "cifar100_jpeg.npz") if c100 else ("cifar-10-jpeg", "cifar10_jpeg.npz")
    candidates = [given, ROOT / "data" / npz[1], os.environ.get("EDLOSS_DATA"), ROOT.parent / "shared" / "data"]
    for c in candidates:
        if not c:
            continue
        c = Path(c)
        if c.is_file() and c.suffix == ".npz":
            return c
        if (c / folder / probe).is_file():
            return c
        if (c / npz[0] / npz[1]).is_file():
            return c / npz[0] / npz[1]
    raise FileNotFoundError(f"no {dataset} found: pass --data FILE.npz or a folder holding {folder} "
                            f"(or put {npz[1]} in data/, an ignored folder)")


# ---------------------------------------------------------------------- speed
def cuda_speed(device: str) -> dict:
    """EDLLoss fwd+bwd and a ResNet-18 step beside CE, timed with CUDA events (median of 50)."""
    import torch
    import torch.nn.functional as F

    from edloss import EDLLoss
    from edloss.lab.models import build_model

    def timed(fn, reps: int = 50) -> float:
        for _ in range(10):
            fn()
        torch.cuda.synchronize()
        times = []
        for _ in range(reps):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end) * 1e3)
        return sorted(times)[len(times) // 2]

    edl = EDLLoss.pretrained().to(device)
    out = {"loss_call_us": []}
    for n, k in ((512, 10), (4096, 10), (512, 1000), (4096, 1000)):
        x = torch.randn(n, k, device=device, requires_grad=True)
        y = torch.randint(0, k, (n,), device=device)
        row = {"shape": f"{n} x {k}"}
        for name, fn in (("ce", F.cross_entropy), ("edl", edl)):
            row[name] = timed(lambda: fn(x, y).backward())
        row["edl_over_ce"] = row["edl"] / row["ce"]
        out["loss_call_us"].append(row)
    model = build_model("resnet18", 10).to(device, memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    images = torch.randn(512, 3, 32, 32, device=device).to(memory_format=torch.channels_last)
    labels = torch.randint(0, 10, (512,), device=device)

    def step(loss_fn) -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits = model(images)
        loss_fn(logits.float(), labels).backward()
        opt.step()

    ce_step, edl_step = timed(lambda: step(F.cross_entropy), 30), timed(lambda: step(edl), 30)
    out["resnet18_step_us"] = {"ce": ce_step, "edl": edl_step, "edl_over_ce": edl_step / ce_step}
    out["device_name"] = torch.cuda.get_device_name()
    try:
        out["compiled_us"] = compiled_speed(edl, device, timed)
    except Exception as err:  # noqa: BLE001 - no Triton, an inductor failure: the eager rows stand
        out["compiled_error"] = f"{type(err).__name__}: {err}"[:500]
    return out


def compiled_speed(edl, device: str, timed) -> list[dict]:
    """fwd+bwd per call: CE and EDL under torch.compile, and EDL eager with its Triton kernel."""
    import torch
    import torch.nn.functional as F

    from edloss import fused_op

    def with_kernel(x, y):
        fused_op.use_compiled_kernel(True)
        try:
            return edl(x, y)
        finally:
            fused_op.use_compiled_kernel(False)

    losses = {"ce_compiled": torch.compile(F.cross_entropy), "edl_compiled": torch.compile(edl), "edl_kernel": with_kernel}
    rows = []
    for n, k in ((512, 10), (4096, 1000)):
        x = torch.randn(n, k, device=device, requires_grad=True)
        y = torch.randint(0, k, (n,), device=device)
        row = {"shape": f"{n} x {k}", **{name: timed(lambda fn=fn: fn(x, y).backward()) for name, fn in losses.items()}}
        row["edl_compiled_over_ce_compiled"] = row["edl_compiled"] / row["ce_compiled"]
        rows.append(row)
    if fused_op.KERNEL_FALLBACKS:
        rows.append({"kernel_fallbacks": dict(fused_op.KERNEL_FALLBACKS)})
    return rows


# ---------------------------------------------------------------------- training
def train_command(model: str, loss: str, seed: int, data_dir: Path, out: Path, device: str, tiny: bool,
                  long_tail: dict | None = None) -> list[str]:
    """``long_tail``: {"dataset": ..., "imbalance": RHO} for the long-tail recipe (LONG_TAIL_RECIPE)."""
    recipe = dict(RECIPE, epochs=EPOCHS.get(model, 30)) if long_tail is None else dict(LONG_TAIL_RECIPE, **long_tail)
    if tiny:  # a smoke test of the whole path on a handful of images
        recipe.update({"epochs": 1, "batch-size": 8, "val-size": 8, "train-subset": 24})
        if long_tail is not None:  # a balanced pool of 3 per class, cut to a tail of 3..1
            recipe.update({"train-subset": 30, "balanced-subset": True, "imbalance": TINY_IMBALANCE,
                           "warmup-epochs": 0})
    cmd = [sys.executable, "-m", "edloss", "train", "--model", model, "--loss", loss, "--seed", str(seed),
           "--data-dir", str(data_dir), "--device", device, "--threads", "2", "--quiet", "--fresh", "--out", str(out)]
    for key, value in recipe.items():
        if value is True:
            cmd.append(f"--{key}")
        elif value is not None and value is not False:
            cmd += [f"--{key}", str(value)]
    return cmd


def write_results(out: Path, results: dict) -> None:
    tmp = out / ".results.json.tmp"
    tmp.write_text(json.dumps(results, indent=2) + "\n")
    tmp.replace(out / "results.json")
    (out / "table.md").write_text(render(results) + "\n")


def render(results: dict) -> str:
    lines = [f"GPU: {results.get('device_name', '?')}; budget {results['budget_s']} s; wall {results.get('wall_s', 0):.0f} s", "",
             "| model | loss | seed | status | test acc (%) | best val (%) | test NLL | ECE (%) | run time (s) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results["runs"]:
        acc = "—" if r.get("test_acc") is None else f"{100 * r['test_acc']:.2f}"
        val = "—" if r.get("best_val_acc") is None else f"{100 * r['best_val_acc']:.2f}"
        nll = "—" if r.get("test_nll") is None else f"{r['test_nll']:.3f}"
        ece = "—" if r.get("test_ece") is None else f"{100 * r['test_ece']:.2f}"
        lines.append(f"| {r['model']} | {r['loss']} | {r['seed']} | {r['status']} | {acc} | {val} | {nll} | {ece} | {r.get('seconds', 0):.0f} |")
    lines += long_tail_lines(results)
    speed = results.get("speed")
    if speed:
        lines += ["", "| EDLLoss fwd+bwd | CE (µs) | EDL (µs) | EDL / CE |", "|---|---|---|---|"]
        lines += [f"| {r['shape']} | {r['ce']:.0f} | {r['edl']:.0f} | {r['edl_over_ce']:.2f} |" for r in speed["loss_call_us"]]
        s = speed["resnet18_step_us"]
        lines.append(f"| ResNet-18 training step, batch 512 | {s['ce']:.0f} | {s['edl']:.0f} | {s['edl_over_ce']:.2f} |")
        rows = [r for r in speed.get("compiled_us", []) if "shape" in r]
        if rows:
            lines += ["", "| compiled fwd+bwd | CE compiled (µs) | EDL compiled (µs) | EDL / CE, compiled | EDL + Triton kernel, eager (µs) |",
                      "|---|---|---|---|---|"]
            lines += [f"| {r['shape']} | {r['ce_compiled']:.0f} | {r['edl_compiled']:.0f} | {r['edl_compiled_over_ce_compiled']:.2f} "
                      f"| {r['edl_kernel']:.0f} |" for r in rows]
        if speed.get("compiled_error"):
            lines.append(f"\ncompiled rows failed: {speed['compiled_error']}")
    return "\n".join(lines)


def long_tail_lines(results: dict) -> list[str]:
    """Ours (mean over finished seeds) beside the published numbers, for a --long-tail run."""
    lt = results.get("long_tail")
    if not lt:
        return []
    column = 1 if lt["dataset"] == "cifar100" else 0
    name = "CIFAR-100-LT" if column else "CIFAR-10-LT"
    lines = ["", f"{name} at imbalance {lt['imbalance']:g} (balanced test accuracy, %, mean over finished seeds; "
             "published: ResNet-32, 200 epochs, imbalance 100; CIFAR-10-LT / CIFAR-100-LT). "
             f"Many/medium/few: {lt.get('rule', 'see result.json')}.", "",
             "| model | loss | seeds | ours | many | medium | few | CE + post-hoc LA | published (this data set) | published CIFAR-10-LT / CIFAR-100-LT |",
             "|---|---|---|---|---|---|---|---|---|---|"]

    def mean(values: list) -> str:
        values = [v for v in values if v is not None]
        return "—" if not values else f"{100 * sum(values) / len(values):.2f}"

    for model in dict.fromkeys(r["model"] for r in results["runs"]):
        for loss in dict.fromkeys(r["loss"] for r in results["runs"] if r["model"] == model):
            done = [r for r in results["runs"] if r["model"] == model and r["loss"] == loss and r.get("status") == "finished"]
            shots = [r.get("test_shot_acc") or {} for r in done]
            posthoc = mean([r.get("test_acc_posthoc_la") for r in done]) if loss == "ce" else ""
            pub = PUBLISHED.get(loss)
            here = f"{pub[column]:.1f} ({pub[2]})" if pub and lt["imbalance"] == 100 else "—"
            both = f"{pub[0]:.1f} / {pub[1]:.1f}" if pub else "—"
            lines.append(f"| {model} | {loss} | {len(done)} | {mean([r.get('test_acc') for r in done])} | "
                         f"{mean([s.get('many') for s in shots])} | {mean([s.get('medium') for s in shots])} | "
                         f"{mean([s.get('few') for s in shots])} | {posthoc} | {here} | {both} |")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="cifar10_jpeg.npz or a folder holding cifar-10-batches-py")
    parser.add_argument("--out", default=os.environ.get("OUT") or "runs/gpu_cifar", help="results folder (default $OUT, else runs/gpu_cifar)")
    parser.add_argument("--budget", type=float, default=480.0, help="seconds for everything, data loading included (default 480)")
    parser.add_argument("--models", nargs="+", default=None, help="default resnet18 resnet20 (--long-tail: resnet32)")
    parser.add_argument("--losses", nargs="+", default=None,
                        help=f"default ce poly1 edl (--long-tail: {' '.join(LONG_TAIL_LOSSES)})")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--long-tail", action="store_true",
                        help="the long-tail literature's recipe on CIFAR-10-LT / CIFAR-100-LT (see the top of this file)")
    parser.add_argument("--dataset", choices=("cifar10", "cifar100"), default="cifar10",
                        help="with --long-tail: cifar10 (CIFAR-10-LT) or cifar100 (CIFAR-100-LT)")
    parser.add_argument("--imbalance", type=float, default=100.0, help="with --long-tail: the factor RHO (default 100)")
    parser.add_argument("--parallel", type=int, default=6, help="training runs at once on the one GPU")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="a CPU smoke test: 24 images, 1 epoch")
    args = parser.parse_args()
    if args.dataset != "cifar10" and not args.long_tail:
        parser.error("--dataset cifar100 needs --long-tail (the balanced GPU comparison is CIFAR-10's)")
    if not args.imbalance >= 1 or args.imbalance == float("inf"):
        parser.error(f"--imbalance must be a finite number >= 1, got {args.imbalance}")
    args.models = args.models or (["resnet32"] if args.long_tail else ["resnet18", "resnet20"])
    args.losses = args.losses or (LONG_TAIL_LOSSES if args.long_tail else ["ce", "poly1", "edl"])
    long_tail = {"dataset": args.dataset, "imbalance": args.imbalance} if args.long_tail else None
    start = time.time()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results: dict = {"budget_s": args.budget, "recipe": LONG_TAIL_RECIPE if long_tail else RECIPE, "epochs": EPOCHS,
                     "runs": [], "device": args.device}
    if long_tail:
        results["long_tail"] = dict(long_tail, imbalance=TINY_IMBALANCE if args.tiny else args.imbalance)
    try:
        source = find_data(args.data, args.dataset)
    except FileNotFoundError as err:
        parser.error(str(err))
    scratch = Path(tempfile.mkdtemp(prefix="edloss-gpu-"))
    data_dir = npz_to_pickle_layout(source, scratch, os.cpu_count() or 1) if source.suffix == ".npz" else source
    results["data"] = {"source": source.name, "load_s": time.time() - start}
    print(f"data ready in {time.time() - start:.1f}s ({source.name})", flush=True)
    if args.device.startswith("cuda"):
        results["speed"] = cuda_speed(args.device)
        results["device_name"] = results["speed"]["device_name"]
        write_results(out, results)
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""), PYTHONUNBUFFERED="1")
    queue = [(m, loss, s) for m in args.models for s in args.seeds for loss in args.losses]
    running: list[tuple[subprocess.Popen, dict, float]] = []
    deadline = start + args.budget
    while queue or running:
        while queue and len(running) < args.parallel:
            m, loss, s = queue.pop(0)
            run_dir = scratch / "runs" / m / loss / f"seed{s}"
            run_dir.mkdir(parents=True, exist_ok=True)
            with open(run_dir / "stderr.log", "w") as log:  # a file, not a pipe: a full pipe would block the run
                proc = subprocess.Popen(train_command(m, loss, s, data_dir, run_dir, args.device, args.tiny, long_tail), env=env,
                                        stdout=subprocess.DEVNULL, stderr=log)
            running.append((proc, {"model": m, "loss": loss, "seed": s, "dir": run_dir}, time.time()))
        time.sleep(0.5)
        for item in list(running):
            proc, info, began = item
            if proc.poll() is None and time.time() < deadline:
                continue
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            running.remove(item)
            results["runs"].append(_finished(info, proc, time.time() - began))
            if long_tail and results["runs"][-1].get("shot_rule"):
                results["long_tail"]["rule"] = results["runs"][-1].pop("shot_rule")
            results["wall_s"] = time.time() - start
            write_results(out, results)
        if time.time() >= deadline:
            for m, loss, s in queue:
                results["runs"].append({"model": m, "loss": loss, "seed": s, "status": "not started (budget)"})
            queue = []
    results["wall_s"] = time.time() - start
    write_results(out, results)
    print(render(results))
    return 0


def _finished(info: dict, proc: subprocess.Popen, seconds: float) -> dict:
    result_path = Path(info["dir"]) / "result.json"
    row = {k: v for k, v in info.items() if k != "dir"}
    row["seconds"] = seconds
    if result_path.is_file():
        r = json.loads(result_path.read_text())
        row.update({k: r.get(k) for k in ("status", "test_acc", "best_val_acc", "final_val_acc", "test_nll", "test_ece", "epochs_completed",
                                          "class_counts", "test_shot_acc", "test_acc_posthoc_la")})
        if r.get("shot_groups"):
            row["shot_rule"] = r["shot_groups"]["rule"]
    else:
        log = Path(info["dir"]) / "stderr.log"
        row["status"] = "stopped (budget)" if proc.returncode in (-9, 137) else f"failed: {log.read_text()[-300:] if log.is_file() else proc.returncode}"
    return row


if __name__ == "__main__":
    sys.exit(main())
