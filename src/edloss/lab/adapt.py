"""``edloss adapt``: the optional real-data stage, after data-free pretraining.

The paper pretrains "with no real samples during the main pretraining stage"; this is the stage
that may use them. Start from a pretrained loss (the shipped default unless ``--start``), and
run a short evolution strategy (``edloss.evolve``, chaotic or Gaussian mutation) whose fitness
is the validation accuracy of short proxy trainings with the candidate loss, plus the
candidate's synthetic fitness as a regulariser so that it stays a ranking-consistent loss:

    fitness = proxy validation accuracy + synthetic_weight * held-out synthetic fitness

This is the noisiest fitness of the project (one short training per individual), so every
individual of a generation trains with the same proxy seed (same initial weights, batches and
augmentation: common random numbers), and the seed changes from generation to generation so no
loss is chosen for one lucky seed. Generation 0 holds the starting loss itself and mutants
around it; the exported loss is the best individual of the last generation.

Data: proxies train on the training split minus the reporting validation split. The last
``--reserve`` training images (5,000: the validation split of ``edloss train``) are set aside
unread, the proxies' own validation is cut from the rest, and the test set is never read. So an
adapted loss can afterwards be measured on validation (and test) without selection bias.

The run folder holds ``config.json``, ``state.pt`` (the ES state after each finished
generation), ``proxies.jsonl`` (one line per proxy run: generation, individual, validation
accuracy, synthetic fitness, fitness, seconds), ``proxies/gen<G>/ind<I>/`` (each candidate's
loss and its training run; a killed run resumes inside a generation, finished proxies are not
retrained) and, at the end, ``loss/`` (marked ``real_data_stage: true``) and ``summary.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import shutil
import sys
import time
import hashlib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from edloss import evolve
from edloss.configs import check_fields, check_range, diff_dicts, from_dict, to_dict, versions
from edloss.evolve import ESConfig, ESState
from edloss.files import (RunLock, append_jsonl, atomic_torch_save, atomic_write_json, folder_kept_only_if_used, prepare_output_folder,
                          read_jsonl)
from edloss.loss import EDLLoss, evolved_with_prior, is_shipped, loss_folder, pretrained_noise_rate
from edloss.lossnet import LossNet
from edloss.objectives.ranking import ObjectiveConfig, evaluate_population
from edloss.penalties import anchor_gradient_norm, ce_anchor_norm, population_penalty
from edloss.pretrain import PretrainConfig, heldout_set
from edloss.lab.train import TrainConfig, train

CONFIG_FILE, STATE_FILE, PROXIES_FILE, SUMMARY_FILE = "config.json", "state.pt", "proxies.jsonl", "summary.json"
STATE_FORMAT = "edloss-adapt-state"
RUN_FILES = ("loss", "proxies", SUMMARY_FILE, PROXIES_FILE, STATE_FILE, CONFIG_FILE)  # what --fresh removes


def default_proxy() -> TrainConfig:
    """ResNet-8 on 4,000 class-balanced images for 3 epochs, validated on 2,000: ~25 s on one core."""
    return TrainConfig(model="resnet8", epochs=3, train_subset=4000, balanced_subset=True, val_size=2000, reserve=5000,
                       evaluate_test=False, device="cpu")


@dataclass(frozen=True)
class AdaptConfig:
    """The whole adaptation: where it starts, the strategy, the proxy recipe and the regulariser."""

    start: str = "default"  # a shipped loss name (EDLLoss.pretrained) or a loss folder
    mutation: str = "chaotic"
    population: int = 8
    parents: int = 3
    elites: int = 1
    generations: int = 6
    sigma_init: float = 0.03  # small: the start is already a good loss; search its neighbourhood
    sigma_final: float = 0.01
    synthetic_weight: float = 0.25
    seed: int = 0
    proxy: TrainConfig = field(default_factory=default_proxy)

    def __post_init__(self) -> None:
        check_fields(self)
        self.es()  # population, parents, elites, sigmas, generations, mutation: checked by ESConfig
        check_range("synthetic_weight", self.synthetic_weight, 0)
        if self.proxy.val_size < 1:
            raise ValueError("the proxy needs a validation split (proxy val_size >= 1): its accuracy is the fitness")
        if self.proxy.evaluate_test:
            raise ValueError("proxy trainings must not read the test set (proxy evaluate_test = false)")
        if self.proxy.reserve < 1:
            raise ValueError("proxy reserve must set the reporting validation split aside (>= 1 image; default 5000)")
        self.proxy.validate()

    def es(self) -> ESConfig:
        return ESConfig(population=self.population, parents=self.parents, elites=self.elites, mutation=self.mutation,
                        sigma_init=self.sigma_init, sigma_final=self.sigma_final, generations=self.generations, seed=self.seed)


def load_start(start: str) -> EDLLoss:
    """The starting loss (a shipped name, a loss folder or its loss.json, or a run folder holding
    loss/, as ``edloss inspect`` takes), or a clear error naming what to pass. A loss evolved to be
    used with the class prior is refused: the proxies train prior-blind, so its adaptation would
    tune it for a use it was not made for."""
    folder = None if is_shipped(start) else loss_folder(start)
    try:
        loss = EDLLoss.from_file(folder) if folder is not None else EDLLoss.pretrained(start)
    except (OSError, ValueError, KeyError) as err:
        raise ValueError(f"--start {start!r} does not load as a loss ({err}); pass a shipped name "
                         "(default, v3, noise-0.4, ...), a loss folder, or a run folder written by edloss pretrain") from None
    if evolved_with_prior(loss.metadata):
        raise ValueError(f"--start {start!r} was evolved to be used with the class prior (a long-tailed, prior-aware world), "
                         "and adapt's proxies train without one; start from a prior-blind loss (default, noise-0.4, ...)")
    return loss


def synthetic_objective(loss: EDLLoss) -> ObjectiveConfig:
    """The objective the starting loss was pretrained on (its loss.json), else today's default. A
    loss evolved in the students world had no ranking objective: the regulariser is then the
    ranking objective of its world's regime (total variation under noise, as pretraining picks)."""
    config = (loss.metadata or {}).get("config", {})
    saved = config.get("objective") if isinstance(config, dict) else None
    if isinstance(saved, dict) and saved.get("kind") == "students":
        noise = pretrained_noise_rate({"provenance": loss.metadata})
        return ObjectiveConfig(label_noise=noise, severity="tv" if noise > 0 else ObjectiveConfig().severity)
    if isinstance(saved, dict):
        try:
            return from_dict(ObjectiveConfig, saved)
        except ValueError:
            pass
    return ObjectiveConfig()


def synthetic_heldout(loss: EDLLoss, objective: ObjectiveConfig) -> list:
    """The held-out synthetic set the starting loss was scored on: its pretraining's held-out seed
    and size (loss.json), so the regulariser measures the start as pretraining reported it."""
    saved = (loss.metadata or {}).get("config", {})
    keys = {key: saved[key] for key in ("heldout_seed", "heldout_evals_per_block") if key in saved}
    try:
        pretraining = from_dict(PretrainConfig, keys)
    except ValueError:  # a hand-edited file: today's default set, as for the objective
        pretraining = PretrainConfig()
    return heldout_set(replace(pretraining, objective=objective))


def identity(loss: EDLLoss) -> str:
    """A digest of what defines a loss (architecture, scale, weights): which start an adaptation had."""
    digest = hashlib.sha256(loss.net.flat().detach().float().contiguous().numpy().tobytes())
    digest.update(repr((loss.net.config, float(loss.scale))).encode())
    return digest.hexdigest()


def anchored_loss(theta: torch.Tensor, start: EDLLoss, metadata: dict[str, Any]) -> EDLLoss:
    """An individual as a loss, its scale anchored to cross-entropy's gradient norm as pretraining does."""
    config = start.net.config
    norm = float(anchor_gradient_norm(population_penalty(theta[None], config), 1)[0])
    return EDLLoss(LossNet.from_flat(theta, config), scale=ce_anchor_norm() / max(norm, 1e-12), metadata=metadata)


class Adaptation:
    """One adaptation run in a locked folder: resumes from ``state.pt`` and ``proxies.jsonl``."""

    def __init__(self, cfg: AdaptConfig, out: Path, command: str = "", progress: bool = True, fresh: bool = False) -> None:
        self.cfg, self.out, self.command, self.progress, self.fresh = cfg, Path(out), command, progress, fresh
        self.start = load_start(cfg.start)
        self.objective = synthetic_objective(self.start)
        self.heldout = synthetic_heldout(self.start, self.objective)

    def run(self) -> dict[str, Any]:
        prepare_output_folder(self.out)
        with RunLock(self.out, "edloss adapt"):
            if self.fresh:  # only under the lock: never delete what a running adaptation is writing
                discard_previous(self.out)
            self._check_or_write_config()
            state = self._load_state()
            records = read_jsonl(self.out / PROXIES_FILE, repair=True) if (self.out / PROXIES_FILE).is_file() else []
            while state.generation < self.cfg.generations:
                fitness, rows = self._evaluate_generation(state, records)
                if state.generation == self.cfg.generations - 1:
                    return self._export(state, rows)
                state = evolve.tell(state, fitness, self.cfg.es())
                atomic_torch_save({"format": STATE_FORMAT, "state": state.to_dict()}, self.out / STATE_FILE)
            raise AssertionError("unreachable: the last generation exports")

    # ------------------------------------------------------------------ setup and resume
    def _check_or_write_config(self) -> None:
        path = self.out / CONFIG_FILE
        current = {"config": to_dict(self.cfg), "start_definition": identity(self.start)}
        if path.is_file():
            saved = json.loads(path.read_text())
            differences = diff_dicts({k: saved.get(k) for k in current}, current)
            if differences:
                raise ValueError(f"{self.out} holds an adaptation with another config ({'; '.join(differences[:4])}); "
                                 "use another --out or --fresh")
            return
        atomic_write_json(path, {**current, "command": self.command, "versions": versions()})

    def _load_state(self) -> ESState:
        path = self.out / STATE_FILE
        if path.is_file():
            try:
                saved = torch.load(path, weights_only=True)
                assert saved.get("format") == STATE_FORMAT
                return ESState.from_dict(saved["state"])
            except Exception as err:  # noqa: BLE001 - a damaged file: say so, never guess
                raise ValueError(f"{path} is unreadable ({err}); delete it to restart from generation 0 "
                                 "(finished proxies are kept and not retrained)") from None
        es = self.cfg.es()
        theta0 = self.start.net.flat().detach().float()
        state = evolve.init(es, torch.ones_like(theta0))
        gen = torch.Generator().manual_seed(es.seed + 1)
        mutants = theta0 + es.sigma_init * torch.randn(state.population.shape, generator=gen) / math.sqrt(2.0)
        state.population = torch.cat([theta0[None], mutants[1:]])  # individual 0: the starting loss itself
        return state

    # ------------------------------------------------------------------ fitness
    def proxy_config(self, generation: int) -> TrainConfig:
        """The same proxy seed for a whole generation (common random numbers), a new one per generation."""
        return replace(self.cfg.proxy, seed=self.cfg.seed * 1000 + generation)

    def _evaluate_generation(self, state: ESState, records: list[dict[str, Any]]) -> tuple[torch.Tensor, list[dict[str, Any]]]:
        g = state.generation
        population = evolve.ask(state)
        synthetic = evaluate_population(population, self.start.net.config, self.heldout, self.objective)["fitness"]
        rows = []
        for i, theta in enumerate(population):
            done = next((r for r in records if r["generation"] == g and r["individual"] == i), None)
            if done is None:
                done = self._proxy(g, i, theta, float(synthetic[i]))
                append_jsonl(self.out / PROXIES_FILE, done)
                records.append(done)
            rows.append(done)
            if self.progress:
                print(f"generation {g + 1}/{self.cfg.generations} individual {i + 1}/{len(population)}: val acc "
                      f"{done['val_acc']:.4f}  synthetic {done['synthetic_fitness']:.4f}  fitness {done['fitness']:.4f}",
                      file=sys.stderr, flush=True)
        return torch.tensor([r["fitness"] for r in rows]), rows

    def _proxy(self, g: int, i: int, theta: torch.Tensor, synthetic: float) -> dict[str, Any]:
        folder = self.out / "proxies" / f"gen{g}" / (f"ind{i}" if i >= 0 else "start")
        loss = anchored_loss(theta, self.start, {"adapt_candidate": {"generation": g, "individual": i}})
        loss.save(folder / "loss")
        started = time.perf_counter()
        result = train(replace(self.proxy_config(g), loss=f"edl:{folder / 'loss'}"), folder / "run", progress=False)
        val = result.get("final_val_acc")
        if result.get("status") != "finished" or val is None:
            val = 0.0  # a loss that diverges the proxy is as bad as it gets
        return {"generation": g, "individual": i, "val_acc": val, "synthetic_fitness": synthetic,
                "fitness": val + self.cfg.synthetic_weight * synthetic, "status": result.get("status"),
                "seconds": time.perf_counter() - started, "proxy_seed": self.proxy_config(g).seed}

    # ------------------------------------------------------------------ export
    def _export(self, state: ESState, rows: list[dict[str, Any]]) -> dict[str, Any]:
        """Export the last generation's best, beside a proxy of the starting loss on the same seed."""
        best = max(range(len(rows)), key=lambda i: (rows[i]["fitness"], -i))
        records = read_jsonl(self.out / PROXIES_FILE)
        g = state.generation
        reference = next((r for r in records if r["generation"] == g and r["individual"] == -1), None)
        if reference is None:  # individual -1: the starting loss, trained with this generation's proxy seed
            theta0 = self.start.net.flat().detach().float()
            synthetic = float(evaluate_population(theta0[None], self.start.net.config, self.heldout, self.objective)["fitness"][0])
            reference = self._proxy(g, -1, theta0, synthetic)
            append_jsonl(self.out / PROXIES_FILE, reference)
            records.append(reference)
        theta = evolve.ask(state)[best]
        provenance = {**(self.start.metadata or {}), "command": self.command, "real_data_stage": True,
                      "adapt": {"config": to_dict(self.cfg), "start": self.cfg.start,
                                "start_definition": identity(self.start), "generation": state.generation,
                                "individual": best, "proxy": rows[best]}, "versions": versions()}
        loss = anchored_loss(theta, self.start, provenance)
        loss.save(self.out / "loss")
        summary = {"real_data_stage": True, "chosen": rows[best], "start_same_seed": reference,
                   "generations": [{"generation": g, "best_val_acc": max(r["val_acc"] for r in records if r["generation"] == g),
                                    "mean_val_acc": sum(r["val_acc"] for r in records if r["generation"] == g)
                                    / sum(1 for r in records if r["generation"] == g)}
                                   for g in sorted({r["generation"] for r in records})],
                   "proxy_runs": len(records), "proxy_seconds": sum(r["seconds"] for r in records),
                   "loss": str(self.out / "loss"), "config": to_dict(self.cfg)}
        atomic_write_json(self.out / SUMMARY_FILE, summary)
        return summary


def discard_previous(out: Path) -> None:
    """Remove what an earlier adaptation wrote into ``out`` (--fresh); call with the folder locked."""
    for name in RUN_FILES:
        path = Path(out) / name
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)


def adapt(cfg: AdaptConfig, out: Path, command: str = "", progress: bool = True, fresh: bool = False) -> dict[str, Any]:
    """Run (or resume) an adaptation; returns its summary (the adapted loss is ``out/loss``).
    ``fresh`` first removes an earlier adaptation in ``out``, once the folder's lock is held."""
    return Adaptation(cfg, out, command, progress, fresh).run()


# ---------------------------------------------------------------------- CLI
def add_cli(sub: argparse._SubParsersAction) -> None:
    d, proxy = AdaptConfig(), default_proxy()
    p = sub.add_parser("adapt", help="the optional real-data stage: tune a pretrained loss on short proxy trainings",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--start", default=d.start, help="shipped loss name or loss folder to start from (default %(default)s)")
    p.add_argument("--out", default="runs/adapt", help="run folder (default %(default)s)")
    p.add_argument("--mutation", choices=evolve.MUTATIONS, default=d.mutation)
    p.add_argument("--population", type=int, default=d.population)
    p.add_argument("--parents", type=int, default=None,
                   help=f"individuals kept each generation (default {d.parents}, at most --population)")
    p.add_argument("--generations", type=int, default=d.generations)
    p.add_argument("--sigma", type=float, default=d.sigma_init, help="initial mutation scale (default %(default)s)")
    p.add_argument("--synthetic-weight", type=float, default=d.synthetic_weight,
                   help="weight of the held-out synthetic fitness in the fitness (default %(default)s)")
    p.add_argument("--seed", type=int, default=d.seed)
    g = p.add_argument_group("proxy training (on the training split minus the reserved validation split)")
    g.add_argument("--data-dir", default=None, help="CIFAR folder (default $EDLOSS_DATA, then ./data)")
    g.add_argument("--dataset", default=proxy.dataset)
    g.add_argument("--proxy-model", default=proxy.model, help="default %(default)s")
    g.add_argument("--proxy-images", type=int, default=proxy.train_subset, help="class-balanced training images (default %(default)s)")
    g.add_argument("--proxy-epochs", type=int, default=proxy.epochs, help="default %(default)s")
    g.add_argument("--proxy-val", type=int, default=proxy.val_size, help="proxy validation images (default %(default)s)")
    g.add_argument("--reserve", type=int, default=proxy.reserve,
                   help="last training images set aside unread: the reporting validation split (default %(default)s)")
    g.add_argument("--threads", type=int, default=1, help="torch threads (default %(default)s)")
    p.add_argument("--fresh", action="store_true", help="delete an earlier adaptation in --out first")
    p.add_argument("--quiet", action="store_true", help="no per-proxy lines")
    p.set_defaults(func=_main)


def _check_flags(args: argparse.Namespace) -> None:
    """The flags whose config fields carry other names, checked under the names the user typed."""
    for flag, value, low in (("--proxy-images", args.proxy_images, 2), ("--proxy-epochs", args.proxy_epochs, 1),
                             ("--proxy-val", args.proxy_val, 1), ("--reserve", args.reserve, 1),
                             ("--generations", args.generations, 1), ("--population", args.population, 2),
                             ("--parents", _parents(args), 1), ("--seed", args.seed, 0)):
        if value < low:
            raise ValueError(f"{flag} must be an integer >= {low}, got {value}")
    if args.generations > evolve.MAX_GENERATIONS:
        raise ValueError(f"--generations must be in [1, {evolve.MAX_GENERATIONS}], got {args.generations}")
    if args.parents is not None and args.parents > args.population:
        raise ValueError(f"--parents must be at most --population ({args.population}), got {args.parents}")
    if not (math.isfinite(args.sigma) and 0 < args.sigma <= evolve.MAX_SIGMA):
        raise ValueError(f"--sigma must be a finite number > 0 and <= {evolve.MAX_SIGMA:g} (the initial mutation scale), "
                         f"got {args.sigma}")


def _parents(args: argparse.Namespace) -> int:
    """--parents, or its default cut to --population: a small --population alone must not be
    blamed on a --parents the user never passed."""
    return args.parents if args.parents is not None else min(AdaptConfig.parents, args.population)


def config_from_args(args: argparse.Namespace) -> AdaptConfig:
    _check_flags(args)
    proxy = replace(default_proxy(), data_dir=args.data_dir, dataset=args.dataset, model=args.proxy_model,
                    train_subset=args.proxy_images, epochs=args.proxy_epochs, val_size=args.proxy_val, reserve=args.reserve)
    return AdaptConfig(start=args.start, mutation=args.mutation, population=args.population, parents=_parents(args),
                       elites=min(1, _parents(args)), generations=args.generations, sigma_init=args.sigma,
                       sigma_final=min(AdaptConfig.sigma_final, args.sigma), synthetic_weight=args.synthetic_weight,
                       seed=args.seed, proxy=proxy)


def check_data(cfg: AdaptConfig) -> None:
    """Load the proxy's data once before any work, so missing data or a too-small budget fails now."""
    from edloss.lab.data import load_splits

    p = cfg.proxy
    splits = load_splits(p.dataset, p.data_dir, p.val_size, p.train_subset, p.balanced_subset, p.download, p.reserve)
    if splits.train_x.shape[0] // p.batch_size < 1:
        raise ValueError(f"the proxy trains on {splits.train_x.shape[0]} images with batch {p.batch_size}: no step would "
                         "run; raise --proxy-images")


def _main(args: argparse.Namespace) -> int:
    if args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    cfg = config_from_args(args)
    load_start(cfg.start)  # a start that does not load fails before anything is written
    check_data(cfg)
    torch.set_num_threads(args.threads)
    command = "edloss adapt " + shlex.join(a for a in sys.argv[2:]) if len(sys.argv) > 1 and sys.argv[1] == "adapt" else "edloss adapt"
    with folder_kept_only_if_used(Path(args.out)):
        out = prepare_output_folder(args.out)
        summary = adapt(cfg, out, command, progress=not args.quiet, fresh=args.fresh)
    start, chosen = summary["start_same_seed"], summary["chosen"]
    print(f"proxy validation accuracy, last generation's seed: start loss {start['val_acc']:.4f}, adapted "
          f"{chosen['val_acc']:.4f} (fitness {start['fitness']:.4f} -> {chosen['fitness']:.4f})  -> {summary['loss']}")
    print(f"{summary['proxy_runs']} proxy runs, {summary['proxy_seconds'] / 60:.1f} min")
    return 0
