"""The CMA-ES arm of the ablation: the same pretraining run (rows, checkpoints, export) driven
by the cma package instead of our ES, as the strong-baseline optimiser."""

from __future__ import annotations

import json
import math
import pickle
import time
from pathlib import Path
from typing import Any

import torch

from edloss.configs import diff_dicts, to_dict, versions
from edloss.files import LockedRun, RunLock, atomic_write_bytes, atomic_write_json, prepare_output_folder
from edloss.loss import EDLLoss
from edloss.pretrain import (PretrainConfig, append_row, discard_previous_run, evaluate_generation, export_candidates, generation_row,
                             heldout_set, initial_state, sample_generation, saved_config, truncate_metrics)

from edloss.lab.ablate_config import CMA_CHECKPOINT, CMA_CHECKPOINT_VERSION, CMA_RUN_FILES


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
