"""A second worker on a comparison grid another process is running: it takes runs from the end.

``edloss compare`` (and each regime of ``edloss regimes``) holds its grid folder's lock and trains
its runs in order, one after another. On a machine with a second core free, a backfill worker
walks the same list from the other end: it trains each run into ``OUT/.backfill/`` and moves the
finished folder into place only if the grid has not started that run meanwhile. Configs are
identical, so the numbers are the same whichever process trains a run, and the grid skips the
runs it finds finished. The worker stops where the two meet (the first unfinished run folder it
finds; finished ones are passed over), first among the tuning runs, then, once every arm's pick is
known, among the test runs. It never waits and never writes the summary (the grid does, when it
reaches its end). Without a grid running it refuses: run the grid itself then.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from edloss.files import LOCK_FILE, RunFolderBusy, RunLock
from edloss.lab import tuning
from edloss.lab.compare import _say, plan_grid
from edloss.lab.grid import GridRun
from edloss.lab.recipe import TrainConfig
from edloss.lab.train import TrainingDiverged, is_finished, train

SCRATCH = ".backfill"  # under the grid folder: a worker's runs before they are moved into place


def grid_is_running(out_dir: Path) -> bool:
    """Whether another process holds the grid folder's lock."""
    if not (Path(out_dir) / LOCK_FILE).exists():
        return False
    try:
        with RunLock(out_dir, "comparison grid"):
            return False
    except RunFolderBusy:
        return True


def backfill(recipe: TrainConfig, losses: list[str], seeds: list[int], out_dir: Path, progress: bool = True,
             lr_grid: list[float] | None = None, tune_seeds: list[int] | None = None,
             carry_picks: Path | None = None, wd_grid: list[float] | None = None) -> dict[str, Any]:
    """Train the grid's runs from the end until meeting the grid's own process; returns the runs
    moved into place and where the two met."""
    arms, models, tuned, runs = plan_grid(recipe, losses, seeds, out_dir, None, lr_grid, tune_seeds, carry_picks,
                                          wd_grid)
    if not grid_is_running(out_dir):
        raise ValueError(f"no comparison is running in {out_dir}: a backfill worker only helps one that is; "
                         "run the grid itself (edloss compare / edloss regimes) instead")
    # a tuned grid's own tuning runs first (carried picks have none: every run is a test run)
    head = (tuning.tuning_runs(recipe, arms, models, tuned.grid, tuned.tune_seeds, Path(out_dir), tuned.wd_grid)
            if tuned else [])
    moved, met = _from_the_end(head or runs, out_dir, progress)
    if head:  # the test runs, once every arm's pick is known (the grid plans them only then too)
        chosen = tuned.chosen(arms, models)
        if all(tuning.setting_of(v) is not None for by_arm in chosen.values() for v in by_arm.values()):
            more, met = _from_the_end(tuning.test_runs(recipe, arms, models, list(seeds), chosen, Path(out_dir)),
                                      out_dir, progress)
            moved += more
    shutil.rmtree(Path(out_dir) / SCRATCH, ignore_errors=True)
    return {"moved": [str(p) for p in moved], "met": str(met) if met else None}


def _from_the_end(runs: list[GridRun], out_dir: Path, progress: bool) -> tuple[list[Path], Path | None]:
    """Train ``runs`` last first, each moved into place while its folder is still absent; finished
    runs are passed over (an arm added to a finished grid interleaves with them), and the first
    folder found unfinished is where the grid's process is: the walk stops there."""
    moved: list[Path] = []
    for run in reversed(runs):
        if run.out_dir.exists():
            if is_finished(run.out_dir, run.config):
                continue
            return moved, run.out_dir
        scratch = Path(out_dir) / SCRATCH / run.out_dir.relative_to(out_dir)
        _say(progress, f"backfill: {run.model} {run.arm.label} seed {run.seed} at lr {run.config.lr:g} -> {run.out_dir}")
        try:
            train(run.config, scratch, progress=progress)
        except TrainingDiverged:
            pass  # recorded in its folder as the grid would record it
        if run.out_dir.exists():  # the grid started it meanwhile: its copy stands
            _say(progress, f"backfill: {run.out_dir} was taken by the grid meanwhile; this copy is dropped")
            shutil.rmtree(scratch, ignore_errors=True)
            continue
        run.out_dir.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(scratch, run.out_dir)  # atomic; refused if the grid created the folder since the check
        except OSError:
            shutil.rmtree(scratch, ignore_errors=True)
            continue
        moved.append(run.out_dir)
    return moved, None
