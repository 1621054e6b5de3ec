"""A grid's summary, read back from its run folders: ``summary.md``, ``summary.json``,
``val_accuracy.png`` (and, for tuned and long-tailed grids, ``lr_curves.png`` and
``per_class_accuracy.png``). Accuracies in percent; pairs are matched by seed."""

from __future__ import annotations

import json
import statistics
from dataclasses import asdict
from pathlib import Path
from typing import Any

from edloss.files import atomic_write_text, read_jsonl, save_figure
from edloss.lab import tuning
from edloss.lab.grid import Arm
from edloss.lab.losses import parse_loss_spec
from edloss.lab.recipe import TrainConfig
from edloss.lab.runfiles import EPOCHS, read_result
from edloss.lab.tuning import Tuned

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
                chosen = tuning.setting_of(tuned["picks"][model][arm.label])
                arm_dir = arm_dir / (tuning.lr_folder(*chosen) if chosen is not None else "undecided")
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
                if "wd_pick" in entry:
                    row.update(wd_pick=entry["wd_pick"], weight_decay=None if entry["wd_pick"] is None
                               else tuned["base_weight_decay"] * entry["wd_pick"])
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
        + ("cpu_amp: forward passes under bf16 autocast when on the CPU (the loss gets float32 logits). "
           if r.get("cpu_amp") else "")
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
    wd = ("" if not tuned or not tuned.get("wd_grid") else
          f", with its weight decay from the multipliers {', '.join(f'{w:g}' for w in tuned['wd_grid'])} "
          f"of {tuned['base_weight_decay']:g}")
    if tuned and tuned.get("carried_from"):
        lines += [f"**Tuned elsewhere**: every arm runs at the peak learning rate it picked, from the multipliers "
                  f"{', '.join(f'{m:g}' for m in tuned['grid'])} of {tuned['base_lr']:g}{wd}, on the validation of "
                  f"`{tuned['carried_from']}`, where the picks were made; no rate was chosen here.", ""]
    elif tuned:
        lines += [f"**Tuned**: every arm picked its peak learning rate from the multipliers "
                  f"{', '.join(f'{m:g}' for m in tuned['grid'])} of {tuned['base_lr']:g}{wd} on validation "
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
                    else f" {row['lr_pick']:g}× ({row['lr']:.3g})"
                    + (f", wd {row['wd_pick']:g}× ({row['weight_decay']:.3g})" if row.get("wd_pick") else "") + " |")
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
    tuning_summary = tuned.summary(recipe, arms, models) if tuned else None
    summary = collect(out_dir, recipe, arms, seeds, models, failures, versus, tuning_summary)
    return publish_summary(out_dir, recipe, summary, tuning_summary, plot)


def publish_summary(out_dir: Path, recipe: TrainConfig, summary: dict[str, Any], tuning_summary: dict[str, Any] | None,
                    plot: bool = True) -> dict[str, Any]:
    """Write a collected summary's files (``write_summary`` without reading the runs again)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if plot and tuning_summary:
        tuning.plot_lr_curves(tuning_summary, out_dir / "lr_curves.png")
    atomic_write_text(out_dir / "summary.md", render_markdown(summary))
    atomic_write_text(out_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    if plot:
        plot_val_accuracy(summary, out_dir, out_dir / "val_accuracy.png")
        if recipe.imbalance is not None:
            plot_per_class(summary, out_dir / "per_class_accuracy.png")
    return summary
