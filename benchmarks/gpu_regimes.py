"""The regime matrix on a lent GPU: several regimes at once on the one card, in minutes.

    python benchmarks/gpu_regimes.py --out $OUT --budget 480                 # every regime, 4 at a time
    python benchmarks/gpu_regimes.py --regimes calibration --parallel 3 --out $OUT
    python benchmarks/gpu_regimes.py --tiny --device cpu --out /tmp/r        # a CPU smoke test of the path

On the CPU (two cores, one thread a job) the matrix takes tens of hours; on one GPU a ResNet-20
run on these budgets takes about a minute, so the lent device's few minutes cover most of it.
Each regime is one ``edloss regimes REGIME`` process (``--device cuda``) writing
``OUT/<regime>/`` exactly as on the CPU. Several processes share the card (``--parallel``), each
taking the next regime when one finishes. When ``--budget`` seconds have passed, the unfinished
ones are stopped. Every run checkpoints each epoch, so rerunning the same command resumes them.
Then ``OUT/matrix.md/json/png`` are rewritten from whatever finished.

Data: the compact JPEG archives ``cifar10_jpeg.npz`` and ``cifar100_jpeg.npz`` (18 + 38 MB,
under the 64 MiB a device call carries; decoded once into a temporary pickle layout) or a folder
holding both pickle layouts. GPU numbers differ from CPU numbers by floating point, so a regime
is compared only within one device: they go to their own ``--out`` folder.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from gpu_cifar import find_data, npz_to_pickle_layout  # noqa: E402

TINY = ["--per-class", "2", "--steps", "2", "--arms", "ce"]  # the smoke test's override of every regime
# candidates whose weights do not ship (edl-k100) live in the CPU matrix's folder; a regime's arm names them as
# ``{out}/candidates/NAME``, so the GPU matrix gets a copy beside its own records and runs the same arms
CANDIDATES = ROOT / "docs" / "figures" / "regimes" / "candidates"


def data_folder(c10: str | None, c100: str | None, scratch: Path, workers: int, need_c100: bool) -> Path:
    """One folder holding cifar-10-batches-py (and cifar-100-python when a regime needs it)."""
    for dataset, given in (("cifar10", c10), ("cifar100", c100)):
        if dataset == "cifar100" and not need_c100:
            continue
        found = find_data(given, dataset)
        if found.is_file():
            npz_to_pickle_layout(found, scratch, workers)
        else:
            folder = "cifar-10-batches-py" if dataset == "cifar10" else "cifar-100-python"
            (scratch / folder).symlink_to((found / folder).resolve(), target_is_directory=True)
    return scratch


def command(regime: str, data: Path, out: Path, device: str, tiny: bool) -> list[str]:
    """One regime as ``edloss regimes`` runs it on the CPU: the regime's own arms (``Regime.arms``)."""
    return [sys.executable, "-m", "edloss", "regimes", regime, "--out", str(out), "--data-dir", str(data),
            "--device", device, "--quiet", *(TINY if tiny else [])]


def run_all(regimes: list[str], data: Path, out: Path, device: str, parallel: int, budget: float,
            tiny: bool) -> dict[str, str]:
    """Each regime's status: finished, failed (with its exit code) or stopped at the budget."""
    from edloss.lab.regimes import REGIMES

    waiting, running, status = list(regimes), {}, {}
    start = time.monotonic()
    while waiting or running:
        while time.monotonic() - start < budget and len(running) < parallel:
            # a regime that takes its picks from another waits until that one is no longer waiting or running
            ready = [n for n in waiting if REGIMES[n].picks_from not in set(waiting) | set(running)]
            if not ready:
                break
            name = ready[0]
            waiting.remove(name)
            log = open(out / f"{name}.log", "w")
            running[name] = (subprocess.Popen(command(name, data, out, device, tiny), stdout=log,
                                              stderr=subprocess.STDOUT, cwd=ROOT), log)
            print(f"started {name}", flush=True)
        for name, (proc, log) in list(running.items()):
            if proc.poll() is not None:
                log.close()
                status[name] = "finished" if proc.returncode == 0 else f"failed (exit {proc.returncode}, see {name}.log)"
                print(f"{name}: {status[name]} after {time.monotonic() - start:.0f}s", flush=True)
                del running[name]
        if time.monotonic() - start >= budget:
            for name, (proc, log) in running.items():
                proc.terminate()
                proc.wait(timeout=60)
                log.close()
                status[name] = "stopped at the budget (rerun to resume)"
            status.update({name: "not started (budget)" for name in waiting})
            break
        time.sleep(2)
    return status


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--regimes", nargs="+", default=["all"], help="names, or all / calibration / held-out")
    parser.add_argument("--out", default="runs/regimes-gpu")
    parser.add_argument("--data", default=None, help="cifar10_jpeg.npz or a folder with cifar-10-batches-py")
    parser.add_argument("--data100", default=None, help="cifar100_jpeg.npz or a folder with cifar-100-python")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--parallel", type=int, default=4, help="regimes at once on the one device")
    parser.add_argument("--budget", type=float, default=480, help="seconds before unfinished regimes stop")
    parser.add_argument("--workers", type=int, default=8, help="processes decoding the JPEG archives")
    parser.add_argument("--tiny", action="store_true", help="every regime cut to 2 images per class and 2 steps")
    args = parser.parse_args()
    from edloss.lab.regimes import resolve

    try:
        regimes = resolve(args.regimes)
    except ValueError as err:
        parser.error(str(err))
    if args.parallel < 1 or args.budget <= 0:
        parser.error("--parallel must be >= 1 and --budget > 0")
    out = Path(args.out).absolute()  # the regimes run with the repository as their working directory
    out.mkdir(parents=True, exist_ok=True)
    if CANDIDATES.is_dir() and out != CANDIDATES.parent:
        shutil.copytree(CANDIDATES, out / "candidates", dirs_exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        data = data_folder(args.data, args.data100, Path(scratch), args.workers,
                           any(r.dataset == "cifar100" for r in regimes))
        status = run_all([r.name for r in regimes], data, out, args.device, args.parallel, args.budget, args.tiny)
    subprocess.run([sys.executable, "-m", "edloss", "regimes", "--matrix-only", "--out", str(out)], cwd=ROOT,
                   stdout=subprocess.DEVNULL, check=False)
    for name, state in status.items():
        print(f"{name:16s} {state}")
    print(f"matrix: {out / 'matrix.md'}")
    return 0 if all(s == "finished" for s in status.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
