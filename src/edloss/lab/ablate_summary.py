"""Reading an ablation back: generations to each level per run, the groups per (arm, sigma),
the paired tests between arms, the best losses copied out, ``ablation.json`` and its table."""

from __future__ import annotations

import itertools
import json
import math
import os
import shutil
from pathlib import Path
from typing import Any


from edloss.lab import stats
from edloss.configs import to_dict, versions
from edloss.files import atomic_write_json, read_jsonl

from edloss.lab.ablate_config import (ABLATION_FILE, DEFAULT_COMPARE_ARGS, FORMAT_NAME, FORMAT_VERSION, METRICS, WORLD_METRICS,
                                      AblationConfig, sigma_label)


# ---------------------------------------------------------------------- reading runs
def heldout_of(summary: dict[str, Any]) -> dict[str, Any]:
    """The held-out metrics the run was selected on: the students world's where it evolved there,
    else the ranking objective's (a students run records the ranking's beside, for reference)."""
    return summary.get("world_heldout") or summary["heldout"]


def is_finished(run_dir: Path) -> bool:
    return (run_dir / "summary.json").is_file() and (run_dir / "loss" / "loss.json").is_file()


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
