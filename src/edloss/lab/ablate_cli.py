"""``edloss ablate``: the command line of the ablation (and of the fitness-noise study it runs
with ``--evals-per-generation``)."""

from __future__ import annotations

import argparse
import shlex
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from edloss.configs import from_dict, load_file, to_dict
from edloss.files import RunLock, prepare_output_folder
from edloss.pretrain import PretrainConfig

from edloss.lab.ablate_config import (ABLATION_FILE, ARMS, DEFAULT_CMAES_SIGMAS, DEFAULT_COMPARE_ARGS, DEFAULT_GENERATIONS,
                                      DEFAULT_HELDOUT_EVERY, DEFAULT_LEVELS, DEFAULT_SEEDS, DEFAULT_SIGMAS,
                                      DEFAULT_TRAIN_LEVELS, ES_ARMS, AblationConfig, default_base)
from edloss.lab.ablate_summary import format_summary, read_ablation, write_summary
from edloss.lab import ablate as runner  # called through the module: tests stand in for runner.ablate


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
        summary = runner.ablate(cfg, out, command, jobs=args.jobs, threads=args.threads, progress=not args.quiet, compare_args=args.compare_args,
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
