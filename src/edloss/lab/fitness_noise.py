"""Chaotic vs Gaussian mutation along a fitness-noise axis: ``edloss ablate --evals-per-generation ...``.

The paper's claim is that chaotic mutation helps when fitness evaluations are noisy. Our fitness
is an average over the synthetic evaluations a generation sees, in blocks that each draw a class
count K; most of its noise comes from which K were drawn (measured: 4 blocks of 64 or of 256
evaluations are about equally noisy). So a level of N evaluations per generation is N / 256
blocks of 256 evaluations: 256, 1,024, 4,096 and 16,384 evaluations (1 to 64 blocks) span
~18x in the fitness's standard deviation. This module runs one ordinary ablation
(``edloss.lab.ablate``) per level into ``OUT/evals<N>/``, all with the same base config except
the training blocks, and the same held-out set (its size pinned to the base config's,
``heldout_evals_per_block``), so every level's numbers are on one scale. Per level it then compares the two arms, each at its
own best sigma (highest mean final held-out fitness over the level's seeds, chosen the same way
for both arms), and writes ``OUT/fitness_noise.json`` and ``OUT/fitness_noise.png``:

* the measured fitness noise: the standard deviation of one fixed individual's fitness over
  fresh synthetic batches of the level's size (the shipped default loss when the base config's
  network is its architecture, else a seeded initial individual);
* final held-out fitness and its two terms (value consistency, calibration), per arm;
* generations until the held-out fitness (running mean) reaches each ``--levels`` value;
* Mann-Whitney U (two-sided) of chaotic vs Gaussian per metric and level, Holm-adjusted across
  the levels, and a bootstrap 95% interval of the chaotic - Gaussian difference in means;
* the figure: that difference against the measured fitness noise, with its intervals.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from edloss.configs import to_dict, versions
from edloss.files import atomic_write_json
from edloss.lab import ablate as A
from edloss.lab import stats
from edloss.objectives.ranking import evaluate_population, sample_batches
from edloss.pretrain import PretrainConfig

DEFAULT_EVALS = (256, 1024, 4096, 16384)
BLOCK_EVALS = 256  # evaluations per synthetic block at every level; a level sets how many blocks
NOISE_REPEATS = 32  # fresh batches per level for the fitness-noise measurement
NOISE_SEED = 7_000_000  # far from the ES batch seeds, so the measurement sees batches no run trained on
METRICS = (("fitness", "final held-out fitness"), ("value", "final held-out value consistency"),
           ("calibration", "final held-out calibration term"))
SUMMARY_FILE = "fitness_noise.json"
FIGURE_FILE = "fitness_noise.png"


def check_levels(levels: list[int] | tuple[int, ...], base: PretrainConfig) -> tuple[int, ...]:
    """Every level a positive integer number of blocks of BLOCK_EVALS evaluations."""
    if not levels:
        raise ValueError("--evals-per-generation needs at least one level")
    for n in levels:
        if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
            raise ValueError(f"--evals-per-generation: every level must be a positive integer, got {n!r}")
        if n % BLOCK_EVALS:
            raise ValueError(f"--evals-per-generation {n}: a level is a whole number of synthetic blocks of "
                             f"{BLOCK_EVALS} evaluations, so a multiple of {BLOCK_EVALS} (e.g. 256 1024 4096 16384)")
    if len(set(levels)) != len(levels):
        raise ValueError(f"--evals-per-generation repeats a level: {list(levels)}")
    return tuple(sorted(levels))


def level_base(base: PretrainConfig, evals: int) -> PretrainConfig:
    """The base config at ``evals`` synthetic evaluations per generation; the held-out set stays the base's."""
    heldout = base.heldout_evals_per_block or 4 * base.objective.evals_per_block
    objective = replace(base.objective, blocks=evals // BLOCK_EVALS, evals_per_block=BLOCK_EVALS)
    return replace(base, objective=objective, heldout_evals_per_block=heldout)


def level_config(cfg: A.AblationConfig, evals: int) -> A.AblationConfig:
    return replace(cfg, base=level_base(cfg.base, evals), arms=A.ES_ARMS)


def level_dir(out: Path, evals: int) -> Path:
    return Path(out) / f"evals{evals}"


def probe_individual(base: PretrainConfig) -> tuple[torch.Tensor, str]:
    """One fixed individual whose fitness noise is measured: the shipped loss if it fits the config."""
    from edloss.loss import EDLLoss

    try:
        shipped = EDLLoss.pretrained()
        if shipped.net.config == base.lossnet:
            return shipped.net.flat().detach().float(), "the shipped default loss"
    except (OSError, ValueError):  # weights missing or unreadable: fall back to a seeded individual
        pass
    from edloss.pretrain import initial_state

    return initial_state(replace(base, es=replace(base.es, seed=0))).population[0].detach().float(), \
        "individual 0 of the seed-0 initial population"


def measure_fitness_noise(base: PretrainConfig, evals: int, repeats: int = NOISE_REPEATS) -> dict[str, Any]:
    """Mean and standard deviation of one individual's fitness over ``repeats`` fresh generations' batches."""
    cfg = level_base(base, evals)
    theta, which = probe_individual(cfg)
    values = []
    for r in range(repeats):
        gen = torch.Generator().manual_seed(NOISE_SEED + r)
        batches = sample_batches(cfg.objective, gen)
        values.append(float(evaluate_population(theta[None], cfg.lossnet, batches, cfg.objective)["fitness"][0]))
    described = stats.describe(values)
    return {"evals_per_generation": evals, "individual": which, "repeats": repeats,
            "mean": described["mean"], "std": described["std"]}


def best_sigma(groups: list[dict[str, Any]], arm: str) -> float | None:
    """The arm's sigma with the highest mean final held-out fitness (None when nothing finished)."""
    scored = [(g["final"]["fitness"]["mean"], g["sigma"]) for g in groups
              if g["arm"] == arm and g["final"]["fitness"]["mean"] is not None]
    return max(scored)[1] if scored else None


def _arm_values(group: dict[str, Any], key: str, budget: int) -> list[float]:
    """One metric per seed: a final held-out metric, or generations to a level (never = the budget)."""
    if key in dict(METRICS):
        return [r["final"].get(key) for r in group["runs"]]
    return A._censored(group["gens_to_level"][key]["values"], budget)


def compare_level(summary: dict[str, Any], cfg: A.AblationConfig) -> dict[str, Any]:
    """Chaotic vs Gaussian at each one's best sigma, for one level's ablation summary."""
    groups = summary["groups"]
    budget = cfg.base.es.generations
    chosen = {arm: best_sigma(groups, arm) for arm in A.ES_ARMS}
    cell = {arm: next((g for g in groups if g["arm"] == arm and g["sigma"] == s), None) for arm, s in chosen.items()}
    level_keys = [(f"heldout_{lv:g}", f"generations until held-out fitness (running mean) >= {lv:g} (never = {budget})")
                  for lv in cfg.levels]
    rows = []
    for key, description in list(METRICS) + level_keys:
        if cell["chaotic"] is None or cell["gaussian"] is None:
            rows.append({"metric": key, "description": description, "n": 0})
            continue
        a, b = _arm_values(cell["chaotic"], key, budget), _arm_values(cell["gaussian"], key, budget)
        rows.append({"metric": key, "description": description, "higher_is_better": key in dict(METRICS),
                     "chaotic": stats.describe(a), "gaussian": stats.describe(b),
                     "mann_whitney": stats.mann_whitney(a, b), "bootstrap": stats.bootstrap_mean_diff(a, b)})
    return {"sigma": chosen, "finished": summary["status"]["finished"], "planned": summary["status"]["planned"],
            "tests": rows}


def holm_across_levels(levels: list[dict[str, Any]]) -> None:
    """Holm-adjust each metric's Mann-Whitney p-values over the levels (in place)."""
    keys = {row["metric"] for level in levels for row in level["comparison"]["tests"]}
    for key in keys:
        rows = [row for level in levels for row in level["comparison"]["tests"] if row["metric"] == key and "mann_whitney" in row]
        for row, adjusted in zip(rows, stats.holm([row["mann_whitney"]["p"] for row in rows])):
            row["mann_whitney"]["p_holm"] = adjusted


def summarise(out: Path, cfg: A.AblationConfig, levels: tuple[int, ...], noise: dict[int, dict[str, Any]],
              command: str = "") -> dict[str, Any]:
    """Read every level's ablation, compare the arms and write ``OUT/fitness_noise.json`` (and the figure)."""
    rows = []
    for evals in levels:
        lcfg = level_config(cfg, evals)
        summary = A.read_ablation(level_dir(out, evals))
        if summary is None:
            rows.append({"evals_per_generation": evals, "noise": noise.get(evals), "comparison": None})
            continue
        rows.append({"evals_per_generation": evals, "noise": noise.get(evals), "dir": str(level_dir(out, evals)),
                     "comparison": compare_level(summary, lcfg)})
    holm_across_levels([r for r in rows if r["comparison"]])
    result = {"format": "edloss-fitness-noise", "version": 1, "command": command, "levels": list(levels),
              "config": to_dict(cfg), "description": __doc__.split("\n\n")[1], "rows": rows, "versions": versions()}
    atomic_write_json(Path(out) / SUMMARY_FILE, result)
    try:
        plot(result, Path(out) / FIGURE_FILE)
    except ModuleNotFoundError as err:  # pragma: no cover - the lab extra brings matplotlib
        print(f"note: {Path(out) / FIGURE_FILE} not drawn: {err}", file=sys.stderr)
    return result


def _test(row: dict[str, Any], metric: str) -> dict[str, Any] | None:
    if not row["comparison"]:
        return None
    return next((t for t in row["comparison"]["tests"] if t["metric"] == metric and "bootstrap" in t), None)


def plot(result: dict[str, Any], path: Path) -> None:
    """Chaotic - Gaussian difference in final held-out fitness (and its terms) against fitness noise."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(METRICS), figsize=(4.2 * len(METRICS), 3.6), squeeze=False)
    for ax, (metric, label) in zip(axes[0], METRICS):
        xs, ys, lo, hi = [], [], [], []
        for row in result["rows"]:
            test = _test(row, metric)
            if test is None or not row["noise"] or test["bootstrap"]["diff"] is None:
                continue
            xs.append(row["noise"]["std"])
            ys.append(test["bootstrap"]["diff"])
            lo.append(test["bootstrap"]["diff"] - test["bootstrap"]["lo"])
            hi.append(test["bootstrap"]["hi"] - test["bootstrap"]["diff"])
            ax.annotate(f"{row['evals_per_generation']}", (xs[-1], ys[-1]), textcoords="offset points", xytext=(4, 4), fontsize=7)
        ax.axhline(0.0, color="grey", lw=0.8)
        if xs:
            from matplotlib.ticker import NullFormatter

            ax.errorbar(xs, ys, yerr=[lo, hi], fmt="o-", capsize=3)
            ax.set_xscale("log")
            ax.set_xticks(xs, [f"{x:.3g}" for x in xs])  # the measured noise levels, not crowded log ticks
            ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("fitness noise (std of one individual's fitness)")
        ax.set_ylabel(f"chaotic - Gaussian, {label.replace('final held-out ', '')}")
        ax.set_title(label, fontsize=9)
    fig.suptitle("Chaotic minus Gaussian mutation vs fitness noise (labels: evaluations per generation; bootstrap 95%)", fontsize=9)
    fig.tight_layout()
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)


def format_table(result: dict[str, Any]) -> str:
    """One line per level: noise, chosen sigmas, final fitness per arm, p (Holm) and the difference."""
    lines = [f"{'evals/gen':>9} {'noise std':>9} {'sigma c/g':>11} {'chaotic':>16} {'gaussian':>16} {'diff [95% CI]':>28} "
             f"{'p':>7} {'p Holm':>7}"]
    for row in result["rows"]:
        noise = "-" if not row["noise"] else f"{row['noise']['std']:.4f}"
        test = _test(row, "fitness")
        if test is None:
            lines.append(f"{row['evals_per_generation']:>9} {noise:>9}  (no finished runs)")
            continue
        sig = row["comparison"]["sigma"]
        c, g, b, mw = test["chaotic"], test["gaussian"], test["bootstrap"], test["mann_whitney"]
        fmt = lambda d: "-" if d["mean"] is None else f"{d['mean']:.4f}±{d['std'] or 0:.4f}"  # noqa: E731
        diff = "-" if b["diff"] is None else f"{b['diff']:+.4f} [{b['lo']:+.4f}, {b['hi']:+.4f}]"
        p = lambda v: "-" if v is None else f"{v:.3g}"  # noqa: E731
        lines.append(f"{row['evals_per_generation']:>9} {noise:>9} {sig['chaotic']:>5g}/{sig['gaussian']:<5g} {fmt(c):>16} "
                     f"{fmt(g):>16} {diff:>28} {p(mw['p']):>7} {p(mw.get('p_holm')):>7}")
    lines.append("final held-out fitness, mean±std over seeds; each arm at its best sigma; Mann-Whitney U two-sided, "
                 "Holm across levels; diff = chaotic - Gaussian, bootstrap 95% interval")
    return "\n".join(lines)


def run(cfg: A.AblationConfig, levels: tuple[int, ...], out: Path, command: str = "", jobs: int = 1, threads: int = 1,
        progress: bool = True, summary_only: bool = False) -> dict[str, Any]:
    """Measure the noise of each level, run (or finish) each level's ablation, then summarise."""
    levels = check_levels(list(levels), cfg.base)
    out = Path(out)
    noise = {}
    for evals in levels:
        noise[evals] = measure_fitness_noise(cfg.base, evals)
        if progress:
            print(f"{evals} evaluations per generation: fitness std {noise[evals]['std']:.4f} "
                  f"(mean {noise[evals]['mean']:.4f}, {noise[evals]['individual']}, {NOISE_REPEATS} fresh batches)",
                  file=sys.stderr, flush=True)
    for evals in levels:
        if summary_only:
            continue
        if progress:
            print(f"--- level {evals} evaluations per generation -> {level_dir(out, evals)}", file=sys.stderr, flush=True)
        A.ablate(level_config(cfg, evals), level_dir(out, evals), command, jobs=jobs, threads=threads, progress=progress)
    return summarise(out, cfg, levels, noise, command)
