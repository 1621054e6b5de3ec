"""Tuned comparisons: every arm picks its own learning rate from one shared grid, on validation.

A loss that pushes harder than cross-entropy acts in part as a larger step, so a comparison at
one shared learning rate credits the loss with what the step size did (and a baseline tuned by
its user would get for free). ``edloss compare --lr-grid 0.5,1,2`` gives every arm, CE included,
the same multipliers of the recipe's peak rate: each arm trains its tuning seeds at every
multiplier, picks the one of best mean final validation accuracy, and then trains its test
seeds at that pick. The test set plays no part in the choice.

``--wd-grid 1,2`` (with ``--lr-grid``) tunes the weight decay too: every arm trains at every
(learning-rate, weight-decay) pair of the two grids and picks the pair of best validation accuracy.
Weight decay moves accuracy about as much as the loss does (doubling it gained CE 0.5–0.6 points
in every regime of our matrix), so a comparison that tunes only the rate still favours whichever
arm happens to suit the recipe's decay.

Layout: ``OUT/<model>/<label>/lr<m>/seed<k>/`` (``lr<m>-wd<w>/`` at a weight-decay multiplier
other than 1, so a grid without one keeps its folders), each an ordinary ``edloss train`` run, so a
tuned grid resumes like any other. The tuning seed's run at the pick *is* that seed's test run
(same config, same folder): it is not trained twice. Ties in validation accuracy go to the
multiplier nearest 1 (the recipe's own rate), then to the smaller one; with a weight-decay grid,
to the pair nearest (1, 1) on a log scale, then the smaller rate, then the smaller decay.
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


def parse_wd_grid(text: str | list[float] | tuple[float, ...]) -> list[float]:
    """``"1,2"`` -> [1.0, 2.0], multipliers of ``--weight-decay``, by the learning-rate grid's rules."""
    return list(world_lr.parse_lr_grid(text, "--wd-grid", rate="--weight-decay"))


def lr_folder(multiplier: float, wd: float = 1.0) -> str:
    """The folder of one setting's runs: ``lr0.5``, ``lr1``, ``lr2``; ``lr1-wd2`` at twice the
    recipe's weight decay (at 1x the suffix is left out, so grids without a weight-decay grid and
    the records they made keep their folders)."""
    return f"lr{multiplier:g}" + ("" if wd == 1 else f"-wd{wd:g}")


def scaled_lr(recipe: TrainConfig, multiplier: float) -> float:
    """The peak rate at ``multiplier``, rounded to 12 significant digits (0.1 x 1.5 is 0.15, not
    0.15000000000000002, so a config written by hand matches)."""
    return float(f"{recipe.lr * multiplier:.12g}")


def scaled_wd(recipe: TrainConfig, multiplier: float) -> float:
    """The weight decay at ``multiplier``, rounded as ``scaled_lr`` rounds the rate."""
    return float(f"{recipe.weight_decay * multiplier:.12g}")


def _run(recipe: TrainConfig, model: str, arm: Arm, seed: int, multiplier: float, out_dir: Path,
         wd: float = 1.0) -> GridRun:
    config = replace(recipe, model=model, loss=arm.spec_for(seed), seed=seed, lr=scaled_lr(recipe, multiplier))
    if wd != 1:
        config = replace(config, weight_decay=scaled_wd(recipe, wd))
    return GridRun(model, arm, seed, config, out_dir / model / arm.label / lr_folder(multiplier, wd) / f"seed{seed}")


def tuning_runs(recipe: TrainConfig, arms: list[Arm], models: list[str], grid: list[float],
                tune_seeds: list[int], out_dir: Path, wd_grid: list[float] | None = None) -> list[GridRun]:
    """Every arm at every multiplier (and weight decay) for the tuning seeds; seed outermost, then
    the multiplier, so a grid stopped early has every arm at the same multipliers."""
    return [_run(recipe, model, arm, seed, m, out_dir, w)
            for seed in tune_seeds for m in grid for w in (wd_grid or [1.0]) for model in models for arm in arms]


def validation_curve(out_dir: Path, model: str, arm: Arm, grid: list[float],
                     tune_seeds: list[int], wd: float = 1.0) -> dict[float, float | None]:
    """Mean final validation accuracy (percent) per multiplier over the tuning seeds, at weight-decay
    multiplier ``wd``; None where a run is unfinished. A diverged run counts as 0: a rate that blows
    up is the worst choice."""
    curve: dict[float, float | None] = {}
    for m in grid:
        accs = []
        for seed in tune_seeds:
            result = read_result(out_dir / model / arm.label / lr_folder(m, wd) / f"seed{seed}") or {}
            if result.get("status") == "diverged":
                accs.append(0.0)
            elif result.get("status") == "finished" and result.get("final_val_acc") is not None:
                accs.append(100 * result["final_val_acc"])
        curve[m] = sum(accs) / len(accs) if len(accs) == len(tune_seeds) else None
    return curve


def pick(curve: dict[float, float | None]) -> float | None:
    """The multiplier of best validation accuracy, None until every multiplier has its runs (the
    rate-only case of ``pick_setting``: one weight decay, 1x)."""
    setting = pick_setting({1.0: curve})
    return None if setting is None else setting[0]


def pick_setting(curves: dict[float, dict[float, float | None]]) -> tuple[float, float] | None:
    """The (rate, weight-decay) multipliers of best validation accuracy over ``{wd: {lr: val}}``,
    None until every pair has its runs; ties go to the pair nearest (1, 1) on a log scale."""
    cells = {(m, w): v for w, curve in curves.items() for m, v in curve.items()}
    if not cells or any(v is None for v in cells.values()):
        return None
    best = max(cells.values())
    tied = [key for key, v in cells.items() if v == best]
    return min(tied, key=lambda k: (abs(math.log(k[0])) + abs(math.log(k[1])), k[0], k[1]))


def _entry(curves: dict[float, dict[float, float | None]], with_wd: bool) -> dict[str, Any]:
    """One arm's record: its curve over the rates (at its picked decay, or at the decay nearest 1
    while undecided) and its pick; with a weight-decay grid also every decay's curve and its pick."""
    chosen = pick_setting(curves)
    wd = chosen[1] if chosen else min(curves, key=lambda w: (abs(math.log(w)), w))
    entry: dict[str, Any] = {"curve": curves[wd], "pick": chosen[0] if chosen else None}
    if with_wd:
        entry.update(wd_pick=chosen[1] if chosen else None, curves=curves)
    return entry


def picks(out_dir: Path, arms: list[Arm], models: list[str], grid: list[float],
          tune_seeds: list[int], wd_grid: list[float] | None = None) -> dict[str, dict[str, dict[str, Any]]]:
    """``{model: {label: {"curve": {m: val}, "pick": m or None}}}`` from the runs on disk; with a
    weight-decay grid each entry also holds ``curves`` ({w: {m: val}}) and ``wd_pick``."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for model in models:
        for arm in arms:
            curves = {w: validation_curve(out_dir, model, arm, grid, tune_seeds, w) for w in (wd_grid or [1.0])}
            out.setdefault(model, {})[arm.label] = _entry(curves, wd_grid is not None)
    return out


def setting_of(entry: dict[str, Any]) -> tuple[float, float] | None:
    """An arm's picked (rate, weight-decay) multipliers, None while undecided (decay 1 without a grid)."""
    if entry.get("pick") is None or ("wd_pick" in entry and entry["wd_pick"] is None):
        return None
    return entry["pick"], entry.get("wd_pick") or 1.0


def test_runs(recipe: TrainConfig, arms: list[Arm], models: list[str], seeds: list[int],
              chosen: dict[str, dict[str, dict[str, Any]]], out_dir: Path) -> list[GridRun]:
    """Each arm's test seeds at its pick (arms not yet decided have none); seed outermost."""
    runs = []
    for seed in seeds:
        for model in models:
            for arm in arms:
                setting = setting_of(chosen.get(model, {}).get(arm.label, {}))
                if setting is not None:
                    runs.append(_run(recipe, model, arm, seed, setting[0], out_dir, setting[1]))
    return runs


def at_edge(multiplier: float, grid: list[float]) -> bool:
    """A pick at the smallest or largest multiplier: its best rate may lie outside the grid."""
    return multiplier in (min(grid), max(grid))


def flatness(curve: dict[float, float | None], curves: dict[float, dict[float, float | None]] | None = None
             ) -> float | None:
    """Best minus worst validation accuracy over the grid (points): how much a user loses by not
    sweeping the learning rate (and, given ``curves``, the weight decay). None until complete."""
    values = [v for c in curves.values() for v in c.values()] if curves else list(curve.values())
    if not values or any(v is None for v in values):
        return None
    return max(values) - min(values)


def tuning_table(tuning: dict[str, Any], model: str) -> list[str]:
    """Markdown: each arm's validation accuracy at every multiplier, its pick and its spread (with
    a weight-decay grid: a row per arm and decay, the pick and spread on the picked decay's row)."""
    grid = tuning["grid"]
    wd_grid = tuning.get("wd_grid")
    rows = tuning["picks"].get(model, {})
    where = (f"in `{tuning['carried_from']}`, where the picks were made" if tuning.get("carried_from")
             else f"mean over tuning seeds {', '.join(map(str, tuning['tune_seeds']))}")
    what = (f" and of the weight decay {tuning['base_weight_decay']:g} (a row per multiplier)" if wd_grid else "")
    lines = [f"Learning-rate choice ({model}): final validation accuracy (%) at each multiplier of the peak "
             f"rate {tuning['base_lr']:g}{what}, {where}; "
             "every arm gets the same grid and picks on validation (the test set plays no part). "
             "Spread: best − worst over the grid. A pick at the grid's edge (\"edge\") may not be that arm's best rate: "
             "widen the grid to know.", "",
             "| loss | " + " | ".join(f"{m:g}× ({tuning['base_lr'] * m:.3g})" for m in grid) + " | pick | spread |",
             "|---|" + "---|" * (len(grid) + 2)]
    for label, entry in rows.items():
        curves = _float_curves(entry) if entry.get("curves") or not wd_grid else {float(w): {} for w in wd_grid}
        for w, curve in curves.items():
            picked = entry["pick"] is not None and (not wd_grid or entry.get("wd_pick") == w)
            cells = ["—" if curve.get(m) is None else f"{curve[m]:.2f}" for m in grid]
            edges = (["edge"] if picked and at_edge(entry["pick"], grid) else []) + (
                ["wd edge"] if wd_grid and picked and at_edge(w, wd_grid) else [])
            chosen = "—" if not picked else f"{entry['pick']:g}×" + (f" ({', '.join(edges)})" if edges else "")
            spread = flatness(curve, curves if wd_grid else None)
            name = f"{label}, wd {w:g}×" if wd_grid else label
            show = picked or not wd_grid or (entry["pick"] is None and w == next(iter(curves)))
            lines.append(f"| {name} | " + " | ".join(cells) + f" | {chosen if show else ''} | "
                         f"{('—' if spread is None else f'{spread:.2f}') if show else ''} |")
    return lines + [""]


def _float_curves(entry: dict[str, Any]) -> dict[float, dict[float, float | None]]:
    """``{wd: {lr: val}}`` with float keys (JSON made them strings); one decay, 1, without a grid."""
    raw = entry.get("curves") or {1.0: entry["curve"]}
    return {float(w): {float(m): v for m, v in curve.items()} for w, curve in raw.items()}


def plot_lr_curves(tuning: dict[str, Any], path: Path) -> Path | None:
    """Validation accuracy against the multiplier (log axis), one line per arm and a panel per
    model: a flat line is a loss that needs no sweep. None when no curve has a point yet."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from edloss.files import save_figure

    models = list(tuning["picks"])
    if not any(v is not None for m in models for e in tuning["picks"][m].values()
               for c in _float_curves(e).values() for v in c.values()):
        return None
    fig, axes = plt.subplots(1, len(models), figsize=(5.5 * len(models) + 2.5, 4.2), squeeze=False)
    for ax, model in zip(axes[0], models):
        for label, entry in tuning["picks"][model].items():
            curves = _float_curves(entry)
            color = None
            for style, (w, curve) in zip(["-", "--", ":", "-."] * len(curves), curves.items()):
                points = sorted((m, v) for m, v in curve.items() if v is not None)
                if not points:
                    continue
                name = f"{label}, wd {w:g}×" if "curves" in entry else label
                line, = ax.plot(*zip(*points), marker="o", linestyle=style, label=name, color=color)
                color = line.get_color()  # an arm's decays share its colour
                if entry["pick"] is not None and entry.get("wd_pick", w) == w:
                    ax.plot([entry["pick"]], [curve[entry["pick"]]], marker="*", markersize=14, color=color)
        ax.set_xscale("log")
        ax.minorticks_off()  # only the grid's multipliers are labelled (not 6x10^-1 between them)
        ax.set_xticks(tuning["grid"], [f"{m:g}×" for m in tuning["grid"]])
        grid_name = "lr × wd grid" if tuning.get("wd_grid") else "lr grid"
        ax.set(title=f"{model}: validation accuracy over the {grid_name} (★ pick)",
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
    wd_grid: list[float] | None = None  # multipliers of the recipe's weight decay; None: not tuned

    def chosen(self, arms: list[Arm], models: list[str]) -> dict[str, dict[str, dict[str, Any]]]:
        return picks(Path(self.out_dir), arms, models, self.grid, self.tune_seeds, self.wd_grid)

    def runs(self, recipe: TrainConfig, arms: list[Arm], models: list[str], seeds: list[int]) -> list[GridRun]:
        """The tuning runs, then the test runs of the arms whose pick is known (carried: those only)."""
        return (tuning_runs(recipe, arms, models, self.grid, self.tune_seeds, Path(self.out_dir), self.wd_grid)
                + test_runs(recipe, arms, models, seeds, self.chosen(arms, models), Path(self.out_dir)))

    def summary(self, recipe: TrainConfig, arms: list[Arm], models: list[str]) -> dict[str, Any]:
        chosen = self.chosen(arms, models)
        for entries in chosen.values():
            for entry in entries.values():
                entry["spread"] = flatness(entry["curve"], _float_curves(entry) if "curves" in entry else None)
        out = {"grid": self.grid, "tune_seeds": self.tune_seeds, "base_lr": recipe.lr, "picks": chosen}
        if self.wd_grid is not None:
            out.update(wd_grid=self.wd_grid, base_weight_decay=recipe.weight_decay)
        return out


@dataclass
class Carried(Tuned):
    """Picks made in another tuned grid (a calibration regime), used as they are: no tuning runs
    here, so a held-out grid reports at the rates chosen elsewhere ("choose on calibration, report
    held-out") and an hour-a-run regime does not pay for its own sweep."""

    source: Path = Path()
    fixed: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)  # {model: {label: {curve, pick}}}

    def chosen(self, arms: list[Arm], models: list[str]) -> dict[str, dict[str, dict[str, Any]]]:
        undecided = {"curve": {}, "pick": None, **({"wd_pick": None, "curves": {}} if self.wd_grid else {})}
        return {model: {arm.label: dict(self.fixed.get(model, {}).get(arm.label, undecided))
                        for arm in arms} for model in models}

    def summary(self, recipe: TrainConfig, arms: list[Arm], models: list[str]) -> dict[str, Any]:
        return {**super().summary(recipe, arms, models), "carried_from": str(self.source)}

    def require_picks(self, arms: list[Arm], models: list[str], remedy: str) -> None:
        """Refuse, naming each ``model/label`` and ``remedy``, when the source grid has no pick for an arm."""
        missing = [f"{model}/{arm.label}" for model in models for arm in arms
                   if self.fixed.get(model, {}).get(arm.label, {}).get("pick") is None]
        if missing:
            raise ValueError(f"{self.source} has no learning-rate pick for {', '.join(missing)}: {remedy}")


def carried(source: Path, out_dir: Path, arms: list[Arm] | None = None, base_lr: float | None = None,
            base_weight_decay: float | None = None) -> Carried:
    """The picks of the tuned grid whose ``summary.json`` is ``source`` (its folder or the file), or a
    one-line error when it is missing, was not tuned, ran an arm's label with another loss, or had
    another base learning rate or (when it tuned it) weight decay: a multiplier means nothing
    without the value it multiplies."""
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
    base_wd = tuning.get("base_weight_decay", (summary.get("recipe") or {}).get("weight_decay"))
    if base_weight_decay is not None and base_wd is not None and not math.isclose(base_wd, base_weight_decay):
        raise ValueError(f"{path} picked its rates at weight decay {base_wd:g}, this grid's is "
                         f"{base_weight_decay:g}: the best rate depends on the decay, so carry picks only between "
                         "grids of the same base weight decay")
    for arm in arms or []:
        if arm.label in specs and specs[arm.label] != arm.spec:
            raise ValueError(f"arm {arm.label!r} is {arm.spec!r} here but {specs[arm.label]!r} in {path}: "
                             "its pick belongs to another loss (give it another label)")
    return from_tuning(tuning, out_dir, source=path.parent)


def from_tuning(tuning: dict[str, Any], out_dir: Path, source: Path | None = None) -> Carried:
    """A carried grid from a summary's ``tuning`` section (its picks as recorded, so rewriting a
    summary does not read the source again, which may have moved or changed since)."""
    try:
        wd_grid = None if tuning.get("wd_grid") is None else [float(w) for w in tuning["wd_grid"]]
        fixed = {model: {label: _recorded(entry, wd_grid is not None) for label, entry in entries.items()}
                 for model, entries in tuning["picks"].items()}
        grid = [float(m) for m in tuning["grid"]]
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"no tuned grid's picks ({type(exc).__name__}: {exc}); "
                         "picks come from a grid run with --lr-grid") from None
    return Carried(grid, [], Path(out_dir), wd_grid, source=Path(source or tuning.get("carried_from", "")),
                   fixed=fixed)


def _recorded(entry: dict[str, Any], with_wd: bool) -> dict[str, Any]:
    """An arm's entry as a summary recorded it, with float keys again."""
    out = {"curve": {float(m): v for m, v in entry["curve"].items()}, "pick": entry["pick"]}
    if with_wd:
        out.update(wd_pick=entry["wd_pick"], curves=_float_curves(entry))
    return out


def settings(lr_grid: list[float] | None, tune_seeds: list[int] | None, seeds: list[int], out_dir: Path,
             wd_grid: list[float] | None = None, weight_decay: float | None = None) -> Tuned | None:
    """The tuned grid's settings, or None without ``lr_grid``; tuning seeds or a weight-decay grid
    without a learning-rate grid are refused, and so is a weight-decay grid over a decay of 0."""
    if lr_grid is None:
        if tune_seeds:
            raise ValueError("--tune-seeds needs --lr-grid (the seeds that pick each arm's learning rate)")
        if wd_grid is not None:
            raise ValueError("--wd-grid needs --lr-grid: the best weight decay depends on the rate, so the two "
                             "are tuned together (e.g. --lr-grid 0.5,1,2 --wd-grid 1,2)")
        return None
    grid = parse_lr_grid(lr_grid)
    wds = None if wd_grid is None else parse_wd_grid(wd_grid)
    if wds is not None and weight_decay == 0:
        raise ValueError("--wd-grid multiplies --weight-decay, which is 0 here: every multiplier would give 0; "
                         "set --weight-decay > 0")
    chosen = list(tune_seeds) if tune_seeds else seeds[:1]
    check_grid(chosen, ["model"])
    return Tuned(grid, chosen, Path(out_dir), wds)
