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
import statistics
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from edloss.lab import tuning
from edloss.lab.data import check_imbalance_feasible, check_present
from edloss.lab.losses import build_loss_from_spec, parse_loss_arm, parse_loss_spec, spec_definition
from edloss.lab.models import model_names
from edloss.files import RunLock, atomic_write_text, check_output_path, prepare_output_folder, read_jsonl, save_figure
from edloss.lab.train import (CHECKPOINT, EPOCHS, RESUME_IGNORED, TrainConfig, TrainingDiverged, add_recipe_args,
                          apply_threads, config_diff, config_from_args, definition_diff,
                          is_finished, read_result, resolve_device, train)

DEFAULT_LOSSES = ("ce", "label_smoothing", "focal", "poly1", "edl")
DEFAULT_SEEDS = (0, 1, 2)
SEED_FIELD = "{seed}"


@dataclass(frozen=True)
class Arm:
    """One loss of the comparison: a folder-safe label and the spec that builds it."""

    label: str
    spec: str

    def spec_for(self, seed: int) -> str:
        """The spec a run of this seed trains with: ``{seed}`` replaced by the seed."""
        return self.spec.replace(SEED_FIELD, str(seed))


@dataclass(frozen=True)
class GridRun:
    model: str
    arm: Arm
    seed: int
    config: TrainConfig
    out_dir: Path


def parse_arms(texts: list[str] | tuple[str, ...]) -> list[Arm]:
    """``["ce", "edl-chaotic=edl:runs/x/loss"]`` -> arms; duplicate labels are an error."""
    arms = [Arm(*parse_loss_arm(t)) for t in texts]
    labels = [a.label for a in arms]
    dupes = sorted({x for x in labels if labels.count(x) > 1})
    if dupes:
        raise ValueError(f"duplicate loss labels {dupes}; name arms LABEL=SPEC, "
                         "e.g. edl-chaotic=edl:runs/a/loss edl-gauss=edl:runs/b/loss")
    if not arms:
        raise ValueError("no losses given; e.g. --losses ce focal edl")
    return arms


def plan(recipe: TrainConfig, arms: list[Arm], seeds: list[int], models: list[str],
         out_dir: Path) -> list[GridRun]:
    """All runs in execution order: seed outermost, so a partial grid covers every loss."""
    return [GridRun(model, arm, seed, replace(recipe, model=model, loss=arm.spec_for(seed), seed=seed),
                    out_dir / model / arm.label / f"seed{seed}")
            for seed in seeds for model in models for arm in arms]


def _mismatches(runs: list[GridRun]) -> list[str]:
    """Runs whose folders hold results or checkpoints of another config, or of another loss
    under the same spec (an ``edl:PATH`` whose PATH was overwritten since)."""
    import torch

    problems = []
    definitions: dict[str, str | None] = {}
    for run in runs:
        saved = read_result(run.out_dir)
        if saved is None and (run.out_dir / CHECKPOINT).is_file():
            try:
                saved = torch.load(run.out_dir / CHECKPOINT, map_location="cpu", weights_only=True)
            except Exception:
                saved = None  # train() explains unreadable checkpoints itself
        if not isinstance(saved, dict) or not isinstance(saved.get("config"), dict):
            continue  # nothing saved yet, or damaged: train() names it with the way out
        spec = run.config.loss
        if spec not in definitions:
            definitions[spec] = spec_definition(spec)
        diff = config_diff(saved["config"], asdict(run.config)) or definition_diff(saved, spec, definitions[spec])
        if diff:
            problems.append(f"{run.out_dir}: {'; '.join(diff)}")
    return problems


def _check_arms(arms: list[Arm], seeds: list[int]) -> None:
    """Build every loss once (every seed's, for ``{seed}`` specs), so a missing EDL checkpoint
    fails now, not hours into the grid."""
    for arm in arms:
        for spec in dict.fromkeys(arm.spec_for(seed) for seed in seeds):
            try:
                build_loss_from_spec(spec)
            except (ValueError, TypeError, FileNotFoundError) as err:
                raise type(err)(f"loss {arm.label}={spec}: {err}") from None


def check_grid(seeds: list[int], models: list[str]) -> None:
    """Each seed and model at most once: a repeat would count one run as several (``--seeds 0 0 0``
    showed "3 seeds, ± 0.00" from a single run), as ``ablate`` refuses too."""
    if not seeds:
        raise ValueError("no seeds given; e.g. --seeds 0 1 2")
    for flag, values in (("--seeds", list(seeds)), ("--models", list(models))):
        repeated = sorted({str(v) for v in values if values.count(v) > 1})
        if repeated:
            raise ValueError(f"{flag} repeats {', '.join(repeated)} ({' '.join(map(str, values))}): each run would be "
                             "counted once per repeat; give each at most once")


RECIPE_EXCLUDED = frozenset({"model", "loss", "seed"})  # what varies inside a grid


def summary_recipe(recipe: TrainConfig, runs: list[GridRun]) -> TrainConfig:
    """The recipe the runs present were trained with, for ``--summary-only``: the summary states the
    recipe above the numbers, so it must be theirs, not whatever flags the rewrite was given. A
    flag set away from its default that contradicts the runs is refused, as are runs of
    different recipes; flags left at their defaults take the runs' values."""
    defaults, flags = asdict(TrainConfig()), asdict(recipe)
    keys = [k for k in flags if k not in RECIPE_EXCLUDED | RESUME_IGNORED]
    saved = [(run.out_dir, read_result(run.out_dir)) for run in runs]
    saved = [(folder, {k: result["config"].get(k, defaults[k]) for k in keys}) for folder, result in saved
             if result and isinstance(result.get("config"), dict)]  # a result without one cannot say its recipe
    if not saved:
        return recipe
    first_dir, first = saved[0]
    for folder, other in saved[1:]:
        diff = config_diff(first, other)
        if diff:
            raise ValueError(f"{first_dir} and {folder} were trained with different recipes ({'; '.join(diff)}); "
                             "one summary states one recipe: compare them in separate --out folders")
    conflicts = [f"--{k.replace('_', '-')} {flags[k]!r} (the runs: {first[k]!r})" for k in keys
                 if flags[k] != defaults[k] and flags[k] != first[k]]
    if conflicts:
        raise ValueError(f"--summary-only: the runs in the grid were not trained with {', '.join(conflicts)}; "
                         "drop those flags (the summary takes the recipe from the runs) or give the runs' values")
    return replace(recipe, **first)


def check_versus(versus: list[tuple[str, str]], arms: list[Arm]) -> None:
    """Every ``--versus`` pair names two different arms of the grid."""
    labels = [a.label for a in arms]
    for a, b in versus:
        unknown = [x for x in (a, b) if x not in labels]
        if unknown:
            raise ValueError(f"--versus {a} {b}: no arm labelled {', '.join(unknown)}; the arms are {', '.join(labels)}")
        if a == b:
            raise ValueError(f"--versus {a} {b}: name two different arms")


def compare(recipe: TrainConfig, losses: list[str], seeds: list[int], out_dir: Path,
            models: list[str] | None = None, progress: bool = True, ray: str | None = None,
            threads: int | None = None, versus: list[tuple[str, str]] | None = None,
            lr_grid: list[float] | None = None, tune_seeds: list[int] | None = None) -> dict[str, Any]:
    """Run (or finish) the grid and write the summary; returns the summary dict.

    ``recipe`` supplies everything but model, loss and seed. Diverged runs are recorded and
    the grid goes on; a run folder holding another config is refused before anything trains.
    ``ray``: a Ray cluster address (or ``auto``) to run the runs on, as tasks of ``threads``
    CPUs; runs that fail there are reported as ``failed`` and the grid goes on.
    ``versus``: pairs of arm labels compared head to head in the summary.
    ``lr_grid``: multipliers of ``recipe.lr``; every arm trains ``tune_seeds`` (default: the
    first seed) at each, picks on validation, and runs ``seeds`` at its pick (``edloss.lab.tuning``).
    """
    arms = parse_arms(losses)
    versus = list(versus or [])
    check_versus(versus, arms)
    models = list(models or [recipe.model])
    check_grid(list(seeds), models)
    tuned = _tuned(lr_grid, tune_seeds, list(seeds), out_dir)
    _check_arms(arms, list(seeds) + (tuned.tune_seeds if tuned else []))  # first: a missing EDL checkpoint is named
    if tuned:
        runs = tuning.tuning_runs(recipe, arms, models, tuned.grid, tuned.tune_seeds, Path(out_dir))
        runs += tuning.test_runs(recipe, arms, models, list(seeds), tuned.chosen(arms, models), Path(out_dir))
    else:
        runs = plan(recipe, arms, list(seeds), models, Path(out_dir))
    for run in runs:
        run.config.validate()
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


@dataclass
class Tuned:
    """A tuned grid's settings: the multipliers, the seeds that choose, and where the runs live."""

    grid: list[float]
    tune_seeds: list[int]
    out_dir: Path

    def chosen(self, arms: list[Arm], models: list[str]) -> dict[str, dict[str, dict[str, Any]]]:
        return tuning.picks(Path(self.out_dir), arms, models, self.grid, self.tune_seeds)

    def summary(self, recipe: TrainConfig, arms: list[Arm], models: list[str]) -> dict[str, Any]:
        chosen = self.chosen(arms, models)
        for entries in chosen.values():
            for entry in entries.values():
                entry["spread"] = tuning.flatness(entry["curve"])
        return {"grid": self.grid, "tune_seeds": self.tune_seeds, "base_lr": recipe.lr, "picks": chosen}


def _tuned(lr_grid: list[float] | None, tune_seeds: list[int] | None, seeds: list[int], out_dir: Path) -> Tuned | None:
    """The tuned grid's settings, or None without ``lr_grid``; tuning seeds without a grid are refused."""
    if lr_grid is None:
        if tune_seeds:
            raise ValueError("--tune-seeds needs --lr-grid (the seeds that pick each arm's learning rate)")
        return None
    grid = tuning.parse_lr_grid(lr_grid)
    chosen = list(tune_seeds) if tune_seeds else seeds[:1]
    check_grid(chosen, ["model"])
    return Tuned(grid, chosen, Path(out_dir))


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


# ----------------------------------------------------------------------------- summary


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def _read_history(run_dir: Path) -> list[dict]:
    """A run's per-epoch rows; a torn last line (a run killed mid-write) is dropped with a note."""
    return read_jsonl(run_dir / EPOCHS)


def _last_train_acc(run_dir: Path) -> float | None:
    """The last epoch's accuracy on the labels trained on. Under label noise those are the noisy
    labels, so a value above 1 - eta means the network memorised wrong labels."""
    history = _read_history(run_dir)
    return history[-1].get("train_acc") if history else None


def _is_ce(spec: str) -> bool:
    name, options = parse_loss_spec(spec)
    return name == "ce" and not options


def collect(out_dir: Path, recipe: TrainConfig, arms: list[Arm], seeds: list[int],
            models: list[str], failures: dict[str, str] | None = None,
            versus: list[tuple[str, str]] | None = None, tuned: dict[str, Any] | None = None) -> dict[str, Any]:
    """Read every run's result and build the summary rows (accuracies in percent).

    ``failures`` ({run folder: error}, from a Ray grid) marks runs without a result as failed;
    ``versus`` (pairs of arm labels) adds head-to-head tests; ``tuned`` (a tuned grid's
    ``Tuned.summary``) reads each arm's runs at its learning-rate pick.
    """
    failures = failures or {}
    runs, rows = [], []
    for model in models:
        reference = None
        for arm in arms:
            done = []
            arm_dir = out_dir / model / arm.label
            if tuned is not None:
                chosen = tuned["picks"][model][arm.label]["pick"]
                arm_dir = arm_dir / (tuning.lr_folder(chosen) if chosen is not None else "undecided")
            for seed in seeds:
                run_dir = arm_dir / f"seed{seed}"
                result = read_result(run_dir) or {}
                status = result.get("status", "failed" if str(run_dir) in failures else "missing")
                runs.append({"model": model, "label": arm.label, "spec": arm.spec_for(seed), "seed": seed,
                             "status": status, "dir": str(run_dir),
                             "test_acc": result.get("test_acc"),
                             "best_val_test_acc": result.get("best_val_test_acc"),
                             "val_acc": result.get("final_val_acc"),
                             "test_nll": result.get("test_nll"), "test_ece": result.get("test_ece"),
                             **{k: result.get(k) for k in TEMPERATURE_KEYS},
                             "wall_seconds": result.get("wall_seconds"),
                             "train_acc": _last_train_acc(run_dir) if status == "finished" else None,
                             **{k: result.get(k) for k in LONG_TAIL_KEYS if result.get(k) is not None}})
                if status == "failed":
                    runs[-1]["error"] = failures[str(run_dir)]
                if status == "finished":
                    done.append(runs[-1])
            test = [100 * r["test_acc"] for r in done]
            val = [100 * r["val_acc"] for r in done if r["val_acc"] is not None]
            early = [100 * r["best_val_test_acc"] for r in done if r.get("best_val_test_acc") is not None]
            fit = [100 * r["train_acc"] for r in done if r.get("train_acc") is not None]
            row = {"model": model, "label": arm.label, "spec": arm.spec, "n": len(done),
                   "diverged": sum(r["status"] == "diverged" for r in runs[-len(seeds):]),
                   "failed": sum(r["status"] == "failed" for r in runs[-len(seeds):]),
                   "test_mean": _mean_std(test)[0], "test_std": _mean_std(test)[1],
                   "val_mean": _mean_std(val)[0], "val_std": _mean_std(val)[1],
                   "best_val_test_mean": _mean_std(early)[0], "best_val_test_std": _mean_std(early)[1],
                   "train_mean": _mean_std(fit)[0], "train_std": _mean_std(fit)[1],
                   **_calibration_columns(done), **_long_tail_columns(done),
                   "wall_mean": _mean_std([r["wall_seconds"] for r in done])[0]}
            if tuned is not None:
                entry = tuned["picks"][model][arm.label]
                row.update(lr_pick=entry["pick"], spread=entry["spread"],
                           lr=None if entry["pick"] is None else tuned["base_lr"] * entry["pick"])
            if reference is None and _is_ce(arm.spec):
                reference = row
            rows.append(row)
        poly1 = next((r for r in rows if r["model"] == model and parse_loss_spec(r["spec"])[0] == "poly1"), None)
        for row in rows:
            if row["model"] == model:
                row.update(_paired_delta(runs, model, row["label"], reference["label"] if reference else None))
                row.update(_paired_test(runs, model, row["label"], reference["label"] if reference else None, "ce"))
                row.update(_paired_test(runs, model, row["label"], poly1["label"] if poly1 else None, "poly1"))
    shared = {k: v for k, v in asdict(recipe).items() if k not in ("model", "loss", "seed")}
    head_to_head = [_versus(runs, model, a, b) for model in models for a, b in versus or []]
    summary = {"recipe": shared, "seeds": seeds, "models": models,
               "arms": [asdict(a) for a in arms], "rows": rows, "versus": head_to_head, "runs": runs}
    if tuned is not None:
        summary["tuning"] = tuned
    return summary


def _versus(runs: list[dict[str, Any]], model: str, a: str, b: str) -> dict[str, Any]:
    """Arm ``a`` against arm ``b`` on test accuracy (percent): the difference of means with a
    seeded bootstrap interval, Mann–Whitney (unpaired) and Wilcoxon paired by seed."""
    from edloss.lab.stats import bootstrap_mean_diff, mann_whitney

    mine, theirs = _test_acc_by_seed(runs, model, a, 100), _test_acc_by_seed(runs, model, b, 100)
    boot = bootstrap_mean_diff(list(mine.values()), list(theirs.values()))
    unpaired = mann_whitney(list(mine.values()), list(theirs.values()))
    signed = _wilcoxon_by_seed(mine, theirs)
    return {"model": model, "a": a, "b": b, "n_a": len(mine), "n_b": len(theirs),
            "diff": boot["diff"], "lo": boot["lo"], "hi": boot["hi"],
            "mann_whitney_p": unpaired["p"], "prob_a_greater": unpaired["prob_a_greater"],
            "wilcoxon_p": signed["p"], "pairs": signed["pairs"], "wins": signed["wins"]}


def _wilcoxon_by_seed(mine: dict[int, float], theirs: dict[int, float]) -> dict[str, Any]:
    """Two-sided Wilcoxon signed-rank test over the seeds both arms finished (p None below two
    pairs), with the number of pairs and of seeds where ``mine`` is higher."""
    seeds = sorted(mine.keys() & theirs.keys())
    wins = sum(mine[s] > theirs[s] for s in seeds)
    if len(seeds) < 2:
        return {"p": None, "pairs": len(seeds), "wins": wins}
    from edloss.lab.stats import wilcoxon_paired

    return {"p": wilcoxon_paired([(mine[s], theirs[s]) for s in seeds])["p"], "pairs": len(seeds), "wins": wins}


def _test_acc_by_seed(runs: list[dict[str, Any]], model: str, label: str | None, scale: float = 1.0) -> dict[int, float]:
    """{seed: test accuracy x scale} of one arm's finished runs."""
    return {r["seed"]: scale * r["test_acc"] for r in runs
            if r["model"] == model and r["label"] == label and r["status"] == "finished"}


def _paired_delta(runs: list[dict[str, Any]], model: str, label: str, ce_label: str | None) -> dict[str, Any]:
    """Test-accuracy difference to CE over the seeds both finished: seeds share the network's
    initialisation and data order, so per-seed pairs cancel much of the seed-to-seed noise."""
    mine, ce = _test_acc_by_seed(runs, model, label, 100), _test_acc_by_seed(runs, model, ce_label, 100)
    diffs = [mine[s] - ce[s] for s in sorted(mine.keys() & ce.keys())]
    mean, std = _mean_std(diffs)
    return {"delta_vs_ce": mean, "delta_vs_ce_std": std, "delta_pairs": len(diffs),
            "delta_wins": sum(d > 0 for d in diffs), "is_reference": label == ce_label}


LONG_TAIL_KEYS = ("class_counts", "test_class_acc", "test_shot_acc", "shot_groups", "test_acc_posthoc_la",
                  "test_shot_acc_posthoc_la", "test_class_acc_posthoc_la")


def _long_tail_columns(done: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean (± std) many/medium/few-shot test accuracy in percent, and the same model's after post-hoc
    logit adjustment, over an arm's finished long-tail runs (nothing for balanced runs)."""
    out: dict[str, Any] = {}
    for prefix, key, overall in (("", "test_shot_acc", None), ("posthoc_", "test_shot_acc_posthoc_la", "test_acc_posthoc_la")):
        shots = [r[key] for r in done if r.get(key)]
        if not shots:
            continue
        for group in ("many", "medium", "few"):
            values = [100 * s[group] for s in shots if s.get(group) is not None]
            out[f"{prefix}{group}_mean"], out[f"{prefix}{group}_std"] = _mean_std(values)
        if overall:
            values = [100 * r[overall] for r in done if r.get(overall) is not None]
            out[f"{prefix}test_mean"], out[f"{prefix}test_std"] = _mean_std(values)
    return out


def long_tail_table(summary: dict[str, Any], model: str) -> list[str]:
    """The long-tail table of one model (balanced test accuracy and many/medium/few-shot, CE after
    post-hoc logit adjustment as a reference line), or nothing for a balanced grid."""
    rows = [r for r in summary["rows"] if r["model"] == model and r.get("many_mean") is not None]
    if not rows:
        return []
    run = next(r for r in summary["runs"] if r["model"] == model and r.get("shot_groups"))
    groups, counts = run["shot_groups"], run.get("class_counts") or []
    sizes = ", ".join(f"{g} {len(groups[g])}" for g in ("many", "medium", "few"))
    lines = [f"Long tail ({model}, imbalance {summary['recipe'].get('imbalance'):g}, {sum(counts)} training images, "
             f"per class {counts}): test accuracy in percent on the balanced test set, overall and per group of classes, "
             f"each group the mean of its classes' accuracies. Split: {groups['rule']} (classes: {sizes}). "
             "\"+ post-hoc LA\": the same CE models, predicting argmax(z − log π) (Menon et al. 2021, τ = 1): a reference "
             "line, not a loss.", "",
             "| loss | seeds | test acc (balanced) | many | medium | few |", "|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['label']} | {row['n']} | {_pm(row['test_mean'], row['test_std'])} | "
                     f"{_pm(row['many_mean'], row['many_std'])} | {_pm(row['medium_mean'], row['medium_std'])} | "
                     f"{_pm(row['few_mean'], row['few_std'])} |")
    for row in rows:
        if _is_ce(row["spec"]) and row.get("posthoc_test_mean") is not None:
            lines.append(f"| {row['label']} + post-hoc LA (reference) | {row['n']} | "
                         f"{_pm(row['posthoc_test_mean'], row['posthoc_test_std'])} | "
                         f"{_pm(row['posthoc_many_mean'], row['posthoc_many_std'])} | "
                         f"{_pm(row['posthoc_medium_mean'], row['posthoc_medium_std'])} | "
                         f"{_pm(row['posthoc_few_mean'], row['posthoc_few_std'])} |")
    return lines + [""]


def plot_per_class(summary: dict[str, Any], path: Path) -> Path | None:
    """Test accuracy per class (mean over finished seeds) for every arm, classes sorted by training
    count (most first), the counts as grey bars on a log axis; CE after post-hoc logit adjustment
    dotted. None when no run recorded per-class accuracy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    models = [m for m in summary["models"] if any(r["model"] == m and r.get("test_class_acc") for r in summary["runs"])]
    if not models:
        return None
    arms = summary["arms"]
    palette = plt.get_cmap("tab10" if len(arms) <= 10 else "tab20").colors
    fig, axes = plt.subplots(1, len(models), figsize=(7.5 * len(models) + 2.5, 4.5), squeeze=False)
    for ax, model in zip(axes[0], models):
        runs = [r for r in summary["runs"] if r["model"] == model and r.get("test_class_acc")]
        counts = next((r["class_counts"] for r in runs if r.get("class_counts")), None) or [1] * len(runs[0]["test_class_acc"])
        order = sorted(range(len(counts)), key=lambda c: (-counts[c], c))
        x = np.arange(len(order))
        bars = ax.twinx()
        bars.bar(x, [counts[c] for c in order], color="0.85", width=0.9, zorder=0)
        bars.set(yscale="log", ylabel="training images (log)")
        ax.set_zorder(bars.get_zorder() + 1)
        ax.patch.set_visible(False)
        for i, arm in enumerate(arms):
            mine = [r for r in runs if r["label"] == arm["label"]]
            if not mine:
                continue
            acc = np.array([[100 * (r["test_class_acc"][c] or 0) for c in order] for r in mine]).mean(0)
            style = {"color": "black", "linestyle": "--"} if _is_ce(arm["spec"]) else {"color": palette[i % len(palette)]}
            ax.plot(x, acc, marker="o" if len(x) <= 20 else None, markersize=3, label=f"{arm['label']} (n={len(mine)})", **style)
            adjusted = [r["test_class_acc_posthoc_la"] for r in mine if r.get("test_class_acc_posthoc_la")]
            if _is_ce(arm["spec"]) and adjusted:
                acc = np.array([[100 * (a[c] or 0) for c in order] for a in adjusted]).mean(0)
                ax.plot(x, acc, color="black", linestyle=":", label=f"{arm['label']} + post-hoc LA")
        ax.set(title=f"{model}: test accuracy per class (mean over seeds)", xlabel="class, most training images first",
               ylabel="test accuracy (%)", ylim=(0, 100))
        if len(order) <= 20:
            ax.set_xticks(x, [str(c) for c in order])
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left", bbox_to_anchor=(1.12, 1.0), fontsize="small")
    fig.tight_layout()
    save_figure(fig, path, dpi=120)
    return path


TEMPERATURE_KEYS = ("temperature", "test_nll_ts", "test_ece_ts")  # after temperature scaling fitted on validation


def _calibration_columns(done: list[dict[str, Any]]) -> dict[str, float | None]:
    """Mean test NLL and ECE (percent) over an arm's finished runs that recorded them, before and
    after temperature scaling (runs made before it was measured have no "after")."""
    nll = [r["test_nll"] for r in done if r.get("test_nll") is not None]
    ece = [100 * r["test_ece"] for r in done if r.get("test_ece") is not None]
    nll_ts = [r["test_nll_ts"] for r in done if r.get("test_nll_ts") is not None]
    ece_ts = [100 * r["test_ece_ts"] for r in done if r.get("test_ece_ts") is not None]
    temps = [r["temperature"] for r in done if r.get("temperature") is not None]
    return {"nll_mean": _mean_std(nll)[0], "ece_mean": _mean_std(ece)[0], "ece_std": _mean_std(ece)[1],
            "nll_ts_mean": _mean_std(nll_ts)[0], "ece_ts_mean": _mean_std(ece_ts)[0],
            "ece_ts_std": _mean_std(ece_ts)[1], "temperature_mean": _mean_std(temps)[0]}


def _paired_test(runs: list[dict[str, Any]], model: str, label: str, other: str | None, name: str) -> dict[str, Any]:
    """Two-sided Wilcoxon signed-rank test of test accuracy against ``other``, paired by seed."""
    if other is None or other == label:
        return {}
    test = _wilcoxon_by_seed(_test_acc_by_seed(runs, model, label), _test_acc_by_seed(runs, model, other))
    if test["p"] is None:
        return {}
    return {f"wilcoxon_p_vs_{name}": test["p"], f"pairs_vs_{name}": test["pairs"], f"wins_vs_{name}": test["wins"]}


def format_p(row: dict[str, Any], name: str) -> str:
    """"p = 0.031 (8/10 better)" or "—"."""
    p = row.get(f"wilcoxon_p_vs_{name}")
    if p is None:
        return "—"
    return f"p = {p:.3g} ({row[f'wins_vs_{name}']}/{row[f'pairs_vs_{name}']} better)"


def format_delta(row: dict[str, Any]) -> str:
    """A row's Δ vs CE as a table cell: "reference", "—" or "+1.07 ± 2.05 (3/5 seeds better)".

    Rows of summaries written before pairing carry only the difference of means, shown bare.
    """
    if row.get("is_reference"):
        return "reference"
    if row.get("delta_vs_ce") is None:
        return "—"
    cell = f"{row['delta_vs_ce']:+.2f}"
    if row.get("delta_vs_ce_std") is not None:
        cell += f" ± {row['delta_vs_ce_std']:.2f}"
    if row.get("delta_pairs"):
        cell += f" ({row['delta_wins']}/{row['delta_pairs']} seeds better)"
    return cell


def _num(value: float | None, digits: int) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _pm(mean: float | None, std: float | None) -> str:
    if mean is None:
        return "—"
    return f"{mean:.2f}" if std is None else f"{mean:.2f} ± {std:.2f}"


def render_markdown(summary: dict[str, Any]) -> str:
    r = summary["recipe"]
    subset = f"first {r['train_subset']}" + (" (class-balanced)" if r["balanced_subset"] else "") \
        if r["train_subset"] else "all"
    lines = [
        "# Loss comparison", "",
        f"Recipe: {r['dataset']}, {r['epochs']} epochs, batch {r['batch_size']}, SGD lr {r['lr']} "
        f"(momentum {r['momentum']}{', Nesterov' if r['nesterov'] else ''}), weight decay "
        f"{r['weight_decay']}, {r['schedule']} schedule, augmentation {'on' if r['augment'] else 'off'}; "
        f"training images: {subset}; validation: last {r['val_size']} training images. "
        + (f"Long-tailed training set: imbalance {r['imbalance']:g} (class c keeps its first "
           f"floor(n_max {r['imbalance']:g}^(-c/(K-1))) images; validation and test balanced). "
           if r.get("imbalance") is not None else "")
        + (f"Symmetric label noise {r['label_noise']} on the training labels (noise seed {r.get('noise_seed', 0)}; "
           "validation and test clean). " if r.get("label_noise") else "")
        + f"Seeds: {', '.join(map(str, summary['seeds']))}.", "",
        "Accuracies in percent, mean ± sample std over finished seeds; test accuracy is measured "
        "after the last epoch, and again with the weights of the best validation epoch (\"at best "
        "val\": early stopping chosen on validation; memorised label noise shows as the gap); "
        "validation accuracy is the last epoch's. Δ vs CE is the "
        "mean ± std of per-seed differences in test accuracy (points) over the seeds both finished, "
        "with how many of those seeds the loss beat CE. p: two-sided Wilcoxon signed-rank test "
        "of test accuracy, paired by seed, against CE and against Poly-1. NLL and ECE (top-label, "
        "15 equal-width bins, percent) are measured on the test set after the last epoch. Train acc "
        "is the last epoch's accuracy on the training labels as trained on (with label noise: the "
        "noisy labels, so above 1 − η means wrong labels were memorised). After TS: the same model's test NLL "
        "and ECE after temperature scaling (one T per run, fitted on validation; predictions unchanged).", "",
    ]
    tuned = summary.get("tuning")
    if tuned:
        lines += [f"**Tuned**: every arm picked its peak learning rate from the multipliers "
                  f"{', '.join(f'{m:g}' for m in tuned['grid'])} of {tuned['base_lr']:g} on validation "
                  f"(tuning seeds {', '.join(map(str, tuned['tune_seeds']))}); the rows below are its runs at its pick.", ""]
    for model in summary["models"]:
        pick_head, pick_rule = (" lr pick |", "---|") if tuned else ("", "")
        lines += [f"## {model}", ""] + (tuning.tuning_table(tuned, model) if tuned else []) + [
                  f"| loss | spec |{pick_head} seeds | test acc | test acc at best val | val acc | train acc | Δ vs CE "
                  "| vs CE | vs Poly-1 | test NLL | ECE (%) | NLL after TS | ECE after TS (%) | wall time (s) |",
                  f"|---|---|{pick_rule}---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for row in summary["rows"]:
            if row["model"] != model:
                continue
            seeds = f"{row['n']}" + (f" (+{row['diverged']} diverged)" if row["diverged"] else "") \
                + (f" (+{row['failed']} failed)" if row.get("failed") else "")
            delta = format_delta(row)
            wall = "—" if row["wall_mean"] is None else f"{row['wall_mean']:.0f}"
            pick = ("" if not tuned else " — |" if row.get("lr_pick") is None
                    else f" {row['lr_pick']:g}× ({row['lr']:.3g}) |")
            lines.append(f"| {row['label']} | `{row['spec']}` |{pick} {seeds} | "
                         f"{_pm(row['test_mean'], row['test_std'])} | "
                         f"{_pm(row.get('best_val_test_mean'), row.get('best_val_test_std'))} | "
                         f"{_pm(row['val_mean'], row['val_std'])} | "
                         f"{_pm(row.get('train_mean'), row.get('train_std'))} | {delta} | {format_p(row, 'ce')} | "
                         f"{format_p(row, 'poly1')} | {_num(row.get('nll_mean'), 3)} | "
                         f"{_pm(row.get('ece_mean'), row.get('ece_std'))} | {_num(row.get('nll_ts_mean'), 3)} | "
                         f"{_pm(row.get('ece_ts_mean'), row.get('ece_ts_std'))} | {wall} |")
        lines += ["", *_per_seed_table(summary, model), ""]
        lines += long_tail_table(summary, model)
        lines += versus_table(summary, model)
    return "\n".join(lines)


def versus_table(summary: dict[str, Any], model: str) -> list[str]:
    """The ``--versus`` pairs of one model, or nothing."""
    pairs = [v for v in summary.get("versus", []) if v["model"] == model]
    if not pairs:
        return []
    lines = [f"Head to head ({model}, test accuracy): difference of means with a 95% bootstrap interval; "
             "Mann–Whitney p (unpaired, two-sided) with P(A > B); Wilcoxon p paired by seed.", "",
             "| A | B | seeds A / B | mean A − B [95% CI] | Mann–Whitney p | P(A > B) | paired Wilcoxon p (A better) |",
             "|---|---|---|---|---|---|---|"]
    for v in pairs:
        interval = "—" if v["diff"] is None else f"{v['diff']:+.2f} [{v['lo']:+.2f}, {v['hi']:+.2f}]"
        wilcoxon = "—" if v["wilcoxon_p"] is None else f"{v['wilcoxon_p']:.3g} ({v['wins']}/{v['pairs']})"
        mann_whitney = "—" if v["mann_whitney_p"] is None else f"{v['mann_whitney_p']:.3g}"
        lines.append(f"| {v['a']} | {v['b']} | {v['n_a']} / {v['n_b']} | {interval} | "
                     f"{mann_whitney} | {_num(v['prob_a_greater'], 2)} | {wilcoxon} |")
    return lines + [""]


def _per_seed_table(summary: dict[str, Any], model: str) -> list[str]:
    """Test accuracy of every run, one column per seed: the pairs behind Δ and the p-values."""
    seeds = summary["seeds"]
    lines = [f"Test accuracy per seed ({model}, last epoch; — = not finished):", "",
             "| loss | " + " | ".join(f"seed {s}" for s in seeds) + " |", "|---|" + "---|" * len(seeds)]
    for arm in summary["arms"]:
        by_seed = {r["seed"]: r["test_acc"] for r in summary["runs"] if r["model"] == model
                   and r["label"] == arm["label"] and r["status"] == "finished"}
        cells = [_num(None if by_seed.get(s) is None else 100 * by_seed[s], 2) for s in seeds]
        lines.append(f"| {arm['label']} | " + " | ".join(cells) + " |")
    return lines


def plot_val_accuracy(summary: dict[str, Any], out_dir: Path, path: Path) -> None:
    """Validation accuracy per epoch per loss: mean over finished seeds with a ±std band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator
    import numpy as np

    models, arms = summary["models"], summary["arms"]
    palette = plt.get_cmap("tab10" if len(arms) <= 10 else "tab20").colors  # no two arms share a colour
    fig, axes = plt.subplots(1, len(models), figsize=(6.5 * len(models) + 2.5, 4.5), squeeze=False)
    for ax, model in zip(axes[0], models):
        for i, arm in enumerate(arms):
            curves = [[(h["epoch"], 100 * h["val_acc"]) for h in _read_history(Path(run["dir"])) if h.get("val_acc") is not None]
                      for run in summary["runs"] if run["model"] == model
                      and run["label"] == arm["label"] and run["status"] == "finished"]
            curves = [c for c in curves if c]
            if not curves:
                continue
            length = min(map(len, curves))  # epochs validated (every --val-every-th and the last)
            acc = np.array([[a for _, a in c[:length]] for c in curves])
            epochs = np.array([e for e, _ in curves[0][:length]])
            mean, std = acc.mean(0), acc.std(0, ddof=1) if len(acc) > 1 else np.zeros(length)
            style = {"color": "black", "linestyle": "--"} if _is_ce(arm["spec"]) else {"color": palette[i % len(palette)]}
            (line,) = ax.plot(epochs, mean, label=f"{arm['label']} (n={len(acc)})", **style)
            ax.fill_between(epochs, mean - std, mean + std, alpha=0.12, color=line.get_color())
        ax.set(title=f"{model}: mean ± std over seeds", xlabel="epoch",
               ylabel="validation accuracy (%)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
    fig.tight_layout()
    save_figure(fig, path, dpi=120)


def write_summary(out_dir: Path, recipe: TrainConfig, arms: list[Arm], seeds: list[int],
                  models: list[str], plot: bool = True, failures: dict[str, str] | None = None,
                  versus: list[tuple[str, str]] | None = None, tuned: Tuned | None = None) -> dict[str, Any]:
    """Write summary.md, summary.json and (with ``plot``) val_accuracy.png (and a tuned grid's
    lr_curves.png); return the summary."""
    out_dir.mkdir(parents=True, exist_ok=True)
    tuning_summary = tuned.summary(recipe, arms, models) if tuned else None
    summary = collect(out_dir, recipe, arms, seeds, models, failures, versus, tuning_summary)
    if plot and tuning_summary:
        tuning.plot_lr_curves(tuning_summary, out_dir / "lr_curves.png")
    atomic_write_text(out_dir / "summary.md", render_markdown(summary))
    atomic_write_text(out_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    if plot:
        plot_val_accuracy(summary, out_dir, out_dir / "val_accuracy.png")
        if recipe.imbalance is not None:
            plot_per_class(summary, out_dir / "per_class_accuracy.png")
    return summary


# ----------------------------------------------------------------------------- command line


def _cli(args: argparse.Namespace) -> int:
    apply_threads(args)
    recipe = config_from_args(args)
    out = Path(args.out)  # made by compare() once every flag is checked
    versus = [tuple(pair) for pair in args.versus or []]
    grid = None if args.lr_grid is None else tuning.parse_lr_grid(args.lr_grid)
    if args.summary_only:
        rewrite_summary(recipe, args, out, versus, grid)
        print(out / "summary.md")
        return 0
    summary = compare(recipe, args.losses or list(DEFAULT_LOSSES), args.seeds or list(DEFAULT_SEEDS), args.out,
                      args.models, progress=not args.quiet, ray=args.ray, threads=args.threads, versus=versus,
                      lr_grid=grid, tune_seeds=args.tune_seeds)
    print((out / "summary.md").read_text())
    failed = [r for r in summary["runs"] if r["status"] == "failed"]
    for run in failed:
        print(f"edloss compare: failed: {run['dir']}: {run['error']}", file=sys.stderr)
    return 1 if failed else 0


def rewrite_summary(recipe: TrainConfig, args: argparse.Namespace, out: Path, versus: list[tuple[str, str]],
                    grid: list[float] | None) -> dict[str, Any]:
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
    tune_seeds = args.tune_seeds or tuned_before.get("tune_seeds")
    arms = parse_arms(losses)
    check_versus(versus, arms)
    check_grid(seeds, models)
    tuned = _tuned(grid, tune_seeds, seeds, out)
    out = prepare_output_folder(out)
    with RunLock(out, "comparison grid"):
        runs = (tuning.tuning_runs(recipe, arms, models, tuned.grid, tuned.tune_seeds, out) if tuned
                else plan(recipe, arms, seeds, models, out))
        recipe = summary_recipe(recipe, runs)
        lost = _finished_dirs(previous) - _finished_dirs(collect(out, recipe, arms, seeds, models, versus=versus,
                                                                 tuned=tuned.summary(recipe, arms, models) if tuned else None))
        if lost:
            raise ValueError(f"--summary-only would drop {len(lost)} finished run(s) that {out / 'summary.json'} counts "
                             f"(e.g. {sorted(lost)[0]}); give the same --losses, --seeds, --models (and --lr-grid) "
                             "as the grid, or leave them out to take them from that summary")
        return write_summary(out, recipe, arms, seeds, models, versus=versus, tuned=tuned)


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
