"""Compare losses under one recipe: ``edloss compare`` runs a grid of losses x seeds x models.

Every run lives in ``OUT/<model>/<label>/seed<k>/`` and is an ordinary ``edloss train`` run,
so a half-finished grid resumes where it stopped: finished runs (result.json present, same
config) are skipped, interrupted ones continue from their checkpoint. The summary is rewritten
after every run, so a grid that is still going already has a table:

- ``summary.md``: loss, seeds, mean ± std test and validation accuracy, Δ vs cross-entropy,
  mean wall time;
- ``summary.json``: the same plus every run;
- ``val_accuracy.png``: validation accuracy per epoch, mean over seeds with a ±std band;
- with ``--imbalance``: a long-tail table (balanced test accuracy, many/medium/few-shot, and
  CE with post-hoc logit adjustment as a reference line) and ``per_class_accuracy.png``.

Losses are arms ``LABEL=SPEC`` (``edl-chaotic=edl:runs/chaotic/loss``) or bare specs (``ce``,
``focal:gamma=3``), whose label is derived from the spec. ``{seed}`` in a spec is replaced by each
run's seed (``chaotic=edl:runs/pretrain-chaotic-seed{seed}/loss``): every seed then trains with
its own pretrained loss, so the arm's spread includes the pretraining's, which is what "does this
pretraining method make better losses" needs. ``--versus A B`` compares two arms head to head in
the summary: difference of means with a bootstrap interval, a Mann–Whitney test (unpaired: right
when each seed's loss is an independent pretraining draw) and the Wilcoxon test paired by seed.

``--lr-grid 0.5,1,2`` makes it a tuned comparison (``edloss.lab.tuning``): every arm, CE included,
trains its tuning seeds at each multiplier of ``--lr``, picks on validation and runs its seeds at
its pick, in ``OUT/<model>/<label>/lr<m>/seed<k>/``; the summary adds each arm's validation curve
over the grid, its pick and its spread (``lr_curves.png``). A loss compared at one shared rate is
credited with what the step size did. ``--wd-grid 1,2`` tunes the weight decay with it: every arm
picks a (rate, decay) pair from the product of the two grids (``lr<m>-wd<w>/`` folders). ``--carry-picks DIR`` instead runs every arm's seeds at
the pick it made in the tuned grid in DIR (same base rate, same loss under each label): a budget
too long to sweep reuses a smaller budget's choice.

``--ray ADDRESS`` (or ``auto``) runs every unfinished run as a Ray task (``edloss.distributed``)
declaring ``--threads`` CPUs (1 by default) and a GPU when the device is cuda (or ``auto`` on a
cluster with GPUs); the tasks write the same run folders, on a file system every node shares.
A task whose worker dies is retried and resumes from its checkpoint; a run that fails is
reported as ``failed`` in the summary and the grid goes on.

The grid holds ``OUT/.lock`` while it runs (each training run locks its own folder below it):
a second ``edloss compare`` into the same ``--out`` is refused, naming the process holding it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from edloss.files import RunLock, check_output_path, prepare_output_folder
from edloss.lab import tuning
from edloss.lab.data import check_imbalance_feasible, check_present
from edloss.lab.grid import (DEFAULT_LOSSES, DEFAULT_SEEDS, Arm, GridRun, _check_arms, _mismatches, check_grid,
                             check_versus, parse_arms, plan, summary_recipe)
from edloss.lab.models import model_names
from edloss.lab.summary import _paired_delta, collect, format_delta, publish_summary, render_markdown, write_summary  # noqa: F401
from edloss.lab.train import (TrainConfig, TrainingDiverged, add_recipe_args, apply_threads, config_from_args,
                              is_finished, resolve_device, train)
from edloss.lab.tuning import Tuned

def plan_grid(recipe: TrainConfig, losses: list[str], seeds: list[int], out_dir: Path, models: list[str] | None = None,
              lr_grid: list[float] | None = None, tune_seeds: list[int] | None = None,
              carry_picks: Path | None = None, wd_grid: list[float] | None = None
              ) -> tuple[list[Arm], list[str], Tuned | None, list[GridRun]]:
    """A grid's arms, models, tuning state and runs in the order ``compare`` trains them (with a
    grid: the tuning runs, then the test runs of the arms whose pick is known), every config
    validated and every loss built once; bad input is refused here, before any work."""
    arms = parse_arms(losses)
    models = list(models or [recipe.model])
    check_grid(list(seeds), models)
    if carry_picks is not None:
        if lr_grid is not None or tune_seeds or wd_grid is not None:
            raise ValueError("carried picks and a learning-rate (or weight-decay) grid exclude each other: "
                             "the picks were made elsewhere")
        tuned: tuning.Tuned | None = tuning.carried(Path(carry_picks), out_dir, arms, recipe.lr, recipe.weight_decay)
        tuned.require_picks(arms, models, "run those arms there first, or leave them out")
    else:
        before = (_previous_summary(Path(out_dir)).get("tuning") or {}).get("wd_grid")
        if before and wd_grid is None and lr_grid is not None:
            raise ValueError(f"{out_dir} tunes the weight decay too (--wd-grid {','.join(f'{w:g}' for w in before)}): "
                             "give the same --wd-grid to resume it, or use another --out")
        tuned = tuning.settings(lr_grid, tune_seeds, list(seeds), out_dir, wd_grid, recipe.weight_decay)
    _check_arms(arms, list(seeds) + (tuned.tune_seeds if tuned else []))  # first: a missing EDL checkpoint is named
    if tuned:
        runs = tuned.runs(recipe, arms, models, list(seeds))
    else:
        runs = plan(recipe, arms, list(seeds), models, Path(out_dir))
    for run in runs:
        run.config.validate()
    return arms, models, tuned, runs


def compare(recipe: TrainConfig, losses: list[str], seeds: list[int], out_dir: Path,
            models: list[str] | None = None, progress: bool = True, ray: str | None = None,
            threads: int | None = None, versus: list[tuple[str, str]] | None = None,
            lr_grid: list[float] | None = None, tune_seeds: list[int] | None = None,
            carry_picks: Path | None = None, wd_grid: list[float] | None = None) -> dict[str, Any]:
    """Run (or finish) the grid and write the summary; returns the summary dict.

    ``recipe`` supplies everything but model, loss and seed. Diverged runs are recorded and
    the grid goes on; a run folder holding another config is refused before anything trains.
    ``ray``: a Ray cluster address (or ``auto``) to run the runs on, as tasks of ``threads``
    CPUs; runs that fail there are reported as ``failed`` and the grid goes on.
    ``versus``: pairs of arm labels compared head to head in the summary.
    ``lr_grid``: multipliers of ``recipe.lr``; every arm trains ``tune_seeds`` (default: the
    first seed) at each, picks on validation, and runs ``seeds`` at its pick (``edloss.lab.tuning``).
    ``wd_grid``: with ``lr_grid``, multipliers of ``recipe.weight_decay`` tuned with the rate.
    ``carry_picks``: instead, every arm runs ``seeds`` at the pick it made in that tuned grid's
    folder (an arm without one there is refused before any work).
    """
    versus = list(versus or [])
    arms, models, tuned, runs = plan_grid(recipe, losses, seeds, out_dir, models, lr_grid, tune_seeds, carry_picks,
                                          wd_grid)
    check_versus(versus, arms)
    check_output_path(out_dir)
    check_present(recipe.dataset, recipe.data_dir, recipe.download)
    if recipe.imbalance is not None:  # a long tail so steep that a class keeps no image: refused before the grid
        check_imbalance_feasible(recipe.dataset, recipe.data_dir, recipe.val_size, recipe.train_subset,
                                 recipe.balanced_subset, recipe.reserve, recipe.imbalance)
    if ray is None:
        resolve_device(recipe.device)  # a device this machine lacks (on Ray: the workers' machines decide)
    else:
        from edloss import distributed

        distributed.resolve_address(ray)  # a wrong address fails now, before the grid folder exists
    out_dir = prepare_output_folder(out_dir)
    with RunLock(out_dir, "comparison grid"):  # the grid folder; train() locks each run folder below it
        if tuned:
            tuned.out_dir = out_dir
        return _compare_locked(recipe, arms, list(seeds), models, out_dir, runs, progress, ray, threads, versus,
                               tuned)


def _compare_locked(recipe: TrainConfig, arms: list[Arm], seeds: list[int], models: list[str], out_dir: Path,
                    runs: list[GridRun], progress: bool, ray: str | None, threads: int | None,
                    versus: list[tuple[str, str]], tuned: Tuned | None = None) -> dict[str, Any]:
    def summarise(plot: bool, failures: dict[str, str] | None = None) -> dict[str, Any]:
        return write_summary(out_dir, recipe, arms, seeds, models, plot=plot, failures=failures, versus=versus,
                             tuned=tuned)

    _refuse_mismatches(runs)
    failures = _execute(runs, progress, ray, threads, summarise)
    if tuned:  # the picks are known now: the test seeds at each arm's pick
        done = {run.out_dir for run in runs}
        test = [run for run in tuning.test_runs(recipe, arms, models, seeds, tuned.chosen(arms, models), out_dir)
                if run.out_dir not in done]
        _refuse_mismatches(test)
        failures.update(_execute(test, progress, ray, threads, summarise))
    summary = summarise(plot=True, failures=failures)
    _say(progress, f"summary: {out_dir / 'summary.md'}")
    return summary


def _refuse_mismatches(runs: list[GridRun]) -> None:
    problems = _mismatches(runs)
    if problems:
        raise ValueError("run folders hold results of a different config or loss (use another --out, "
                         "the same recipe flags as before, or restore the loss):\n  " + "\n  ".join(problems))


def _execute(runs: list[GridRun], progress: bool, ray: str | None, threads: int | None,
             summarise: Any) -> dict[str, str]:
    """Train the unfinished runs here or on Ray, rewriting the summary after each; returns the
    runs that failed on Ray ({run folder: error})."""
    if ray is not None:
        return _run_on_ray(runs, ray, threads, progress, lambda f: summarise(plot=False, failures=f))
    for i, run in enumerate(runs, 1):
        at = f" at lr {run.config.lr:g}" if run.out_dir.parent.name.startswith("lr") else ""
        at += f", weight decay {run.config.weight_decay:g}" if "-wd" in run.out_dir.parent.name else ""
        name = f"[{i}/{len(runs)}] {run.model} {run.arm.label} seed {run.seed}{at}"
        if is_finished(run.out_dir, run.config):  # result.json with this config
            _say(progress, f"{name}: finished earlier, skipped")
            continue
        _say(progress, f"{name} -> {run.out_dir}")
        try:
            train(run.config, run.out_dir, progress=progress)
        except TrainingDiverged as err:
            _say(True, f"{name}: diverged ({err}); continuing with the grid")
        summarise(plot=False)
    return {}


def _say(progress: bool, message: str) -> None:
    if progress:
        print(message, file=sys.stderr, flush=True)


def run_one(payload: tuple[TrainConfig, str]) -> dict[str, Any]:
    """One grid run, as a Ray task runs it: ``train`` into its folder; a divergence is a result."""
    config, out_dir = payload
    try:
        result = train(config, Path(out_dir), progress=False)
    except TrainingDiverged as err:
        return {"status": "diverged", "message": str(err)}
    return {k: result.get(k) for k in ("status", "test_acc", "wall_seconds")}


def _run_on_ray(runs: list[GridRun], address: str, threads: int | None, progress: bool,
                rewrite: Any) -> dict[str, str]:
    """Run the unfinished runs as Ray tasks; returns {run folder: error} of the runs that failed."""
    from edloss import distributed

    distributed.resolve_address(address)  # a wrong address fails now, even when nothing is left to run
    names = {run.out_dir: f"{run.model} {run.arm.label} seed {run.seed}" for run in runs}
    todo = [run for run in runs if not is_finished(run.out_dir, run.config)]
    if len(todo) < len(runs):
        _say(progress, f"{len(runs) - len(todo)} of {len(runs)} runs finished earlier, skipped")
    failures: dict[str, str] = {}
    count = iter(range(1, len(todo) + 1))

    def done(payload: tuple[TrainConfig, str], result: dict[str, Any]) -> None:
        name = names[Path(payload[1])]
        if result["status"] == "diverged":
            _say(True, f"[{next(count)}/{len(todo)}] {name}: diverged ({result['message']}); continuing with the grid")
        else:
            _say(progress, f"[{next(count)}/{len(todo)}] {name}: test acc {result['test_acc']:.4f} "
                           f"in {result['wall_seconds']:.0f}s -> {payload[1]}")
        rewrite(failures)

    def failed(payload: tuple[TrainConfig, str], message: str) -> None:
        failures[payload[1]] = message
        _say(True, f"[{next(count)}/{len(todo)}] {names[Path(payload[1])]}: failed on Ray ({message}); "
                   "continuing with the grid")
        rewrite(failures)

    if todo:
        _say(progress, f"running {len(todo)} runs on Ray ({address})")
        started = distributed.connect(address)
        try:
            distributed.run_tasks(run_one, [(run.config, str(run.out_dir)) for run in todo], address=address,
                                  num_cpus=threads or 1, num_gpus=distributed.gpus_for(todo[0].config.device),
                                  on_result=done, on_error=failed)
        finally:
            distributed.shutdown(started)
    return failures


# ----------------------------------------------------------------------------- command line


def _cli(args: argparse.Namespace) -> int:
    apply_threads(args)
    recipe = config_from_args(args)
    out = Path(args.out)  # made by compare() once every flag is checked
    versus = [tuple(pair) for pair in args.versus or []]
    grid = None if args.lr_grid is None else tuning.parse_lr_grid(args.lr_grid)
    wd_grid = None if args.wd_grid is None else tuning.parse_wd_grid(args.wd_grid)
    if args.summary_only:
        rewrite_summary(recipe, args, out, versus, grid, wd_grid)
        print(out / "summary.md")
        return 0
    summary = compare(recipe, args.losses or list(DEFAULT_LOSSES), args.seeds or list(DEFAULT_SEEDS), args.out,
                      args.models, progress=not args.quiet, ray=args.ray, threads=args.threads, versus=versus,
                      lr_grid=grid, tune_seeds=args.tune_seeds, wd_grid=wd_grid,
                      carry_picks=None if args.carry_picks is None else Path(args.carry_picks))
    print((out / "summary.md").read_text())
    failed = [r for r in summary["runs"] if r["status"] == "failed"]
    for run in failed:
        print(f"edloss compare: failed: {run['dir']}: {run['error']}", file=sys.stderr)
    return 1 if failed else 0


def rewrite_summary(recipe: TrainConfig, args: argparse.Namespace, out: Path, versus: list[tuple[str, str]],
                    grid: list[float] | None, wd_grid: list[float] | None = None) -> dict[str, Any]:
    """``--summary-only``: rewrite the summary from the runs present. The arms, seeds, models and
    tuning not given on the command line are taken from the summary.json already there, and a
    rewrite that would drop finished runs the old summary counted is refused: nothing is lost."""
    previous = _previous_summary(out)
    tuned_before = previous.get("tuning") or {}
    losses = args.losses or [a["label"] + "=" + a["spec"] for a in previous.get("arms", [])] or list(DEFAULT_LOSSES)
    seeds = args.seeds or previous.get("seeds") or list(DEFAULT_SEEDS)
    models = args.models or previous.get("models") or [recipe.model]
    if not versus:
        versus = [(v["a"], v["b"]) for v in previous.get("versus", []) if "a" in v and "b" in v]
        versus = list(dict.fromkeys(versus))
    if grid is None and tuned_before:
        grid = tuned_before["grid"]
    if wd_grid is None and tuned_before:  # a rewrite never drops the decay its picks were made over
        wd_grid = tuned_before.get("wd_grid")
    tune_seeds = args.tune_seeds or tuned_before.get("tune_seeds")
    arms = parse_arms(losses)
    check_versus(versus, arms)
    check_grid(seeds, models)
    if tuned_before.get("carried_from"):  # the picks as recorded, not re-read from a source that may have changed
        if args.lr_grid is not None or args.tune_seeds or args.carry_picks or args.wd_grid is not None:
            raise ValueError(f"{out} ran at picks carried from {tuned_before['carried_from']}: --summary-only takes them "
                             "from its summary; leave out --lr-grid, --wd-grid, --tune-seeds and --carry-picks")
        tuned: tuning.Tuned | None = tuning.from_tuning(tuned_before, out)
    else:
        tuned = tuning.settings(grid, tune_seeds, seeds, out, wd_grid, recipe.weight_decay)
    out = prepare_output_folder(out)
    with RunLock(out, "comparison grid"):
        if tuned:
            tuned.out_dir = out
        runs = tuned.runs(recipe, arms, models, seeds) if tuned else plan(recipe, arms, seeds, models, out)
        recipe = summary_recipe(recipe, runs)
        tuning_summary = tuned.summary(recipe, arms, models) if tuned else None
        summary = collect(out, recipe, arms, seeds, models, versus=versus, tuned=tuning_summary)
        lost = _finished_dirs(previous) - _finished_dirs(summary)
        if lost:
            raise ValueError(f"--summary-only would drop {len(lost)} finished run(s) that {out / 'summary.json'} counts "
                             f"(e.g. {sorted(lost)[0]}); give the same --losses, --seeds, --models (and grids) "
                             "as the grid, or leave them out to take them from that summary")
        return publish_summary(out, recipe, summary, tuning_summary)


def _previous_summary(out: Path) -> dict[str, Any]:
    """The summary.json of an earlier grid in ``out`` ({} when there is none or it is unreadable)."""
    try:
        previous = json.loads((out / "summary.json").read_text())
    except (OSError, ValueError):
        return {}
    return previous if isinstance(previous, dict) else {}


def _finished_dirs(summary: dict[str, Any]) -> set[str]:
    """``model/label/seedK`` of every finished run a summary counts (not the folder as spelled:
    the same grid may be named by another relative path)."""
    return {f"{r.get('model')}/{r.get('label')}/seed{r.get('seed')}" for r in summary.get("runs", [])
            if isinstance(r, dict) and r.get("status") == "finished"}


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    """Register ``edloss compare``."""
    p = subparsers.add_parser(
        "compare", help="train a grid of losses x seeds x models and summarise it",
        description="Train every loss with every seed (and model) under one recipe; rerunning "
                    "skips finished runs and resumes interrupted ones.")
    p.add_argument("--losses", nargs="+", default=None, metavar="[LABEL=]SPEC",
                   help="loss arms, e.g. ce focal:gamma=3 edl-chaotic=edl:runs/a/loss; {seed} in a "
                        "spec is each run's seed (edl:runs/pretrain-seed{seed}/loss: a loss per seed) "
                        f"(default: {' '.join(DEFAULT_LOSSES)})")
    p.add_argument("--versus", nargs=2, action="append", metavar=("A", "B"),
                   help="compare arm A with arm B head to head in the summary (bootstrap interval, "
                        "Mann–Whitney, paired Wilcoxon); repeatable")
    p.add_argument("--seeds", nargs="+", type=int, default=None,
                   help=f"default: {' '.join(map(str, DEFAULT_SEEDS))}; with --summary-only, the earlier summary's")
    p.add_argument("--lr-grid", default=None, metavar="M1,M2,...",
                   help="tuned comparison: multipliers of --lr (e.g. 0.5,1,2); every arm trains --tune-seeds at "
                        "each, picks the best final validation accuracy, then runs --seeds at its pick")
    p.add_argument("--wd-grid", default=None, metavar="M1,M2,...",
                   help="with --lr-grid: multipliers of --weight-decay (e.g. 1,2) tuned with the rate: every arm "
                        "trains every (rate, decay) pair and picks the best on validation")
    p.add_argument("--carry-picks", default=None, metavar="DIR",
                   help="instead of --lr-grid: every arm runs --seeds at the multiplier it picked in the tuned grid "
                        "in DIR (e.g. a smaller budget's), with no sweep here")
    p.add_argument("--tune-seeds", nargs="+", type=int, default=None,
                   help="with --lr-grid: the seeds that choose each arm's learning rate (default: the first of --seeds)")
    p.add_argument("--models", nargs="+", default=None, metavar="MODEL",
                   help=f"any of {', '.join(model_names())} (default resnet20)")
    p.add_argument("--out", default="runs/compare", help="grid folder (default %(default)s)")
    p.add_argument("--summary-only", action="store_true",
                   help="only rewrite the summary from the runs present")
    p.add_argument("--ray", metavar="ADDRESS", default=None,
                   help="run each training run as a task on a Ray cluster: HOST:PORT, ray://HOST:PORT, "
                        "or auto ($RAY_ADDRESS, a cluster started on this machine, else a new local "
                        "one); each task takes --threads CPUs (default 1) and a GPU on cuda. "
                        "Needs pip install 'edloss[ray]' and --out on storage every node shares")
    add_recipe_args(p)
    p.set_defaults(func=_cli, model=TrainConfig.model)
