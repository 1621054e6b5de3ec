"""``edloss ablate``: chaotic vs Gaussian mutation (and CMA-ES) over many seeds, with statistics.

The paper's ablation claim (EDL_METHOD.md, claim 7): chaotic mutation converges faster and reaches
better synthetic pretraining metrics than Gaussian mutation. This command tests it.

Every (arm, sigma, seed) is an ordinary pretraining run folder, ``OUT/<arm>/sigma<s>/seed<k>/``,
so an interrupted ablation resumes where it stopped: finished runs (``summary.json``) are
skipped, interrupted ones continue from their checkpoint, and a folder that holds another
config is refused before anything runs.

Arms, all on the same fitness (``objective.evaluate`` of the same per-generation batches,
``batch_seed(seed, t)``), the same population size, generations and held-out set:

* ``chaotic`` / ``gaussian``: ``edloss.evolve`` with only ``es.mutation`` different. Sigma follows
  the same cosine schedule from ``sigma`` to ``sigma * sigma_final/sigma_init`` of the base config
  (0.1 of it by default), and the Gaussian step is N(0, 1)/sqrt(2), the chaotic step's variance.
* ``cmaes``: ``cma.CMAEvolutionStrategy`` (Hansen's reference implementation, full covariance,
  ``popsize`` = the ES population). Generation 0 evaluates the same initial population as the ES
  arms (same seed, same batch); CMA-ES then starts from its best individual with
  ``sigma0 = sigma/sqrt(2)`` (the ES arms' initial per-gene step std) and adapts its own step
  size and covariance from there (no shared schedule: adaptation is what CMA-ES is). Its loss
  is exported as the ES arms' is: the candidate (last generation's top ``elites`` and the CMA
  mean) with the best held-out fitness, scale-anchored to cross-entropy's gradient norm.

``OUT/ablation.json`` (rewritten as runs finish) holds, per arm and sigma: fitness per generation
(mean, std, quartiles, min, max over seeds) on the fresh training batch and on the held-out set;
generations to reach each fitness level on the held-out set and on a running mean of the
training fitness (with how many seeds never reached it); the exported loss's held-out metrics;
and per sigma, for every pair of arms and metric: Mann–Whitney U (two-sided), a paired Wilcoxon
test (same seed = same initial population and batches), and a bootstrap 95% interval of the
difference in means, with Holm-adjusted p-values within each metric.

It also copies each arm's best loss (best held-out fitness over all its sigmas and seeds) to
``OUT/best/<arm>/loss`` and writes the ``edloss compare`` command that trains them on CIFAR.

Default grid: seeds 0-9; chaotic and Gaussian at sigma 0.03, 0.1 and 0.3; CMA-ES from sigma 0.1
(``--cmaes-sigmas 0.03 0.1 0.3`` sweeps it too): 70 runs of ``edloss pretrain``'s default config
cut to 100 generations (population 64, 4 blocks x 4,096 evaluations per generation), held-out
every 5 generations. Measured with the default v3 objective: 13 minutes with ``--jobs 2
--threads 1`` on 2 cores, 24 minutes of summed run time (so about 25 with ``--jobs 1``). The
default ``--levels`` / ``--train-levels`` suit that objective, value consistency plus a negative
calibration term: at the best sigma (0.1) every seed reached held-out 0.9 and 0.93 by generation
20-30 (median) and the smoothed training fitness 0.93 and 0.94 soon after
(README, "Ablation"). For the v0 objective (value alone, 0..1) pass e.g. ``--levels 0.85 0.9
--train-levels 0.94 0.95``.

The ablation holds ``OUT/.lock`` while it runs (and each run its own folder's): a second
``edloss ablate`` into the same ``--out`` is refused, naming the process that holds it.

``--ray ADDRESS`` (or ``auto``) runs every unfinished run as a Ray task of ``--threads`` CPUs
instead of local worker processes (``edloss.distributed``), into the same run folders (on a
file system every node shares). A task whose worker dies is retried and resumes from its
checkpoint; a run that fails is listed under ``status.failed`` in ``ablation.json``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from edloss.configs import diff_dicts, from_dict, to_dict
from edloss.files import RunLock, prepare_output_folder, read_jsonl  # noqa: F401 (read_jsonl: importable from here)
from edloss.pretrain import (PretrainConfig, pretrain, saved_config)

# ---------------------------------------------------------------------- running the grid
def run_task(payload: dict[str, Any]) -> dict[str, Any]:
    """Run one (arm, sigma, seed); a top-level function so worker processes can call it."""
    cfg = from_dict(PretrainConfig, payload["config"])
    out = Path(payload["out_dir"])
    start = time.perf_counter()
    if payload["arm"] == "cmaes":
        _, summary = cma_pretrain(cfg, out, payload["command"])
    else:
        _, summary = pretrain(cfg, out, payload["command"], progress=False)
    return {**{k: payload[k] for k in ("arm", "sigma", "seed", "out_dir")},
            "heldout_fitness": heldout_of(summary)["fitness"], "seconds": time.perf_counter() - start}
# the ablation's vocabulary, its CMA-ES arm and its summary, importable from here as before the split
from edloss.lab.ablate_config import (ABLATION_FILE, ARMS, DEFAULT_COMPARE_ARGS, DEFAULT_GENERATIONS,  # noqa: F401
                                      ES_ARMS, FORMAT_NAME, METRICS, AblationConfig, Task, default_base, plan,
                                      run_config, sigma_label)
from edloss.lab.ablate_summary import (_censored, collect, format_summary, generations_to_level,  # noqa: F401
                                       heldout_of, is_finished, read_ablation, running_mean, write_summary)
from edloss.lab.cma import CMA_CHECKPOINT, CMARun, cma_pretrain, cma_strategy  # noqa: F401



def _init_worker(threads: int, parent: int | None = None) -> None:
    """A worker ends with its parent, so a killed ablation leaves no orphan writing into (and
    locking) a run folder. ``parent`` is the pid of the process that made the pool, passed in:
    a worker imports torch before this runs, and a parent killed meanwhile was already gone
    when the worker first looked (measured: such an orphan ran on for 40 minutes). PR_SET_PDEATHSIG
    covers a parent that dies later, a watchdog thread the platforms without it; every file a
    run writes is atomic, so ending mid-run leaves nothing half-written."""
    torch.set_num_threads(threads)
    parent = os.getppid() if parent is None else parent
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:  # died before the signal was armed
        os._exit(1)
    import threading

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="edloss-parent-watchdog", daemon=True).start()


def _saved_config(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / "config.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _expected(task: Task) -> dict[str, Any]:
    out = {"config": to_dict(task.config)}
    if task.arm == "cmaes":
        out["strategy"] = cma_strategy(task.config)
    return out


def mismatches(tasks: list[Task]) -> list[str]:
    """Run folders that hold a run of a different config (or strategy)."""
    problems = []
    for task in tasks:
        saved = _saved_config(task.out_dir)
        if saved is None:
            continue
        expected = _expected(task)
        diff = diff_dicts({k: saved_config(saved[k]) if k == "config" and isinstance(saved.get(k), dict) else saved.get(k)
                           for k in expected}, expected)
        if diff:
            problems.append(f"{task.out_dir}: {'; '.join(diff[:4])}" + (f" (+{len(diff) - 4} more)" if len(diff) > 4 else ""))
    return problems



def ablate(cfg: AblationConfig, out: Path, command: str = "", jobs: int = 1, threads: int = 1, progress: bool = True,
           compare_args: str = DEFAULT_COMPARE_ARGS, summary_every: float = 60.0, ray: str | None = None) -> dict[str, Any]:
    """Run (or finish) the ablation in ``out``; returns the summary written to ``out/ablation.json``.

    ``jobs`` worker processes (spawned, ``threads`` torch/BLAS threads each) run the seeds;
    ``jobs=0`` runs them in this process (tests). ``ray``: a Ray cluster address (or ``auto``)
    whose tasks of ``threads`` CPUs run them instead (``jobs`` is then unused); runs that fail
    there are listed in ``status.failed`` and the others go on.
    """
    out = prepare_output_folder(out)
    with RunLock(out, "ablation"):  # one ablation per folder; each run also locks its own
        return _ablate_locked(cfg, out, command, jobs, threads, progress, compare_args, summary_every, ray)


def _ablate_locked(cfg: AblationConfig, out: Path, command: str, jobs: int, threads: int, progress: bool,
                   compare_args: str, summary_every: float, ray: str | None) -> dict[str, Any]:
    tasks = plan(cfg, out)
    problems = mismatches(tasks)
    if problems:
        raise ValueError("run folders hold runs of a different config (use another --out, or the flags of the "
                         "ablation that made them):\n  " + "\n  ".join(problems))
    saved = read_ablation(out)
    differences = diff_dicts(saved_config(saved["config"]["base"]), to_dict(cfg.base)) if saved and saved.get("config") else []
    if differences:
        raise ValueError(f"{out / ABLATION_FILE} records an ablation with another base config; use another --out. "
                         "Differences: " + "; ".join(differences[:6]))
    if ray is not None:
        from edloss import distributed

        distributed.resolve_address(ray)  # a wrong address fails now, even when nothing is left to run
    invocation = {"jobs": jobs, "threads": threads} if ray is None else {"ray": ray, "threads": threads}
    invocation["started"] = datetime.now(timezone.utc).isoformat(timespec="microseconds")
    failures: list[dict[str, str]] = []
    started = time.perf_counter()
    write_summary(out, cfg, command, compare_args=compare_args, invocation={**invocation, "seconds": 0.0})
    todo = [t for t in tasks if not is_finished(t.out_dir)]
    if len(todo) < len(tasks):
        _say(progress, f"{len(tasks) - len(todo)} of {len(tasks)} runs finished earlier, skipped")
    payloads = [{"arm": t.arm, "sigma": t.sigma, "seed": t.seed, "out_dir": str(t.out_dir), "config": to_dict(t.config),
                 "command": command} for t in todo]
    last_summary = time.perf_counter()

    def finished(i: int, result: dict[str, Any]) -> None:
        nonlocal last_summary
        elapsed = time.perf_counter() - started
        eta = elapsed / i * (len(todo) - i)
        _say(progress, f"[{i}/{len(todo)}] {result['arm']} sigma {result['sigma']:g} seed {result['seed']}: held-out fitness "
                       f"{result['heldout_fitness']:.4f} in {result['seconds']:.1f}s (elapsed {elapsed:.0f}s, ~{eta:.0f}s left)")
        if time.perf_counter() - last_summary > summary_every:
            write_summary(out, cfg, command, compare_args=compare_args, failures=failures,
                          invocation={**invocation, "seconds": time.perf_counter() - started})
            last_summary = time.perf_counter()

    if ray is not None:
        count = iter(range(1, len(payloads) + 1))

        def failed(payload: dict[str, Any], message: str) -> None:
            failures.append({"dir": payload["out_dir"], "error": message})
            _say(True, f"[{next(count)}/{len(todo)}] {payload['arm']} sigma {payload['sigma']:g} seed {payload['seed']}: "
                       f"failed on Ray ({message}); continuing")

        distributed.run_tasks(run_task, payloads, address=ray, num_cpus=threads,
                              on_result=lambda payload, result: finished(next(count), result), on_error=failed)
    elif jobs <= 0:
        for i, payload in enumerate(payloads, 1):
            finished(i, run_task(payload))
    elif payloads:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed

        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):  # cma's numpy: one thread per worker
            os.environ[var] = str(threads)
        pool = ProcessPoolExecutor(max_workers=min(jobs, len(payloads)), mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_init_worker, initargs=(threads, os.getpid()))
        try:
            futures = [pool.submit(run_task, p) for p in payloads]
            for i, future in enumerate(as_completed(futures), 1):
                finished(i, future.result())
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown()
    summary = write_summary(out, cfg, command, compare_args=compare_args, materialise_best=True, failures=failures,
                            invocation={**invocation, "seconds": time.perf_counter() - started})
    return summary


def _say(progress: bool, message: str) -> None:
    if progress:
        print(message, file=sys.stderr, flush=True)
