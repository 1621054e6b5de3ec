"""Tuned comparisons: every arm picks its own learning rate from one shared grid, on validation.

A loss that pushes harder than cross-entropy acts in part as a larger step, so a comparison at
one shared learning rate credits the loss with what the step size did (and a baseline tuned by
its user would get for free). ``edloss compare --lr-grid 0.5,1,2`` gives every arm, CE included,
the same multipliers of the recipe's peak rate: each arm trains its tuning seeds at every
multiplier, picks the one of best mean final validation accuracy, and then trains its test
seeds at that pick. The test set plays no part in the choice.

Layout: ``OUT/<model>/<label>/lr<m>/seed<k>/``, each an ordinary ``edloss train`` run, so a
tuned grid resumes like any other. The tuning seed's run at the pick *is* that seed's test run
(same config, same folder): it is not trained twice. Ties in validation accuracy go to the
multiplier nearest 1 (the recipe's own rate), then to the smaller one.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from edloss import world_lr
from edloss.lab.grid import Arm, GridRun, check_grid
from edloss.lab.recipe import TrainConfig
from edloss.lab.runfiles import read_result


def parse_lr_grid(text: str | list[float] | tuple[float, ...]) -> list[float]:
    """``"0.5,1,2"`` -> [0.5, 1.0, 2.0], or a one-line ValueError before any work: a grid needs at
    least two distinct finite multipliers > 0 (one value is no choice: use ``--lr`` instead). The
    same rule as a world's ``lr_grid`` (``edloss.world_lr``), whose parser this is."""
    return list(world_lr.parse_lr_grid(text, "--lr-grid", rate="--lr"))


def lr_folder(multiplier: float) -> str:
    """The folder of one multiplier's runs: ``lr0.5``, ``lr1``, ``lr2``."""
    return f"lr{multiplier:g}"


def scaled_lr(recipe: TrainConfig, multiplier: float) -> float:
    """The peak rate at ``multiplier``, rounded to 12 significant digits (0.1 x 1.5 is 0.15, not
    0.15000000000000002, so a config written by hand matches)."""
    return float(f"{recipe.lr * multiplier:.12g}")


def _run(recipe: TrainConfig, model: str, arm: Arm, seed: int, multiplier: float, out_dir: Path) -> GridRun:
    config = replace(recipe, model=model, loss=arm.spec_for(seed), seed=seed, lr=scaled_lr(recipe, multiplier))
    return GridRun(model, arm, seed, config, out_dir / model / arm.label / lr_folder(multiplier) / f"seed{seed}")


def tuning_runs(recipe: TrainConfig, arms: list[Arm], models: list[str], grid: list[float],
                tune_seeds: list[int], out_dir: Path) -> list[GridRun]:
    """Every arm at every multiplier for the tuning seeds; seed outermost, then the multiplier,
    so a grid stopped early has every arm at the same multipliers."""
    return [_run(recipe, model, arm, seed, m, out_dir)
            for seed in tune_seeds for m in grid for model in models for arm in arms]


def validation_curve(out_dir: Path, model: str, arm: Arm, grid: list[float],
                     tune_seeds: list[int]) -> dict[float, float | None]:
    """Mean final validation accuracy (percent) per multiplier over the tuning seeds; None where a
    run is unfinished. A diverged run counts as 0: a rate that blows up is the worst choice."""
    curve: dict[float, float | None] = {}
    for m in grid:
        accs = []
        for seed in tune_seeds:
            result = read_result(out_dir / model / arm.label / lr_folder(m) / f"seed{seed}") or {}
            if result.get("status") == "diverged":
                accs.append(0.0)
            elif result.get("status") == "finished" and result.get("final_val_acc") is not None:
                accs.append(100 * result["final_val_acc"])
        curve[m] = sum(accs) / len(accs) if len(accs) == len(tune_seeds) else None
    return curve


def pick(curve: dict[float, float | None]) -> float | None:
    """The multiplier of best validation accuracy, None until every multiplier has its runs."""
    if not curve or any(v is None for v in curve.values()):
        return None
    best = max(curve.values())
    tied = [m for m, v in curve.items() if v == best]
    return min(tied, key=lambda m: (abs(math.log(m)), m))


def picks(out_dir: Path, arms: list[Arm], models: list[str], grid: list[float],
          tune_seeds: list[int]) -> dict[str, dict[str, dict[str, Any]]]:
    """``{model: {label: {"curve": {m: val}, "pick": m or None}}}`` from the runs on disk."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for model in models:
        for arm in arms:
            curve = validation_curve(out_dir, model, arm, grid, tune_seeds)
            out.setdefault(model, {})[arm.label] = {"curve": curve, "pick": pick(curve)}
    return out


def test_runs(recipe: TrainConfig, arms: list[Arm], models: list[str], seeds: list[int],
              chosen: dict[str, dict[str, dict[str, Any]]], out_dir: Path) -> list[GridRun]:
    """Each arm's test seeds at its pick (arms not yet decided have none); seed outermost."""
    return [_run(recipe, model, arm, seed, chosen[model][arm.label]["pick"], out_dir)
            for seed in seeds for model in models for arm in arms
            if chosen.get(model, {}).get(arm.label, {}).get("pick") is not None]


def at_edge(multiplier: float, grid: list[float]) -> bool:
    """A pick at the smallest or largest multiplier: its best rate may lie outside the grid."""
    return multiplier in (min(grid), max(grid))


def flatness(curve: dict[float, float | None]) -> float | None:
    """Best minus worst validation accuracy over the grid (points): how much a user loses by not
    sweeping the learning rate. None until the curve is complete."""
    values = list(curve.values())
    if not values or any(v is None for v in values):
        return None
    return max(values) - min(values)


def tuning_table(tuning: dict[str, Any], model: str) -> list[str]:
    """Markdown: each arm's validation accuracy at every multiplier, its pick and its spread."""
    grid = tuning["grid"]
    rows = tuning["picks"].get(model, {})
    where = (f"in `{tuning['carried_from']}`, where the picks were made" if tuning.get("carried_from")
             else f"mean over tuning seeds {', '.join(map(str, tuning['tune_seeds']))}")
    lines = [f"Learning-rate choice ({model}): final validation accuracy (%) at each multiplier of the peak "
             f"rate {tuning['base_lr']:g}, {where}; "
             "every arm gets the same grid and picks on validation (the test set plays no part). "
             "Spread: best − worst over the grid. A pick at the grid's edge (\"edge\") may not be that arm's best rate: "
             "widen the grid to know.", "",
             "| loss | " + " | ".join(f"{m:g}× ({tuning['base_lr'] * m:.3g})" for m in grid) + " | pick | spread |",
             "|---|" + "---|" * (len(grid) + 2)]
    for label, entry in rows.items():
        curve = {float(k): v for k, v in entry["curve"].items()}
        cells = ["—" if curve.get(m) is None else f"{curve[m]:.2f}" for m in grid]
        chosen = "—" if entry["pick"] is None else f"{entry['pick']:g}×" + (" (edge)" if at_edge(entry["pick"], grid) else "")
        spread = flatness(curve)
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {chosen} | {'—' if spread is None else f'{spread:.2f}'} |")
    return lines + [""]


def plot_lr_curves(tuning: dict[str, Any], path: Path) -> Path | None:
    """Validation accuracy against the multiplier (log axis), one line per arm and a panel per
    model: a flat line is a loss that needs no sweep. None when no curve has a point yet."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from edloss.files import save_figure

    models = list(tuning["picks"])
    if not any(v is not None for m in models for e in tuning["picks"][m].values() for v in e["curve"].values()):
        return None
    fig, axes = plt.subplots(1, len(models), figsize=(5.5 * len(models) + 2.5, 4.2), squeeze=False)
    for ax, model in zip(axes[0], models):
        for label, entry in tuning["picks"][model].items():
            points = sorted((float(m), v) for m, v in entry["curve"].items() if v is not None)
            if points:
                line, = ax.plot(*zip(*points), marker="o", label=label)
                if entry["pick"] is not None:
                    ax.plot([entry["pick"]], [entry["curve"][entry["pick"]]], marker="*", markersize=14,
                            color=line.get_color())
        ax.set_xscale("log")
        ax.set_xticks(tuning["grid"], [f"{m:g}×" for m in tuning["grid"]])
        ax.set(title=f"{model}: validation accuracy over the lr grid (★ pick)",
               xlabel=f"multiplier of lr {tuning['base_lr']:g}", ylabel="final validation accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
    fig.tight_layout()
    save_figure(fig, path, dpi=120)
    return path


@dataclass
class Tuned:
    """A tuned grid's settings: the multipliers, the seeds that choose, and where the runs live."""

    grid: list[float]
    tune_seeds: list[int]
    out_dir: Path

    def chosen(self, arms: list[Arm], models: list[str]) -> dict[str, dict[str, dict[str, Any]]]:
        return picks(Path(self.out_dir), arms, models, self.grid, self.tune_seeds)

    def summary(self, recipe: TrainConfig, arms: list[Arm], models: list[str]) -> dict[str, Any]:
        chosen = self.chosen(arms, models)
        for entries in chosen.values():
            for entry in entries.values():
                entry["spread"] = flatness(entry["curve"])
        return {"grid": self.grid, "tune_seeds": self.tune_seeds, "base_lr": recipe.lr, "picks": chosen}


@dataclass
class Carried(Tuned):
    """Picks made in another tuned grid (a calibration regime), used as they are: no tuning runs
    here, so a held-out grid reports at the rates chosen elsewhere ("choose on calibration, report
    held-out") and an hour-a-run regime does not pay for its own sweep."""

    source: Path = Path()
    fixed: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)  # {model: {label: {curve, pick}}}

    def chosen(self, arms: list[Arm], models: list[str]) -> dict[str, dict[str, dict[str, Any]]]:
        return {model: {arm.label: dict(self.fixed.get(model, {}).get(arm.label, {"curve": {}, "pick": None}))
                        for arm in arms} for model in models}

    def summary(self, recipe: TrainConfig, arms: list[Arm], models: list[str]) -> dict[str, Any]:
        return {**super().summary(recipe, arms, models), "carried_from": str(self.source)}

    def require_picks(self, arms: list[Arm], models: list[str], remedy: str) -> None:
        """Refuse, naming each ``model/label`` and ``remedy``, when the source grid has no pick for an arm."""
        missing = [f"{model}/{arm.label}" for model in models for arm in arms
                   if self.fixed.get(model, {}).get(arm.label, {}).get("pick") is None]
        if missing:
            raise ValueError(f"{self.source} has no learning-rate pick for {', '.join(missing)}: {remedy}")


def carried(source: Path, out_dir: Path, arms: list[Arm] | None = None, base_lr: float | None = None) -> Carried:
    """The picks of the tuned grid whose ``summary.json`` is ``source`` (its folder or the file), or a
    one-line error when it is missing, was not tuned, ran an arm's label with another loss, or had
    another base learning rate (a multiplier means nothing without the rate it multiplies)."""
    path = source / "summary.json" if source.is_dir() or not source.suffix else source
    if not path.is_file():
        raise ValueError(f"no tuned grid to take the learning-rate picks from: {path} is missing "
                         "(run that grid first)")
    try:
        summary = json.loads(path.read_text())
        tuning = summary["tuning"]
        if not isinstance(tuning, dict):
            raise TypeError("its tuning section is not a mapping")
        specs = {a["label"]: a["spec"] for a in summary.get("arms", [])}
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"{path} holds no tuned grid's picks ({type(exc).__name__}: {exc}); "
                         "picks come from a grid run with --lr-grid") from None
    if base_lr is not None and tuning.get("base_lr") is not None and not math.isclose(tuning["base_lr"], base_lr):
        raise ValueError(f"{path} picked multipliers of lr {tuning['base_lr']:g}, this grid's lr is {base_lr:g}: "
                         "carry picks only between grids of the same base rate")
    for arm in arms or []:
        if arm.label in specs and specs[arm.label] != arm.spec:
            raise ValueError(f"arm {arm.label!r} is {arm.spec!r} here but {specs[arm.label]!r} in {path}: "
                             "its pick belongs to another loss (give it another label)")
    return from_tuning(tuning, out_dir, source=path.parent)


def from_tuning(tuning: dict[str, Any], out_dir: Path, source: Path | None = None) -> Carried:
    """A carried grid from a summary's ``tuning`` section (its picks as recorded, so rewriting a
    summary does not read the source again, which may have moved or changed since)."""
    try:
        fixed = {model: {label: {"curve": {float(m): v for m, v in entry["curve"].items()}, "pick": entry["pick"]}
                         for label, entry in entries.items()} for model, entries in tuning["picks"].items()}
        grid = [float(m) for m in tuning["grid"]]
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"no tuned grid's picks ({type(exc).__name__}: {exc}); "
                         "picks come from a grid run with --lr-grid") from None
    return Carried(grid, [], Path(out_dir), source=Path(source or tuning.get("carried_from", "")), fixed=fixed)


def settings(lr_grid: list[float] | None, tune_seeds: list[int] | None, seeds: list[int], out_dir: Path) -> Tuned | None:
    """The tuned grid's settings, or None without ``lr_grid``; tuning seeds without a grid are refused."""
    if lr_grid is None:
        if tune_seeds:
            raise ValueError("--tune-seeds needs --lr-grid (the seeds that pick each arm's learning rate)")
        return None
    grid = parse_lr_grid(lr_grid)
    chosen = list(tune_seeds) if tune_seeds else seeds[:1]
    check_grid(chosen, ["model"])
    return Tuned(grid, chosen, Path(out_dir))
