"""The GPU comparison, prepared for a lent GPU: full-data CIFAR-10, CE / Poly-1 / EDL, in minutes.

    python benchmarks/gpu_cifar.py                          # on a GPU: ResNet-18 x {ce, poly1, edl} x seeds 0 1, then ResNet-20
    python benchmarks/gpu_cifar.py --data data/cifar10_jpeg.npz --out $OUT --budget 480
    python benchmarks/gpu_cifar.py --tiny --device cpu      # a CPU smoke test of the whole path

What it does, in order, writing ``results.json`` (atomically, after every finished run, so a
cut-off still leaves data) and ``table.md`` into ``--out``:

1. data: the compact JPEG copy ``cifar10_jpeg.npz`` (decoded with Pillow in parallel and written
   as the standard pickle layout into a temporary folder) or a folder holding
   ``cifar-10-batches-py``; 45,000 train / 5,000 validation (the last training images) / 10,000 test;
2. speed: ``EDLLoss`` forward+backward against ``F.cross_entropy`` at 512 x 10 and 4096 x 1000,
   and one ResNet-18 training step with each (CUDA events);
3. training: ``edloss train`` runs, several at once on the one GPU (``--parallel``), bf16 autocast
   and channels-last, the recipe below, identical for every loss; whatever has not finished when
   the budget runs out is stopped and reported as such.

Recipe (not tuned on the test set; ResNet-18 is expected to pass 93% test accuracy with CE):
batch 512, SGD Nesterov 0.9, peak lr 0.4, weight decay 5e-4, one-cycle schedule, crop + flip,
ResNet-18 20 epochs, ResNet-20 30 epochs.
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
    """Write ``dest/cifar-10-batches-py`` from the compact JPEG archive (the same pixels as the
    pickled copy, see ../shared/data/README.md); returns ``dest``."""
    import numpy as np

    arrays = np.load(npz)
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


def find_data(given: str | None) -> Path:
    """An npz file or a folder holding cifar-10-batches-py: the option, the repo's data/, $EDLOSS_DATA, ../shared/data."""
    if given and not (Path(given).is_file() or Path(given).is_dir()):  # never fall back from a path the user named
        raise FileNotFoundError(f"--data {given}: no such file or folder")
    candidates = [given, ROOT / "data" / "cifar10_jpeg.npz", os.environ.get("EDLOSS_DATA"), ROOT.parent / "shared" / "data"]
    for c in candidates:
        if not c:
            continue
        c = Path(c)
        if c.is_file() and c.suffix == ".npz":
            return c
        if (c / "cifar-10-batches-py" / "data_batch_1").is_file():
            return c
        if (c / "cifar-10-jpeg" / "cifar10_jpeg.npz").is_file():
            return c / "cifar-10-jpeg" / "cifar10_jpeg.npz"
    raise FileNotFoundError("no CIFAR-10 found: pass --data FILE.npz or a folder holding cifar-10-batches-py "
                            "(or put cifar10_jpeg.npz in data/, an ignored folder)")


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
    return out


# ---------------------------------------------------------------------- training
def train_command(model: str, loss: str, seed: int, data_dir: Path, out: Path, device: str, tiny: bool) -> list[str]:
    recipe = dict(RECIPE, epochs=EPOCHS[model])
    if tiny:  # a smoke test of the whole path on a handful of images
        recipe.update({"epochs": 1, "batch-size": 8, "val-size": 8, "train-subset": 24})
    cmd = [sys.executable, "-m", "edloss", "train", "--model", model, "--loss", loss, "--seed", str(seed),
           "--data-dir", str(data_dir), "--device", device, "--threads", "2", "--quiet", "--fresh", "--out", str(out)]
    for key, value in recipe.items():
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
    speed = results.get("speed")
    if speed:
        lines += ["", "| EDLLoss fwd+bwd | CE (µs) | EDL (µs) | EDL / CE |", "|---|---|---|---|"]
        lines += [f"| {r['shape']} | {r['ce']:.0f} | {r['edl']:.0f} | {r['edl_over_ce']:.2f} |" for r in speed["loss_call_us"]]
        s = speed["resnet18_step_us"]
        lines.append(f"| ResNet-18 training step, batch 512 | {s['ce']:.0f} | {s['edl']:.0f} | {s['edl_over_ce']:.2f} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="cifar10_jpeg.npz or a folder holding cifar-10-batches-py")
    parser.add_argument("--out", default=os.environ.get("OUT") or "runs/gpu_cifar", help="results folder (default $OUT, else runs/gpu_cifar)")
    parser.add_argument("--budget", type=float, default=480.0, help="seconds for everything, data loading included (default 480)")
    parser.add_argument("--models", nargs="+", default=["resnet18", "resnet20"])
    parser.add_argument("--losses", nargs="+", default=["ce", "poly1", "edl"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--parallel", type=int, default=6, help="training runs at once on the one GPU")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="a CPU smoke test: 24 images, 1 epoch")
    args = parser.parse_args()
    start = time.time()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results: dict = {"budget_s": args.budget, "recipe": RECIPE, "epochs": EPOCHS, "runs": [], "device": args.device}
    try:
        source = find_data(args.data)
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
                proc = subprocess.Popen(train_command(m, loss, s, data_dir, run_dir, args.device, args.tiny), env=env,
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
        row.update({k: r.get(k) for k in ("status", "test_acc", "best_val_acc", "final_val_acc", "test_nll", "test_ece", "epochs_completed")})
    else:
        log = Path(info["dir"]) / "stderr.log"
        row["status"] = "stopped (budget)" if proc.returncode in (-9, 137) else f"failed: {log.read_text()[-300:] if log.is_file() else proc.returncode}"
    return row


if __name__ == "__main__":
    sys.exit(main())
