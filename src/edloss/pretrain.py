"""``edloss pretrain``: evolve a loss network on synthetic data and export it as an ``EDLLoss``.

A run folder holds:

* ``config.json``: the resolved config, the command line, versions and seed;
* ``checkpoint.pt``: ES state every ``checkpoint_every`` generations (resume continues exactly);
* ``metrics.jsonl`` / ``metrics.csv``: one row per generation (fitness on the fresh batch, and
  every ``heldout_every`` generations the held-out synthetic metrics of the generation's best);
* ``loss/``: the exported loss (``EDLLoss.from_file``), best held-out elite of the last generation;
* ``loss_shape.png``: the loss and its gradient norm against p_y beside cross-entropy;
* ``summary.json``: held-out metrics of the exported loss and of cross-entropy, wall time (summed
  over every segment of a resumed run).

A run holds ``.lock`` in its folder while it runs: a second run into the same folder is refused
with the holder's pid, instead of interleaving rows and files. ``--fresh`` (or a start with no
checkpoint) first removes everything a previous run wrote, so no old loss can pass for this run's.

Each generation's synthetic batch is drawn from a generator seeded by (seed, generation), and
the ES state carries its own generator, so a resumed run reproduces an uninterrupted one.

Here: the run (``Run``, ``pretrain``) and its command line. Around it, one concept a file: the
config (``pretrain_config``), the objective a generation is scored by (``objectives``: ranking
or students, behind one interface), the run folder (``pretrain_folder``) and the export
(``pretrain_export``); their names stay importable from here.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from edloss import evolve, students
from edloss.configs import diff_dicts, from_dict, load_file, to_dict, versions
from edloss.evolve import ESState
from edloss.files import LockedRun, RunLock, atomic_torch_save, atomic_write_json, check_output_path, folder_kept_only_if_used, prepare_output_folder, writing
from edloss.loss import EDLLoss
from edloss.lossnet import init_offset, init_scale
from edloss.objectives import objective_for
from edloss.objectives.ranking import Evaluator, evaluate_population, ranking_heldout  # noqa: F401 (re-exported)
from edloss.pretrain_config import PretrainConfig, saved_config  # noqa: F401 (re-exported)
from edloss.pretrain_export import export_best, export_candidates, heldout_by_k, loss_rows  # noqa: F401 (re-exported)
from edloss.pretrain_folder import (LOSS_FILES, RUN_FILES, _visible, append_row, check_run_folder,  # noqa: F401 (re-exported)
                                    discard_previous_run, holds_pretraining_run, truncate_metrics, write_csv)
from edloss.shapes import format_shape_table
from edloss.start import start_parameters

STUDENTS_POPULATION, STUDENTS_GENERATIONS = 32, 60  # the students objective's defaults: ~10 s a generation on 2 cores
CHECKPOINT_VERSION = 1  # "elapsed_seconds" was added later, optional: older checkpoints still load


def initial_state(cfg: PretrainConfig) -> ESState:
    """Generation 0: N(init_offset, init_scale^2) per gene, and fresh chaotic states; with
    ``cfg.start``, the start loss itself and N(start, sigma_init^2) around it."""
    scale = init_scale(cfg.lossnet)
    state = evolve.init(cfg.es, scale)
    if cfg.start:
        theta = start_parameters(cfg)
        state.population = theta + cfg.es.sigma_init * state.population / scale
        state.population[0] = theta
    else:
        state.population = state.population + init_offset(cfg.lossnet)
    return state


def heldout_set(cfg: PretrainConfig) -> Any:
    """The run's fixed held-out set (selection of the exported loss, progress curves): synthetic
    ranking batches, or for the students objective held-out tasks with their CE students."""
    return objective_for(cfg).heldout()


def sample_generation(cfg: PretrainConfig, generation: int) -> Any:
    """A generation's fresh data, from a generator seeded by (seed, generation): ranking batches or tasks."""
    gen = torch.Generator().manual_seed(batch_seed(cfg.es.seed, generation))
    return objective_for(cfg).sample(gen)


def batch_seed(seed: int, generation: int) -> int:
    """Seed of a generation's synthetic batch: independent of everything before it."""
    return (seed * 1_000_003 + generation * 7_919 + 17) % (2**63 - 1)


def summarise(metrics: dict[str, torch.Tensor], prefix: str = "") -> dict[str, float]:
    fit = metrics["fitness"]
    best = int(torch.argmax(fit))
    row = {f"{prefix}fitness_best": float(fit[best]), f"{prefix}fitness_mean": float(fit.mean())}
    for name, value in metrics.items():
        if name != "fitness":
            row[f"{prefix}{name}"] = float(value[best])
    return row


class Run(LockedRun):
    """One pretraining run in a folder: start or resume, step generations, export.

    It holds the folder's lock from construction to ``close()`` (or the end of a ``with`` block,
    or garbage collection), so two runs never write into one folder."""

    def __init__(self, cfg: PretrainConfig, out: Path, command: str = "", fresh: bool = False, evaluator: Evaluator | None = None) -> None:
        self.cfg, self.out, self.command = cfg, Path(out), command
        self._lock: RunLock | None = None
        prepare_output_folder(self.out)
        self._lock = RunLock(self.out, "pretraining run").__enter__()
        try:
            check_run_folder(self.out)
            objective_for(cfg).check_evaluator(evaluator)  # the students objective takes none: its students train here
            self.evaluator = evaluator or evaluate_population  # where, not what: the numbers are the same
            self.heldout = heldout_set(cfg)
            if fresh:
                discard_previous_run(self.out)
            self.elapsed_before = 0.0  # wall seconds of earlier segments, from the checkpoint
            self.state = self._resume_or_init()
        except BaseException:
            self.close()
            raise
        self.segment_start = time.perf_counter()

    # -------------------------------------------------------------- state
    def _resume_or_init(self) -> ESState:
        path = self.out / "checkpoint.pt"
        if not path.exists():  # a start from generation 0: nothing an earlier run wrote may stay
            discard_previous_run(self.out)
            atomic_write_json(self.out / "config.json", {"config": to_dict(self.cfg), "command": self.command, "seed": self.cfg.es.seed, "versions": versions()})
            return initial_state(self.cfg)
        try:
            saved = torch.load(path, weights_only=True)
        except Exception as err:  # noqa: BLE001 - any failure to read means a damaged file
            raise ValueError(f"checkpoint {path} is unreadable ({err}); delete it or pass --fresh to start over") from err
        if not isinstance(saved, dict) or not isinstance(saved.get("config"), str) or not isinstance(saved.get("state"), dict):
            raise ValueError(f"checkpoint {path} is damaged (no config or state); delete it or pass --fresh to start over")
        if saved.get("version") != CHECKPOINT_VERSION:
            raise ValueError(f"checkpoint {path} has version {saved.get('version')}, expected {CHECKPOINT_VERSION}")
        differences = diff_dicts(saved_config(json.loads(saved["config"])), to_dict(self.cfg))
        if differences:
            raise ValueError(f"{self.out} holds a run with a different config; pass --fresh to overwrite it or use another --out. Differences: " + "; ".join(differences))
        state = ESState.from_dict(saved["state"])
        self.elapsed_before = float(saved.get("elapsed_seconds", 0.0))
        truncate_metrics(self.out, state.generation)
        return state

    def save_checkpoint(self) -> None:
        checkpoint = {"version": CHECKPOINT_VERSION, "config": json.dumps(to_dict(self.cfg)), "state": self.state.to_dict(),
                      "elapsed_seconds": self.elapsed()}
        with writing(self.out / "checkpoint.pt"):  # a full disk names the file and how to resume
            atomic_torch_save(checkpoint, self.out / "checkpoint.pt")

    @property
    def done(self) -> bool:
        return self.state.generation >= self.cfg.es.generations

    # -------------------------------------------------------------- generations
    def step(self) -> dict[str, float]:
        """Evaluate the current population on a fresh batch, select and mutate; return the row."""
        cfg, t = self.cfg, self.state.generation
        start = time.perf_counter()
        batches = sample_generation(cfg, t)
        theta = evolve.ask(self.state)
        metrics = evaluate_generation(cfg, theta, batches, self.evaluator)
        row = generation_row(cfg, t, evolve.sigma_at(cfg.es, t), batches, theta, metrics, self.heldout)
        self.state = evolve.tell(self.state, metrics["fitness"], cfg.es)
        row["reseeds"] = self.state.reseeds
        row["seconds"] = time.perf_counter() - start
        append_row(self.out, row)
        if self.state.generation % cfg.checkpoint_every == 0 or self.done:
            self.save_checkpoint()
        return row

    # -------------------------------------------------------------- export
    def export(self, wall_seconds: float) -> tuple[EDLLoss, dict[str, Any]]:
        """Pick the elite with the best held-out fitness, anchor its scale, save it."""
        elites = self.state.population[: max(self.cfg.es.elites, 1)]
        extra = {"generations": self.state.generation, "mutation": self.cfg.es.mutation, "chaos_reseeds": self.state.reseeds}
        loss, summary, _ = export_candidates(self.cfg, elites, self.heldout, self.out, self.command, wall_seconds, summary_extra=extra)
        return loss, summary


def evaluate_generation(cfg: PretrainConfig, theta: torch.Tensor, data: Any, evaluator: Evaluator | None = None) -> dict[str, torch.Tensor]:
    """Per-individual metrics of a generation's population on its fresh data: every individual
    trains one student per task (students objective), else the ranking objective, scored by
    ``evaluator`` where one is given (in chunks, or on Ray) or in one ``evaluate`` call."""
    return objective_for(cfg).evaluate(theta, data, evaluator)


def generation_row(cfg: PretrainConfig, t: int, sigma: float, batches: list, theta: torch.Tensor, metrics: dict[str, torch.Tensor], heldout: list) -> dict[str, Any]:
    """One metrics row: fitness on this generation's batch, and every ``heldout_every``
    generations the held-out metrics of the generation's best individual."""
    classes = [b.num_classes for b in batches]  # ranking batches, or one Tasks per world
    row: dict[str, Any] = {"generation": t, "sigma": sigma, "classes": classes}
    row.update(summarise(metrics))
    if t % cfg.heldout_every == 0 or t == cfg.es.generations - 1:
        best = theta[int(torch.argmax(metrics["fitness"]))][None]
        row.update(summarise(objective_for(cfg).heldout_scores(best, heldout), "heldout_"))
    return row


def pretrain(cfg: PretrainConfig, out: Path, command: str = "", fresh: bool = False, progress: bool = True,
             evaluator: Evaluator | None = None) -> tuple[EDLLoss, dict[str, Any]]:
    """Run (or resume) pretraining in ``out`` and export the loss; returns it with its summary.

    ``evaluator`` scores each generation's population (default ``objective.evaluate_population``
    in this process; ``distributed.RayEvaluator`` on Ray actors, with identical numbers).
    """
    objective_for(cfg).check(cfg.es.population)  # knobs that pass one by one can together need tens of GB: say so before allocating
    with Run(cfg, Path(out), command, fresh, evaluator) as run:  # holds out/.lock until the loss is exported
        bar = tqdm(total=cfg.es.generations, initial=run.state.generation, disable=not progress, desc=f"pretrain {cfg.es.mutation}", unit="gen")
        while not run.done:
            row = run.step()
            postfix = {"fit": f"{row['fitness_best']:.4f}"}
            if "heldout_fitness_best" in row:
                postfix["heldout"] = f"{row['heldout_fitness_best']:.4f}"
            bar.set_postfix(postfix)
            bar.update(1)
        bar.close()
        with writing(Path(out) / "loss"):
            return run.export(run.elapsed())


# ---------------------------------------------------------------------- CLI
def config_from_args(args: argparse.Namespace) -> PretrainConfig:
    data: dict[str, Any] = load_file(Path(args.config)) if args.config else {}
    for section in ("es", "objective", "lossnet"):
        if not isinstance(data.get(section, {}), dict):
            raise ValueError(f"config.{section} must be a table/object, got {type(data[section]).__name__}")
    es = dict(data.get("es", {}))
    objective = dict(data.get("objective", {}))
    lossnet = dict(data.get("lossnet", {}))
    world = dict(data.get("world", {}))
    for key, value in (("seed", args.seed), ("generations", args.generations), ("population", args.population), ("mutation", args.mutation), ("sigma_init", args.sigma)):
        if value is not None:
            es[key] = value
    for key, value in (("kind", args.objective), ("severity", args.severity)):
        if value is not None:
            objective[key] = value
    if args.imbalance is not None:  # long-tailed classes: only the students world has a prior to learn from
        objective.setdefault("kind", "students")
        if objective["kind"] != "students":
            raise ValueError("--imbalance needs the students objective (the ranking objectives know no class prior); drop --objective")
        world["imbalance"] = args.imbalance
        world.setdefault("prior_aware", True)
    in_world = objective.get("kind") == "students"  # the regime lives in the world's tasks, not in the ranking
    if in_world:  # students train for seconds each: a smaller, shorter search fits the 15-minute budget
        es.setdefault("population", STUDENTS_POPULATION)
        es.setdefault("generations", STUDENTS_GENERATIONS)
    if args.start is not None:
        data["start"] = args.start
    if args.classes is not None:
        (world if in_world else objective)["classes"] = _parse_range(args.classes)
    if args.label_noise is not None:  # the regime: labels through a symmetric noisy channel
        (world if in_world else objective)["label_noise"] = args.label_noise
        if args.label_noise > 0:  # a loss for noisy labels must be able to stay bounded (see lossnet) ...
            lossnet.setdefault("form", "bounded")
            # ... and be asked to: KL grows without bound as p_y -> 0, so its calibration term pays
            # for pulling hard on a label the model contradicts, which under noise is often the
            # lie. Total variation is bounded; measured on noisy CIFAR-10 (docs/EXPERIMENTS.md).
            if objective.get("kind", "expectation") == "expectation":
                objective.setdefault("severity", "tv")
            if lossnet["form"] == "corrected":  # its base: forward correction at the same rate
                lossnet.setdefault("noise_rate", args.label_noise)
    if args.features is not None:
        lossnet["features"] = [f.strip() for f in args.features.split(",") if f.strip()]
    if objective.get("kind") == "per_sample":  # the paper read literally: ranking only, unless the config says otherwise
        objective.setdefault("severity", "one_minus_py")
        objective.setdefault("calibration_weight", 0.0)
    return from_dict(PretrainConfig, {**data, "es": es, "objective": objective, "lossnet": lossnet, "world": world})


def _parse_range(text: str) -> list[int]:
    parts = text.replace(":", ",").split(",")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        values = []
    if len(values) not in (1, 2):
        raise ValueError(f"--classes takes K or LO,HI (integers), got {text!r}")
    return values * 2 if len(values) == 1 else values


def add_cli(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pretrain", help="evolve a loss on synthetic data (no real data) and export it", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="JSON or TOML file with sections lossnet, objective, es (flags override it)")
    p.add_argument("--out", help="run folder (default runs/pretrain-MUTATION-seedSEED)")
    p.add_argument("--seed", type=int)
    p.add_argument("--generations", type=int)
    p.add_argument("--population", type=int)
    p.add_argument("--mutation", choices=evolve.MUTATIONS)
    p.add_argument("--sigma", type=float, help="initial mutation scale (the schedule decays it)")
    p.add_argument("--objective", choices=("expectation", "per_sample", "students"),
                   help="students: fitness = accuracy of small networks trained by the loss on synthetic tasks, minus CE's "
                        "(the config's [world] section; --label-noise and --classes then set the world's regime)")
    p.add_argument("--imbalance", type=float, metavar="RHO",
                   help="pretrain a prior-aware loss for long-tailed classes: the students world's training labels follow the "
                        "exponential profile with n_max / n_min = RHO (balanced test), and candidates see the prior as "
                        "EDLLoss(class_counts=...) does (implies --objective students)")
    p.add_argument("--start", metavar="LOSS", help="draw the first population around this loss (a shipped name such as "
                   "default or noise-0.4-k10, or a loss folder); its network must match the run's")
    p.add_argument("--severity", help="expectation: kl_disagreement (default)|kl|tv; per_sample: one_minus_py|margin|rank")
    p.add_argument("--classes", help="class count range for synthetic data, LO,HI (or one K)")
    p.add_argument("--features", help="comma-separated loss-network features")
    p.add_argument("--label-noise", type=float, metavar="ETA",
                   help="pretrain for symmetric label noise at rate ETA in [0, 0.99]: synthetic labels pass through the "
                        "noisy channel, the ranking keeps the clean severity; the network form defaults to 'bounded' and the "
                        "severity to 'tv' (bounded too) "
                        "(lossnet.form = 'corrected' in a config adds forward-corrected CE at ETA as a base)")
    p.add_argument("--fresh", action="store_true", help="discard an existing run in --out instead of resuming it")
    p.add_argument("--quiet", action="store_true", help="no progress bar or tables")
    p.add_argument("--threads", type=int, help="torch CPU threads (here, or per Ray actor with --ray: 1 by default there)")
    p.add_argument("--ray", metavar="ADDRESS", help="score each generation's population on Ray actors: HOST:PORT, ray://HOST:PORT, "
                   "or auto ($RAY_ADDRESS, a cluster started on this machine, else a new local one); same numbers as without")
    p.add_argument("--ray-actors", type=int, metavar="N", help="with --ray: actors (default: the cluster's CPUs / threads)")
    p.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    if args.ray_actors is not None and not args.ray:
        raise ValueError("--ray-actors needs --ray ADDRESS (or --ray auto)")
    if args.ray_actors is not None and args.ray_actors < 1:
        raise ValueError(f"--ray-actors must be >= 1, got {args.ray_actors}")
    if args.ray:
        from edloss.distributed import resolve_address

        resolve_address(args.ray)  # a wrong address fails before the run folder is made
    if cfg.start:
        start_parameters(cfg)  # a missing start loss, or one with another network, fails before the run folder is made
    out = check_output_path(Path("runs") / f"pretrain-{cfg.es.mutation}-seed{cfg.es.seed}" if args.out is None else args.out)
    check_run_folder(out)
    if args.threads:
        torch.set_num_threads(args.threads)
    command = "edloss " + shlex.join(sys.argv[1:]) if sys.argv and sys.argv[0].endswith("edloss") else "edloss pretrain " + shlex.join(_argv_of(args))
    with folder_kept_only_if_used(out):
        prepare_output_folder(out)
        loss, summary = _run_with_evaluator(cfg, out, command, args)
    if not args.quiet:
        h, ce = summary["heldout"], summary["cross_entropy_heldout"]
        print(f"\nwrote {out / 'loss'} (scale {summary['scale']:.4g}) in {summary['wall_seconds']:.1f}s")
        print(f"held-out synthetic metrics: fitness {h['fitness']:.4f}  value {h['value_hard']:.4f}  gradient {h['gradient']:.4f}  kendall {h['kendall_tau']:.4f}")
        print(f"cross-entropy on the same set: fitness {ce['fitness']:.4f}  value {ce['value_hard']:.4f}  gradient {ce['gradient']:.4f}")
        if "world_heldout" in summary:
            w = summary["world_heldout"]
            print(f"held-out students world ({students.HELDOUT_TASKS} tasks): accuracy {100 * w['accuracy']:.2f}% vs CE's students "
                  f"{100 * w['reference_accuracy']:.2f}% ({100 * w['accuracy_delta']:+.2f} points), NLL {w['nll']:.3f}, ECE {100 * w['ece']:.1f}%, "
                  f"diverged {100 * w['diverged']:.0f}%")
            if "world_heldout_start" in summary:
                start_fit = summary["world_heldout_start"]["fitness"]
                print(f"the start loss scores {100 * start_fit:+.2f} points there: "
                      + ("nothing the search found beat it, so the start is exported" if summary["exported_start"]
                         else f"the exported loss beats it by {100 * (w['fitness'] - start_fit):+.2f}"))
        print(format_shape_table(summary["shape"]))
    return 0


def _run_with_evaluator(cfg: PretrainConfig, out: Path, command: str, args: argparse.Namespace) -> tuple[EDLLoss, dict[str, Any]]:
    """``pretrain`` here, or on Ray actors with ``--ray`` (closed however the run ends)."""
    evaluator = None
    if args.ray:
        from edloss.distributed import RayEvaluator

        evaluator = RayEvaluator(args.ray_actors, address=args.ray, threads=args.threads or 1)
    try:
        return pretrain(cfg, out, command=command, fresh=args.fresh, progress=not args.quiet, evaluator=evaluator)
    finally:
        if evaluator is not None:
            evaluator.close()


def _argv_of(args: argparse.Namespace) -> list[str]:
    out = []
    for key, value in vars(args).items():
        if key in ("func", "command") or value in (None, False):
            continue
        flag = "--" + key.replace("_", "-")
        out += [flag] if value is True else [flag, str(value)]
    return out
