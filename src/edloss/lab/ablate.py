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

import argparse
import itertools
import json
import math
import os
import pickle
import shlex
import shutil
import sys
import time
from datetime import datetime, timezone
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from edloss.lab import stats
from edloss.configs import check_fields, diff_dicts, from_dict, load_file, to_dict, versions
from edloss.evolve import MAX_SIGMA, ESConfig
from edloss.files import LockedRun, RunLock, atomic_write_bytes, atomic_write_json, prepare_output_folder, read_jsonl
from edloss.loss import EDLLoss
from edloss.pretrain import (RUN_FILES, PretrainConfig, append_row, discard_previous_run, evaluate_generation, export_candidates,
                             generation_row, heldout_set, initial_state, pretrain, sample_generation, saved_config, truncate_metrics)

ARMS = ("chaotic", "gaussian", "cmaes")
ES_ARMS = ("chaotic", "gaussian")
DEFAULT_SIGMAS = (0.03, 0.1, 0.3)
DEFAULT_SEEDS = tuple(range(10))
DEFAULT_LEVELS = (0.9, 0.93)  # under v3, reached by all 10 seeds at the best sigma in the default ablation (README)
DEFAULT_TRAIN_LEVELS = (0.93, 0.94)  # 0.95 (best of P, smoothed) was reached by few v3 seeds in 100 generations
DEFAULT_CMAES_SIGMAS = (0.1,)
DEFAULT_GENERATIONS = 100
DEFAULT_HELDOUT_EVERY = 5
METRICS = ("fitness", "value", "value_hard", "calibration", "gradient", "kendall_tau")
WORLD_METRICS = ("accuracy_delta", "nll_delta", "ece_delta", "diverged")  # a students-world ablation's, beside fitness
ABLATION_FILE = "ablation.json"
FORMAT_NAME = "edloss-ablation"
FORMAT_VERSION = 1
CMA_CHECKPOINT = "cma_checkpoint.pkl"
CMA_CHECKPOINT_VERSION = 1  # "elapsed_seconds" was added later, optional: older checkpoints still load
CMA_RUN_FILES = tuple(CMA_CHECKPOINT if name == "checkpoint.pt" else name for name in RUN_FILES)
DEFAULT_COMPARE_ARGS = "--seeds 0 1 2 --models resnet20"


@dataclass(frozen=True)
class AblationConfig:
    """The whole experiment: a base pretraining config and the arms x sigmas x seeds grid."""

    base: PretrainConfig = field(default_factory=lambda: default_base())
    arms: tuple[str, ...] = ARMS
    sigmas: tuple[float, ...] = DEFAULT_SIGMAS  # of the ES arms
    seeds: tuple[int, ...] = DEFAULT_SEEDS
    levels: tuple[float, ...] = DEFAULT_LEVELS  # held-out fitness levels for "generations to reach"
    train_levels: tuple[float, ...] = DEFAULT_TRAIN_LEVELS  # levels of the smoothed training fitness (best of P: biased up)
    smooth_window: int = 10  # running mean of the training fitness, in generations
    heldout_smooth: int = 3  # running mean of the held-out fitness, in held-out evaluations
    cmaes_sigmas: tuple[float, ...] = DEFAULT_CMAES_SIGMAS  # CMA-ES adapts its step size: its sigma0 values

    def arm_sigmas(self, arm: str) -> tuple[float, ...]:
        return self.cmaes_sigmas if arm == "cmaes" else self.sigmas

    def cells(self) -> list[tuple[str, float]]:
        """Every (arm, sigma) of the grid, sigmas ascending then arms in order."""
        sigmas = sorted(set(self.sigmas) | (set(self.cmaes_sigmas) if "cmaes" in self.arms else set()))
        return [(arm, s) for s in sigmas for arm in self.arms if s in self.arm_sigmas(arm)]

    def __post_init__(self) -> None:
        check_fields(self)
        object.__setattr__(self, "arms", tuple(self.arms))
        object.__setattr__(self, "sigmas", tuple(float(s) for s in self.sigmas))
        object.__setattr__(self, "seeds", tuple(int(s) for s in self.seeds))
        object.__setattr__(self, "levels", tuple(float(x) for x in self.levels))
        object.__setattr__(self, "train_levels", tuple(float(x) for x in self.train_levels))
        object.__setattr__(self, "cmaes_sigmas", tuple(float(s) for s in self.cmaes_sigmas))
        unknown = [a for a in self.arms if a not in ARMS]
        if unknown or not self.arms:
            raise ValueError(f"arms must be some of {ARMS}, got {list(self.arms)}")
        for name, values in (("arms", self.arms), ("sigmas", self.sigmas), ("seeds", self.seeds), ("cmaes_sigmas", self.cmaes_sigmas)):
            if len(set(values)) != len(values):
                raise ValueError(f"{name} repeat: {list(values)}")
        for name, values in (("sigmas", self.sigmas), ("cmaes_sigmas", self.cmaes_sigmas)):
            if not values or any(not (math.isfinite(s) and 0 < s <= MAX_SIGMA) for s in values):
                raise ValueError(f"{name} must be in (0, {MAX_SIGMA:g}] (at least one), got {list(values)}")
        if not self.seeds or any(s < 0 for s in self.seeds):
            raise ValueError(f"seeds must be >= 0, got {list(self.seeds)}")
        if any(not math.isfinite(x) for x in self.levels + self.train_levels):
            raise ValueError(f"levels must be finite, got {list(self.levels)}, {list(self.train_levels)}")
        if self.smooth_window < 1 or self.heldout_smooth < 1:
            raise ValueError(f"smooth_window and heldout_smooth must be >= 1, got {self.smooth_window}, {self.heldout_smooth}")


def default_base() -> PretrainConfig:
    """The ablation's default budget: ``edloss pretrain``'s config with 100 generations, held-out every 5."""
    return PretrainConfig(es=ESConfig(generations=DEFAULT_GENERATIONS), heldout_every=DEFAULT_HELDOUT_EVERY)


@dataclass(frozen=True)
class Task:
    arm: str
    sigma: float
    seed: int
    config: PretrainConfig
    out_dir: Path


def sigma_label(sigma: float) -> str:
    return f"sigma{sigma:g}"


def run_config(base: PretrainConfig, arm: str, sigma: float, seed: int) -> PretrainConfig:
    """The base config with this arm's mutation, seed and sigma (sigma_final keeps the base ratio)."""
    ratio = base.es.sigma_final / base.es.sigma_init
    mutation = arm if arm in ES_ARMS else "gaussian"  # unused by CMA-ES, whose sampling is Gaussian
    return replace(base, es=replace(base.es, mutation=mutation, seed=seed, sigma_init=sigma, sigma_final=sigma * ratio))


def plan(cfg: AblationConfig, out: Path) -> list[Task]:
    """Every run, seed outermost so a partial ablation covers every arm and sigma alike."""
    return [Task(arm, sigma, seed, run_config(cfg.base, arm, sigma, seed), Path(out) / arm / sigma_label(sigma) / f"seed{seed}")
            for seed in cfg.seeds for arm, sigma in cfg.cells()]


# ---------------------------------------------------------------------- CMA-ES arm
def cma_strategy(cfg: PretrainConfig) -> dict[str, Any]:
    """What decides a CMA-ES run beyond the pretraining config (saved in its config.json)."""
    sigma0 = cfg.es.sigma_init / math.sqrt(2.0) if cfg.es.match_variance else cfg.es.sigma_init
    return {"name": "cmaes", "popsize": cfg.es.population, "sigma0": sigma0, "cma_seed": cfg.es.seed + 1,
            "x0": "best individual of the ES arms' initial population on generation 0's batch",
            "covariance": "full", "export_candidates": "top elites of the last generation and the CMA mean"}


class CMARun(LockedRun):
    """A CMA-ES pretraining run in a folder, with the same rows, checkpoints and export as ``pretrain.Run``.

    cma draws from numpy's global generator; the run keeps that generator's state as its own
    (restored around every ask/tell, saved in the checkpoint), so a resumed run reproduces an
    uninterrupted one and other numpy users in the process cannot disturb it. Like ``pretrain.Run``
    it holds its folder's lock until ``close()`` (or the end of a ``with`` block).
    """

    def __init__(self, cfg: PretrainConfig, out: Path, command: str = "", fresh: bool = False) -> None:
        self.cfg, self.out, self.command = cfg, Path(out), command
        self._lock: RunLock | None = None
        prepare_output_folder(self.out)
        self._lock = RunLock(self.out, "pretraining run").__enter__()
        try:
            self.strategy = cma_strategy(cfg)
            self.heldout = heldout_set(cfg)
            if fresh:
                discard_previous_run(self.out, CMA_RUN_FILES)
            self.es: Any = None
            self.np_state: Any = None
            self.generation = 0
            self.population = initial_state(cfg).population
            self.fitness: torch.Tensor | None = None
            self.elapsed_before = 0.0  # wall seconds of earlier segments, from the checkpoint
            self._resume_or_init()
        except BaseException:
            self.close()
            raise
        self.segment_start = time.perf_counter()

    def _resume_or_init(self) -> None:
        path = self.out / CMA_CHECKPOINT
        if not path.exists():  # a start from generation 0: nothing an earlier run wrote may stay
            discard_previous_run(self.out, CMA_RUN_FILES)
            atomic_write_json(self.out / "config.json", {"config": to_dict(self.cfg), "strategy": self.strategy, "command": self.command,
                                                         "seed": self.cfg.es.seed, "versions": {**versions(), "cma": _cma_version()}})
            return
        try:
            saved = pickle.loads(path.read_bytes())  # our own file, written by save_checkpoint
        except Exception as err:  # noqa: BLE001 - any failure to read means a damaged file
            raise ValueError(f"checkpoint {path} is unreadable ({err}); delete it to start that run over") from err
        if saved.get("version") != CMA_CHECKPOINT_VERSION:
            raise ValueError(f"checkpoint {path} has version {saved.get('version')}, expected {CMA_CHECKPOINT_VERSION}")
        differences = diff_dicts({"config": saved_config(json.loads(saved["config"])), "strategy": saved["strategy"]},
                                 {"config": to_dict(self.cfg), "strategy": self.strategy})
        if differences:
            raise ValueError(f"{self.out} holds a run with a different config; use another --out. Differences: " + "; ".join(differences))
        self.es, self.np_state, self.generation = saved["es"], saved["np_random"], saved["generation"]
        self.population, self.fitness = torch.from_numpy(saved["population"]), torch.from_numpy(saved["fitness"])
        self.elapsed_before = float(saved.get("elapsed_seconds", 0.0))
        truncate_metrics(self.out, self.generation)

    def save_checkpoint(self) -> None:
        payload = {"version": CMA_CHECKPOINT_VERSION, "config": json.dumps(to_dict(self.cfg)), "strategy": self.strategy,
                   "generation": self.generation, "es": self.es, "np_random": self.np_state,
                   "population": self.population.numpy(), "fitness": self.fitness.numpy(), "elapsed_seconds": self.elapsed()}
        atomic_write_bytes(self.out / CMA_CHECKPOINT, pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL))

    @property
    def done(self) -> bool:
        return self.generation >= self.cfg.es.generations

    def step(self) -> dict[str, Any]:
        import numpy as np

        cfg, t = self.cfg, self.generation
        start = time.perf_counter()
        batches = sample_generation(cfg, t)
        if t == 0:
            theta = initial_state(cfg).population
        else:
            np.random.set_state(self.np_state)
            asked = self.es.ask()
            theta = torch.from_numpy(np.asarray(asked)).float()
        metrics = evaluate_generation(cfg, theta, batches)
        fitness = metrics["fitness"]
        if not bool(torch.isfinite(fitness).all()):
            raise ValueError("fitness contains NaN or Inf; check the objective configuration")
        sigma = self.strategy["sigma0"] if self.es is None else float(self.es.sigma)
        row = generation_row(cfg, t, sigma, batches, theta, metrics, self.heldout)
        if t == 0:
            import cma

            x0 = theta[int(torch.argmax(fitness))].double().numpy()
            options = {"popsize": self.strategy["popsize"], "seed": self.strategy["cma_seed"], "verbose": -9}
            self.es = cma.CMAEvolutionStrategy(x0, self.strategy["sigma0"], options)  # seeds numpy's generator
        else:
            self.es.tell(asked, (-fitness.double()).tolist())  # cma minimises
        self.np_state = np.random.get_state()
        row["step_rms"] = float(self.es.sigma * math.sqrt(float(np.mean(self.es.sm.variances))))
        row["reseeds"] = 0
        row["seconds"] = time.perf_counter() - start
        self.population, self.fitness = theta.detach().clone(), fitness.detach().clone()
        self.generation = t + 1
        append_row(self.out, row)
        if self.generation % cfg.checkpoint_every == 0 or self.done:
            self.save_checkpoint()
        return row

    def export(self, wall_seconds: float) -> tuple[EDLLoss, dict[str, Any]]:
        """As ``pretrain.Run.export``: the candidate with the best held-out fitness, scale-anchored."""
        cfg = self.cfg
        order = torch.argsort(self.fitness, descending=True, stable=True)[: max(cfg.es.elites, 1)]
        mean = torch.as_tensor(self.es.mean, dtype=torch.float32)[None]
        candidates = torch.cat([self.population[order], mean])
        names = [f"elite{i}" for i in range(len(order))] + ["mean"]
        extra = {"generations": self.generation, "mutation": "cmaes", "strategy": self.strategy, "chaos_reseeds": 0,
                 "cma_final_sigma": float(self.es.sigma), "cma_stop_conditions": {str(k): str(v) for k, v in dict(self.es.stop()).items()}}
        versions_extra = {"strategy": self.strategy, "versions": {**versions(), "cma": _cma_version()}}
        loss, summary, best = export_candidates(cfg, candidates, self.heldout, self.out, self.command, wall_seconds, summary_extra=extra,
                                          provenance_extra=versions_extra, label=f"EDL (CMA-ES, seed {cfg.es.seed})")
        summary["chosen"] = names[best]
        atomic_write_json(self.out / "summary.json", summary)
        return loss, summary


def _cma_version() -> str:
    import cma

    return str(cma.__version__)


def cma_pretrain(cfg: PretrainConfig, out: Path, command: str = "", fresh: bool = False) -> tuple[EDLLoss, dict[str, Any]]:
    """Run (or resume) a CMA-ES pretraining run in ``out`` and export its loss."""
    with CMARun(cfg, out, command, fresh) as run:  # holds out/.lock until the loss is exported
        while not run.done:
            run.step()
        return run.export(run.elapsed())


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


def heldout_of(summary: dict[str, Any]) -> dict[str, Any]:
    """The held-out metrics the run was selected on: the students world's where it evolved there,
    else the ranking objective's (a students run records the ranking's beside, for reference)."""
    return summary.get("world_heldout") or summary["heldout"]


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


def is_finished(run_dir: Path) -> bool:
    return (run_dir / "summary.json").is_file() and (run_dir / "loss" / "loss.json").is_file()


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


# ---------------------------------------------------------------------- reading runs
def read_ablation(out: Path) -> dict[str, Any] | None:
    path = Path(out) / ABLATION_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) and data.get("format") == FORMAT_NAME else None


def generations_to_level(generations: list[int], values: list[float], level: float) -> int | None:
    """The first generation whose value reaches ``level``, or None."""
    for g, v in zip(generations, values):
        if v is not None and v >= level:
            return int(g)
    return None


def running_mean(values: list[float], window: int) -> list[float | None]:
    """Trailing mean over ``window`` values (None until the window is full)."""
    out: list[float | None] = []
    total = 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / window if i >= window - 1 else None)
    return out


def read_run(run_dir: Path, cfg: AblationConfig, generations: int) -> dict[str, Any]:
    """One run's status, curves, held-out metrics of its exported loss and generations-to-level."""
    rows = read_jsonl(run_dir / "metrics.jsonl")
    status = "finished" if is_finished(run_dir) else ("unfinished" if (run_dir / "config.json").is_file() else "missing")
    run: dict[str, Any] = {"dir": str(run_dir), "status": status, "generation": len(rows)}
    train_gen = [r["generation"] for r in rows]
    train = [r["fitness_best"] for r in rows]
    held = [(r["generation"], r["heldout_fitness_best"]) for r in rows if "heldout_fitness_best" in r]
    run["curves"] = {"generation": train_gen, "train_fitness_best": train, "train_fitness_mean": [r["fitness_mean"] for r in rows],
                     "heldout_generation": [g for g, _ in held], "heldout_fitness_best": [v for _, v in held]}
    if status != "finished":
        return run
    summary = json.loads((run_dir / "summary.json").read_text())
    final = heldout_of(summary)
    run["final"] = {m: final.get(m) for m in METRICS + tuple(m for m in WORLD_METRICS if m in final)}
    run["wall_seconds"] = summary.get("wall_seconds")
    run["heldout_auc"] = sum(v for _, v in held) / len(held) if held else None
    run["heldout_max"] = max((v for _, v in held), default=None)
    held_gen, held_val = [g for g, _ in held], [v for _, v in held]
    held_smooth = running_mean(held_val, cfg.heldout_smooth)
    smooth = running_mean(train, cfg.smooth_window)
    run["gens_to_level"] = {
        **{f"heldout_{level:g}": generations_to_level(held_gen, held_smooth, level) for level in cfg.levels},
        **{f"heldout_raw_{level:g}": generations_to_level(held_gen, held_val, level) for level in cfg.levels},
        **{f"train_smoothed_{level:g}": generations_to_level(train_gen, smooth, level) for level in cfg.train_levels}}
    return run


def _censored(values: list[int | None], budget: int) -> list[float]:
    """Never reached counts as the budget itself: later than any generation that did reach it."""
    return [float(budget if v is None else v) for v in values]


def _level_summary(values: list[int | None], budget: int) -> dict[str, Any]:
    reached = [v for v in values if v is not None]
    censored = sorted(_censored(values, budget))
    median = None
    if censored and sum(v is None for v in values) * 2 < len(values):  # more than half reached: the median is a generation
        median = float(censored[len(censored) // 2] if len(censored) % 2 else (censored[len(censored) // 2 - 1] + censored[len(censored) // 2]) / 2)
    return {"values": values, "reached": len(reached), "never": len(values) - len(reached), "median": median,
            "mean_of_reached": sum(reached) / len(reached) if reached else None}


def level_keys(cfg: AblationConfig) -> list[tuple[str, str]]:
    """(key, description) of every generations-to-level quantity a run records."""
    keys = [(f"heldout_{lv:g}", f"generations until held-out fitness (running mean of {cfg.heldout_smooth} evaluations) >= {lv:g}")
            for lv in cfg.levels]
    keys += [(f"heldout_raw_{lv:g}", f"generations until one held-out evaluation >= {lv:g}") for lv in cfg.levels]
    keys += [(f"train_smoothed_{lv:g}", f"generations until the {cfg.smooth_window}-generation running mean of the "
              f"training fitness (best of the population) >= {lv:g}") for lv in cfg.train_levels]
    return keys


def collect(out: Path, cfg: AblationConfig) -> dict[str, Any]:
    """Read every run and build the per-(arm, sigma) groups and the tests between arms."""
    out = Path(out)
    budget = cfg.base.es.generations
    groups: list[dict[str, Any]] = []
    status: dict[str, Any] = {"planned": 0, "finished": 0, "unfinished": [], "missing": []}
    runs_of: dict[tuple[str, float], dict[int, dict[str, Any]]] = {}
    for arm, sigma in cfg.cells():
        runs = {}
        for seed in cfg.seeds:
            run_dir = out / arm / sigma_label(sigma) / f"seed{seed}"
            run = read_run(run_dir, cfg, budget)
            run["seed"] = seed
            status["planned"] += 1
            if run["status"] == "finished":
                status["finished"] += 1
                runs[seed] = run
            else:
                status[run["status"]].append(str(run_dir))
        runs_of[(arm, sigma)] = runs
        groups.append(_group(arm, sigma, runs, cfg, budget))
    status["complete"] = status["finished"] == status["planned"]
    return {"status": status, "groups": groups, "tests": _tests(runs_of, cfg, budget)}


def _group(arm: str, sigma: float, runs: dict[int, dict[str, Any]], cfg: AblationConfig, budget: int) -> dict[str, Any]:
    finished = [runs[s] for s in sorted(runs)]
    group: dict[str, Any] = {"arm": arm, "sigma": sigma, "n": len(finished), "seeds": sorted(runs)}
    group["final"] = {m: {**stats.describe([r["final"][m] for r in finished]), "values": [r["final"][m] for r in finished]} for m in METRICS}
    group["heldout_auc"] = {**stats.describe([r["heldout_auc"] for r in finished]), "values": [r["heldout_auc"] for r in finished]}
    group["heldout_max"] = stats.describe([r["heldout_max"] for r in finished])
    group["wall_seconds"] = stats.describe([r["wall_seconds"] for r in finished])
    group["gens_to_level"] = {key: {**_level_summary([r["gens_to_level"][key] for r in finished], budget), "description": text}
                              for key, text in level_keys(cfg)}
    curves: dict[str, Any] = {}
    full = [r for r in finished if len(r["curves"]["generation"]) == budget]
    if full:
        nan = float("nan")
        curves["n"] = len(full)
        curves["generation"] = full[0]["curves"]["generation"]
        curves["train_fitness_best"] = stats.band([r["curves"]["train_fitness_best"] for r in full])
        curves["train_fitness_mean"] = stats.band([r["curves"]["train_fitness_mean"] for r in full])
        curves["train_fitness_best_smoothed"] = stats.band(
            [[nan if v is None else v for v in running_mean(r["curves"]["train_fitness_best"], cfg.smooth_window)] for r in full])
        curves["heldout_generation"] = full[0]["curves"]["heldout_generation"]
        curves["heldout_fitness_best"] = stats.band([r["curves"]["heldout_fitness_best"] for r in full])
        curves["heldout_fitness_best_smoothed"] = stats.band(
            [[nan if v is None else v for v in running_mean(r["curves"]["heldout_fitness_best"], cfg.heldout_smooth)] for r in full])
    group["curves"] = _json_safe(curves)
    group["runs"] = [{"seed": r["seed"], "dir": r["dir"], "final": r["final"], "heldout_auc": r["heldout_auc"],
                      "gens_to_level": r["gens_to_level"], "wall_seconds": r["wall_seconds"]} for r in finished]
    return group


def _json_safe(obj: Any) -> Any:
    """NaN (undefined running means at the start) as null, so the JSON stays standard."""
    if isinstance(obj, float):
        return None if math.isnan(obj) else obj
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_json_safe(v) for v in obj]
    return obj


def _test_metrics(cfg: AblationConfig) -> list[tuple[str, str, bool]]:
    """(name, description, higher is better) of every compared quantity."""
    out = [(f"final_{m}", f"held-out {m} of the exported loss", True) for m in METRICS]
    out.append(("heldout_auc", "mean held-out fitness over the run (speed and level together)", True))
    out += [(f"gens_to_{key}", text + " (never = the budget)", False) for key, text in level_keys(cfg)]
    return out


def _value(run: dict[str, Any], metric: str, budget: int) -> float | None:
    if metric.startswith("final_"):
        return run["final"][metric[len("final_"):]]
    if metric == "heldout_auc":
        return run["heldout_auc"]
    value = run["gens_to_level"][metric[len("gens_to_"):]]
    return float(budget if value is None else value)


def _tests(runs_of: dict[tuple[str, float], dict[int, dict[str, Any]]], cfg: AblationConfig, budget: int) -> list[dict[str, Any]]:
    """Per metric, sigma and pair of arms present at that sigma: Mann-Whitney, paired Wilcoxon, bootstrap.

    Holm's correction runs within each metric (over its sigmas and pairs).
    """
    tests = []
    sigmas = sorted({s for _, s in runs_of})
    for metric, description, higher in _test_metrics(cfg):
        family = []
        for sigma in sigmas:
            present = [a for a in cfg.arms if (a, sigma) in runs_of]
            for a, b in itertools.combinations(present, 2):
                ra, rb = runs_of[(a, sigma)], runs_of[(b, sigma)]
                va = [_value(ra[s], metric, budget) for s in sorted(ra)]
                vb = [_value(rb[s], metric, budget) for s in sorted(rb)]
                paired = [(_value(ra[s], metric, budget), _value(rb[s], metric, budget)) for s in sorted(set(ra) & set(rb))]
                family.append({"metric": metric, "description": description, "higher_is_better": higher, "sigma": sigma,
                               "a": a, "b": b, "a_stats": stats.describe(va), "b_stats": stats.describe(vb),
                               "mann_whitney": stats.mann_whitney(va, vb), "wilcoxon_paired": stats.wilcoxon_paired(paired),
                               "bootstrap": stats.bootstrap_mean_diff(va, vb)})
        for test, adjusted in zip(family, stats.holm([t["mann_whitney"]["p"] for t in family])):
            test["mann_whitney"]["p_holm"] = adjusted
            mean_a, mean_b = test["a_stats"]["mean"], test["b_stats"]["mean"]
            if mean_a is None or mean_b is None or mean_a == mean_b:
                test["better_mean"] = None
            else:
                test["better_mean"] = test["a"] if (mean_a > mean_b) == higher else test["b"]
        tests += family
    return tests


# ---------------------------------------------------------------------- summary
def best_losses(groups: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per arm, the finished run whose exported loss has the best held-out fitness (any sigma)."""
    best: dict[str, dict[str, Any]] = {}
    for group in groups:
        for run in group["runs"]:
            fit = run["final"]["fitness"]
            if fit is not None and (group["arm"] not in best or fit > best[group["arm"]]["heldout_fitness"]):
                best[group["arm"]] = {"sigma": group["sigma"], "seed": run["seed"], "run": run["dir"], "heldout_fitness": fit}
    return best


def _copy_loss(source: Path, target: Path, info: dict[str, Any]) -> None:
    """Copy a run's loss folder to ``target`` atomically (skipped when it already holds that loss)."""
    marker = target.parent / "source.json"
    if target.is_dir() and marker.is_file() and json.loads(marker.read_text()).get("run") == info["run"]:
        return
    tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(source, tmp)
    if target.exists():
        shutil.rmtree(target)
    os.replace(tmp, target)
    atomic_write_json(marker, info)


def compare_command(out: Path, arms: list[str], compare_args: str) -> str:
    losses = " ".join(["ce"] + [f"{arm}=edl:{Path(out) / 'best' / arm / 'loss'}" for arm in arms])
    return f"edloss compare --losses {losses} {compare_args} --out {Path(out) / 'compare'}".replace("  ", " ")


def write_summary(out: Path, cfg: AblationConfig, command: str = "", compare_args: str = DEFAULT_COMPARE_ARGS,
                  materialise_best: bool = False, invocation: dict[str, Any] | None = None,
                  failures: list[dict[str, str]] | None = None) -> dict[str, Any]:
    """Collect the runs, compute the statistics and write ``out/ablation.json`` atomically.

    ``failures`` ({"dir", "error"} of runs that failed on Ray) are listed in ``status.failed``.
    ``invocation`` (jobs, threads, started, seconds) is this command's (a summary-only rewrite, which
    passes none, keeps the last command's); ``invocations`` keeps every
    command that worked on the folder, so a resumed ablation's wall time is the sum of its parts,
    and ``run_seconds`` is the summed wall time of the finished runs (the work, however split).
    """
    out = Path(out)
    collected = collect(out, cfg)
    if failures:
        collected["status"]["failed"] = list(failures)
    base = cfg.base
    best = best_losses(collected["groups"])
    for arm, info in best.items():
        info["loss"] = str(out / "best" / arm / "loss")
        info["provisional"] = not collected["status"]["complete"]
        if materialise_best:
            _copy_loss(Path(info["run"]) / "loss", out / "best" / arm / "loss", info)
    previous = read_ablation(out) or {}
    started = (invocation or {}).get("started")
    history = [x for x in previous.get("invocations", []) if started is None or x.get("started") != started]
    history += [invocation] if invocation else []
    summary = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "command": command or previous.get("command", ""),
        "config": to_dict(cfg),
        "budget": {"generations": base.es.generations, "population": base.es.population,
                   "fitness_evaluations_per_run": base.es.generations * base.es.population,
                   "synthetic_blocks_per_generation": base.objective.blocks,
                   "loss_evaluations_per_block": base.objective.evals_per_block, "heldout_every": base.heldout_every,
                   "sigma_schedule": f"{base.es.schedule} from sigma to sigma*{base.es.sigma_final / base.es.sigma_init:g} (ES arms)",
                   "gaussian_step": "N(0,1)/sqrt(2) (chaotic step variance)" if base.es.match_variance else "N(0,1)"},
        "arms_description": {"chaotic": "ES, logistic-map mutation", "gaussian": "ES, Gaussian mutation",
                             "cmaes": "cma.CMAEvolutionStrategy, full covariance, same population, starts from generation 0's best"},
        "status": collected["status"],
        "groups": collected["groups"],
        "tests": collected["tests"],
        "best": best,
        "compare_command": compare_command(out, [a for a in cfg.arms if a in best], compare_args) if best else None,
        "invocation": invocation or previous.get("invocation", {}),
        "invocations": history,
        "run_seconds": sum(r["wall_seconds"] or 0.0 for g in collected["groups"] for r in g["runs"]),
        "versions": versions(),
    }
    atomic_write_json(out / ABLATION_FILE, summary)
    return summary


def format_summary(summary: dict[str, Any]) -> str:
    """A plain-text table of the headline numbers, for the terminal."""
    levels = summary["config"]["levels"]
    lines = [f"{'arm':<9} {'sigma':>6} {'n':>3} {'held-out fitness':>18} {'kendall tau':>12} "
             + " ".join(f"{'gens to ' + format(lv, 'g'):>13}" for lv in levels)]
    for g in summary["groups"]:
        f, k = g["final"]["fitness"], g["final"]["kendall_tau"]
        cells = []
        for lv in levels:
            s = g["gens_to_level"][f"heldout_{lv:g}"]
            median = "-" if s["median"] is None else format(s["median"], "g")
            cell = f"{median} ({s['reached']}/{g['n']})"
            cells.append(f"{cell:>13}")
        fit = "-" if f["mean"] is None else f"{f['mean']:.4f} ± {f['std']:.4f}"
        tau = "-" if k["mean"] is None else f"{k['mean']:.4f}"
        lines.append(f"{g['arm']:<9} {g['sigma']:>6g} {g['n']:>3} {fit:>18} {tau:>12} " + " ".join(cells))
    lines.append(f"(gens to L: median generation at which the held-out fitness, running mean of {summary['config']['heldout_smooth']} "
                 "evaluations, reached L; in brackets seeds that reached it)")
    lines.append("")
    lines.append("Mann-Whitney U (two-sided) on final held-out fitness; Wilcoxon on same-seed pairs:")
    for t in summary["tests"]:
        if t["metric"] == "final_fitness":
            mw, wx, bs = t["mann_whitney"], t["wilcoxon_paired"], t["bootstrap"]
            p = "-" if mw["p"] is None else f"{mw['p']:.3g}"
            pw = "-" if wx["p"] is None else f"{wx['p']:.3g}"
            ci = "-" if bs["diff"] is None else f"{bs['diff']:+.4f} [{bs['lo']:+.4f}, {bs['hi']:+.4f}]"
            lines.append(f"  sigma {t['sigma']:g}: {t['a']} vs {t['b']}: p = {p} (Wilcoxon {pw}); mean diff {ci}")
    return "\n".join(lines)


# ---------------------------------------------------------------------- CLI
def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        merged[key] = _merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) else value
    return merged


def config_from_args(args: argparse.Namespace) -> AblationConfig:
    data = to_dict(default_base())
    from_file = load_file(Path(args.config)) if args.config else {}
    for section in ("es", "objective", "lossnet"):
        if not isinstance(from_file.get(section, {}), dict):
            raise ValueError(f"config.{section} must be a table/object, got {type(from_file[section]).__name__}")
    data = _merge(data, from_file)
    if args.generations is not None:
        data["es"]["generations"] = args.generations
    if args.population is not None:
        data["es"]["population"] = args.population
        for key in ("parents", "elites"):  # derived from the population unless the config file sets them
            if key not in from_file.get("es", {}):
                data["es"][key] = None
    if args.heldout_every is not None:
        data["heldout_every"] = args.heldout_every
    base = from_dict(PretrainConfig, data)
    return AblationConfig(base=base, arms=tuple(args.arms), sigmas=tuple(args.sigmas), seeds=tuple(args.seeds),
                          levels=tuple(args.levels), train_levels=tuple(args.train_levels), smooth_window=args.smooth_window,
                          heldout_smooth=args.heldout_smooth, cmaes_sigmas=tuple(args.cmaes_sigmas))


def add_cli(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ablate", help="chaotic vs Gaussian mutation (and CMA-ES) over seeds and sigmas, with statistics",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/ablation", help="ablation folder (default %(default)s)")
    p.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS, help="default: %(default)s")
    p.add_argument("--seeds", nargs="+", type=int, default=list(DEFAULT_SEEDS), help="default: 0 .. 9")
    p.add_argument("--sigmas", nargs="+", type=float, default=list(DEFAULT_SIGMAS), help="initial mutation scales (default: %(default)s)")
    p.add_argument("--generations", type=int, help=f"per run (default {DEFAULT_GENERATIONS})")
    p.add_argument("--population", type=int, help="per generation, every arm (default 64)")
    p.add_argument("--heldout-every", type=int, help=f"held-out evaluation interval in generations (default {DEFAULT_HELDOUT_EVERY})")
    p.add_argument("--cmaes-sigmas", nargs="+", type=float, default=list(DEFAULT_CMAES_SIGMAS),
                   help="initial step sizes of the cmaes arm, which adapts its own (default: %(default)s)")
    p.add_argument("--levels", nargs="+", type=float, default=list(DEFAULT_LEVELS),
                   help="held-out fitness levels for generations-to-level (default: %(default)s)")
    p.add_argument("--train-levels", nargs="+", type=float, default=list(DEFAULT_TRAIN_LEVELS),
                   help="levels of the smoothed training fitness, best of the population so biased upwards (default: %(default)s)")
    p.add_argument("--smooth-window", type=int, default=10, help="running mean of training fitness, generations (default %(default)s)")
    p.add_argument("--heldout-smooth", type=int, default=3, help="running mean of held-out fitness, evaluations (default %(default)s)")
    p.add_argument("--config", help="JSON or TOML base pretraining config (sections lossnet, objective, es); flags override it")
    p.add_argument("--jobs", type=int, default=1, help="worker processes, one run each at a time (default %(default)s; 2 on a free 2-core machine)")
    p.add_argument("--threads", type=int, default=1, help="torch/BLAS threads per worker or Ray task (default %(default)s)")
    p.add_argument("--ray", metavar="ADDRESS", help="run each run as a task on a Ray cluster instead of --jobs processes: HOST:PORT, "
                   "ray://HOST:PORT, or auto ($RAY_ADDRESS, a cluster started on this machine, else a new local one). "
                   "Needs pip install 'edloss[ray]' and --out on storage every node shares")
    p.add_argument("--compare-args", default=DEFAULT_COMPARE_ARGS, help="recipe flags for the printed edloss compare command (default: %(default)r)")
    p.add_argument("--evals-per-generation", nargs="+", type=int, metavar="N",
                   help="fitness-noise axis: one chaotic vs Gaussian ablation per level of synthetic evaluations per "
                        "generation (e.g. 256 1024 4096 16384) into OUT/evals<N>/, the held-out set fixed, and "
                        "OUT/fitness_noise.json/.png comparing the arms at each one's best sigma across levels")
    p.add_argument("--summary-only", action="store_true", help="only rewrite ablation.json (and best/) from the runs present")
    p.add_argument("--quiet", action="store_true", help="no progress lines or table")
    p.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    if args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    if args.jobs < 1:
        raise ValueError(f"--jobs must be >= 1 (worker processes), got {args.jobs}")
    cfg = config_from_args(args)
    if args.evals_per_generation:
        return _fitness_noise_main(args, cfg)
    if args.ray is not None:
        from edloss import distributed

        distributed.resolve_address(args.ray)  # a wrong address fails before the folder is made
    if args.summary_only and str(args.out).strip() and read_ablation(Path(args.out)) is None:
        raise FileNotFoundError(f"{Path(args.out) / ABLATION_FILE} does not exist (or is not an edloss ablation); run edloss ablate first")
    out = prepare_output_folder(args.out)
    torch.set_num_threads(args.threads)
    command = "edloss " + shlex.join(sys.argv[1:]) if sys.argv and Path(sys.argv[0]).name == "edloss" else "edloss ablate " + shlex.join(_argv_of(args))
    if args.summary_only:
        with RunLock(out, "ablation"):
            saved = read_ablation(out)
            if saved is None:
                raise FileNotFoundError(f"{out / ABLATION_FILE} disappeared; run edloss ablate first")
            cfg = from_dict(AblationConfig, saved["config"])  # the recorded grid, whatever the flags say
            summary = write_summary(out, cfg, "", compare_args=args.compare_args, materialise_best=True)
    else:
        summary = ablate(cfg, out, command, jobs=args.jobs, threads=args.threads, progress=not args.quiet, compare_args=args.compare_args,
                         ray=args.ray)
    if not args.quiet:
        print(format_summary(summary))
        print(f"\nwrote {out / ABLATION_FILE}")
        if summary["compare_command"]:
            print(f"downstream check (CIFAR-10, same budget for every arm):\n  {summary['compare_command']}")
    for failure in summary["status"].get("failed", []):
        print(f"edloss ablate: failed: {failure['dir']}: {failure['error']}", file=sys.stderr)
    return 1 if summary["status"].get("failed") else 0


def _fitness_noise_main(args: argparse.Namespace, cfg: AblationConfig) -> int:
    """``--evals-per-generation``: the chaotic vs Gaussian ablation at each fitness-noise level."""
    from edloss.lab import fitness_noise

    if "cmaes" in args.arms and args.arms != list(ARMS):
        raise ValueError("--evals-per-generation compares chaotic and Gaussian mutation; drop cmaes from --arms")
    levels = fitness_noise.check_levels(args.evals_per_generation, cfg.base)
    out = prepare_output_folder(args.out)
    torch.set_num_threads(args.threads)
    command = "edloss ablate " + shlex.join(_argv_of(args))
    result = fitness_noise.run(replace(cfg, arms=ES_ARMS), levels, out, command, jobs=args.jobs, threads=args.threads,
                               progress=not args.quiet, summary_only=args.summary_only)
    if not args.quiet:
        print(fitness_noise.format_table(result))
        print(f"\nwrote {out / fitness_noise.SUMMARY_FILE} and {out / fitness_noise.FIGURE_FILE}")
    return 0


def _argv_of(args: argparse.Namespace) -> list[str]:
    out: list[str] = []
    for key, value in vars(args).items():
        if key in ("func", "command") or value in (None, False):
            continue
        flag = "--" + key.replace("_", "-")
        if value is True:
            out.append(flag)
        elif isinstance(value, list):
            out += [flag, *map(str, value)]
        else:
            out += [flag, str(value)]
    return out
