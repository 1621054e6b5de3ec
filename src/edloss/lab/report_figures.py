"""The report's figures: convergence, time to level, final metrics, per-run curves, the loss
heatmap beside reference losses, accuracy and reliability diagrams. Each returns its path, or
None when there is nothing to draw."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

from edloss.files import save_figure

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

HEATMAP_K = 10


# ---------------------------------------------------------------------- reference losses
def _ce_rows(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.float(), target, reduction="none")


def _focal_rows(gamma: float) -> LossFn:
    def fn(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logp = F.log_softmax(logits.float(), 1).gather(1, target[:, None]).squeeze(1)
        return -(1 - logp.exp()).pow(gamma) * logp
    return fn


def _label_smoothing_rows(eps: float) -> LossFn:
    def fn(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float(), target, reduction="none", label_smoothing=eps)
    return fn


def reference_losses() -> dict[str, LossFn]:
    return {"focal (γ=2)": _focal_rows(2.0), "label smoothing (ε=0.1)": _label_smoothing_rows(0.1)}


def _edl_rows(loss_dir: Path) -> LossFn:
    from edloss.loss import EDLLoss
    from edloss.pretrain import loss_rows

    return loss_rows(EDLLoss.from_file(loss_dir))


# ---------------------------------------------------------------------- figures
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    return save_figure(fig, path)


ARM_COLORS = {"chaotic": "tab:red", "gaussian": "tab:blue", "cmaes": "tab:green"}


def plot_convergence(groups: list[dict[str, Any]], path: Path, title: str = "") -> Path | None:
    """Held-out fitness (top) and smoothed training fitness (bottom) per generation, one column per sigma."""
    plt = _plt()
    groups = [g for g in groups if g.get("curves")]
    if not groups:
        return None
    sigmas = sorted({g["sigma"] for g in groups})
    fig, axes = plt.subplots(2, len(sigmas), figsize=(5.2 * len(sigmas), 7.5), squeeze=False, sharey="row")
    for col, sigma in enumerate(sigmas):
        for g in (g for g in groups if g["sigma"] == sigma):
            c, color = g["curves"], ARM_COLORS.get(g["arm"])
            for row, (xkey, ykey) in enumerate((("heldout_generation", "heldout_fitness_best"), ("generation", "train_fitness_best_smoothed"))):
                x, band = c[xkey], c[ykey]
                mean = [math.nan if v is None else v for v in band["mean"]]
                std = [math.nan if v is None else v for v in band["std"]]
                ax = axes[row][col]
                (line,) = ax.plot(x, mean, color=color, label=f"{g['arm']} (n={c['n']})")
                ax.fill_between(x, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)], color=line.get_color(), alpha=0.18)
        axes[0][col].set_title(f"σ = {sigma:g}" + (" (CMA-ES: σ₀ = σ/√2, adapted)" if any(g['arm'] == 'cmaes' and g['sigma'] == sigma for g in groups) else ""), fontsize=9)
        axes[1][col].set_xlabel("generation")
        for row in range(2):
            axes[row][col].grid(alpha=0.3)
            axes[row][col].legend(fontsize=8, loc="lower right")
    axes[0][0].set_ylabel("held-out fitness of the generation's best\n(mean ± std over seeds)")
    axes[1][0].set_ylabel("training fitness, best of population\n(running mean, mean ± std over seeds)")
    fig.suptitle(title or "convergence per arm", fontsize=11)
    fig.tight_layout()
    return _save(fig, path)


def plot_time_to_level(groups: list[dict[str, Any]], levels: list[float], heldout_smooth: int, budget: int, path: Path) -> Path | None:
    """Fraction of seeds whose smoothed held-out fitness has reached each level, against generation."""
    plt = _plt()
    groups = [g for g in groups if g["n"]]
    if not groups or not levels:
        return None
    sigmas = sorted({g["sigma"] for g in groups})
    fig, axes = plt.subplots(1, len(sigmas), figsize=(5.2 * len(sigmas), 3.8), squeeze=False, sharey=True)
    styles = ["-", "--", ":", "-."]
    for col, sigma in enumerate(sigmas):
        ax = axes[0][col]
        for g in (g for g in groups if g["sigma"] == sigma):
            for i, level in enumerate(levels):
                values = g["gens_to_level"][f"heldout_{level:g}"]["values"]
                xs = list(range(budget + 1))
                ys = [sum(v is not None and v <= x for v in values) / len(values) for x in xs]
                ax.step(xs, ys, where="post", color=ARM_COLORS.get(g["arm"]), linestyle=styles[i % len(styles)],
                        label=f"{g['arm']} ≥ {level:g}")
        ax.set(title=f"σ = {sigma:g}", xlabel="generation", ylim=(-0.02, 1.02))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left")
    axes[0][0].set_ylabel(f"fraction of seeds at level\n(held-out, running mean of {heldout_smooth})")
    fig.tight_layout()
    return _save(fig, path)


def plot_final_metrics(groups: list[dict[str, Any]], path: Path) -> Path | None:
    """Per-seed final held-out metrics of the exported losses: one dot per seed, mean as a bar."""
    plt = _plt()
    groups = [g for g in groups if g["n"]]
    if not groups:
        return None
    metrics = (("fitness", "held-out fitness"), ("gradient", "gradient consistency"), ("kendall_tau", "Kendall τ"))
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.0 * len(metrics), 4.0), squeeze=False)
    labels = [f"{g['arm']}\nσ={g['sigma']:g}" for g in groups]
    for ax, (key, name) in zip(axes[0], metrics):
        for x, g in enumerate(groups):
            values = [v for v in g["final"][key]["values"] if v is not None]
            color = ARM_COLORS.get(g["arm"])
            jitter = [x + 0.25 * ((i % 5) - 2) / 2.5 for i in range(len(values))]
            ax.scatter(jitter, values, s=14, color=color, alpha=0.75)
            if values:
                ax.hlines(sum(values) / len(values), x - 0.3, x + 0.3, color="black", linewidth=1.5)
        ax.set_xticks(range(len(groups)), labels, fontsize=7)
        ax.set_title(name)
        ax.grid(alpha=0.3, axis="y")
    fig.suptitle("exported loss of every seed on the held-out synthetic set (bar: mean)", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def plot_run_curve(rows: list[dict[str, Any]], path: Path, title: str) -> Path | None:
    """One pretraining run: training fitness (best, mean) and held-out fitness per generation."""
    if not rows:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4))
    gen = [r["generation"] for r in rows]
    ax.plot(gen, [r["fitness_best"] for r in rows], label="training, best of population", alpha=0.8)
    ax.plot(gen, [r["fitness_mean"] for r in rows], label="training, population mean", alpha=0.8)
    held = [(r["generation"], r["heldout_fitness_best"]) for r in rows if "heldout_fitness_best" in r]
    if held:
        ax.plot(*zip(*held), "o-", markersize=3, label="held-out, generation's best")
    ax.set(xlabel="generation", ylabel="fitness", title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def heatmap_grid(k: int = HEATMAP_K, n: int = 161) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Predictions at K classes over a grid of (p_y, r = max other probability), the rest spread evenly.

    Returns the grid axes, the logits of the valid points (r <= 1 - p_y and r at least the other
    classes' share) and the validity mask.
    """
    axis = torch.linspace(0.0025, 0.9975, n, dtype=torch.float64)
    py, r = torch.meshgrid(axis, axis, indexing="xy")  # x: p_y, y: r
    rest = 1 - py - r
    valid = (rest >= -1e-12) & (r >= rest / (k - 2) - 1e-12)
    other = (rest.clamp_min(0) / (k - 2)).clamp_min(1e-12)
    probs = torch.stack([py, r] + [other] * (k - 2), dim=-1)[valid]
    return axis, axis, probs.log().float(), valid


def plot_heatmap(losses: dict[str, LossFn], path: Path, k: int = HEATMAP_K) -> Path | None:
    """Loss over (p_y, largest other probability) at K classes: one panel per loss, each with its own log colour scale.

    Losses differ by additive constants and scales that do not matter for training, so every panel
    gets its own colour range (1st to 99th percentile) and six log-spaced contour lines: vertical
    contours mean the loss looks at p_y only; tilted ones mean a strong rival class changes it.
    """
    if not losses:
        return None
    plt = _plt()
    import numpy as np
    from matplotlib.colors import LogNorm

    xs, ys, logits, valid = heatmap_grid(k)
    target = torch.zeros(len(logits), dtype=torch.long)
    cols = min(3, len(losses))
    rows = -(-len(losses) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.9 * cols, 4.1 * rows), squeeze=False, layout="constrained")
    for ax, (name, fn) in zip(axes.flat, losses.items()):
        with torch.no_grad():
            values = fn(logits, target).double().clamp_min(1e-8)
        grid = np.full(tuple(valid.shape), np.nan)
        grid[valid.numpy()] = values.numpy()
        lo, hi = np.quantile(values.numpy(), [0.01, 0.99])
        hi = max(hi, lo * 1.0001)
        norm = LogNorm(vmin=lo, vmax=hi)
        mesh = ax.pcolormesh(xs.numpy(), ys.numpy(), grid, norm=norm, cmap="viridis", shading="auto")
        try:
            ax.contour(xs.numpy(), ys.numpy(), grid, levels=np.geomspace(lo, hi, 6)[1:-1], colors="white", linewidths=0.7)
        except (ValueError, TypeError):
            pass
        fig.colorbar(mesh, ax=ax, shrink=0.9)
        ax.set_title(name, fontsize=9)
        ax.set(xlabel="p_y (true class)", ylabel="max other probability", xlim=(0, 1), ylim=(0, 1))
    for ax in list(axes.flat)[len(losses):]:
        ax.axis("off")
    fig.suptitle(f"loss over (p_y, max other probability), K = {k}, the other classes share the rest evenly "
                 "(log colour scale per panel; white: log-spaced contours)", fontsize=10)
    return _save(fig, path)


def plot_accuracy(summary: dict[str, Any], path: Path) -> Path | None:
    """Test accuracy per loss: mean over finished seeds with ±std error bars, CE as a dashed line."""
    rows = [r for r in summary.get("rows", []) if r.get("test_mean") is not None]
    if not rows:
        return None
    plt = _plt()
    models = list(dict.fromkeys(r["model"] for r in rows))
    fig, axes = plt.subplots(1, len(models), figsize=(max(5.0, 1.1 * len(rows) / len(models) + 2) * len(models), 4.0), squeeze=False)
    for ax, model in zip(axes[0], models):
        mine = [r for r in rows if r["model"] == model]
        ax.bar(range(len(mine)), [r["test_mean"] for r in mine], yerr=[r["test_std"] or 0 for r in mine], capsize=3,
               color=[ARM_COLORS.get(r["label"], "tab:gray") for r in mine])
        ce = next((r for r in mine if r.get("delta_vs_ce") == 0 and r["label"] in ("ce", "cross_entropy")), None)
        if ce:
            ax.axhline(ce["test_mean"], color="black", linestyle="--", linewidth=1)
        low = min(r["test_mean"] - (r["test_std"] or 0) for r in mine)
        ax.set_ylim(max(0.0, low - 3), None)
        ax.set_xticks(range(len(mine)), [f"{r['label']}\n(n={r['n']})" for r in mine], fontsize=8)
        ax.set(title=model, ylabel="test accuracy (%)")
        ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    return _save(fig, path)


def plot_reliability(grid: Path, summary: dict[str, Any], path: Path) -> Path | None:
    """Reliability diagram per loss (test set, seeds pooled): accuracy against confidence per
    equal-width bin, the diagonal being perfect calibration; one curve per arm, CE dashed."""
    from edloss.lab.runfiles import read_result

    pooled: dict[str, list[list[float]]] = {}
    for run in summary.get("runs", []):
        if run.get("status") != "finished":
            continue
        result = read_result(grid / run["model"] / run["label"] / f"seed{run['seed']}") or {}  # compare's layout
        rel = result.get("test_reliability")
        if not rel:
            continue
        n, conf, acc = rel["count"], rel["confidence"], rel["accuracy"]
        sums = pooled.setdefault(run["label"], [[0.0] * len(n), [0.0] * len(n), [0.0] * len(n)])
        for i, k in enumerate(n):
            if k:
                sums[0][i] += k
                sums[1][i] += conf[i] * k
                sums[2][i] += acc[i] * k
    if not pooled:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.2, 5.0))
    ax.plot([0, 1], [0, 1], color="black", linestyle=":", linewidth=1, label="perfect calibration")
    for label, (n, conf, acc) in pooled.items():
        keep = [i for i, k in enumerate(n) if k >= 20]  # bins too thin to read are left out
        style = {"color": "black", "linestyle": "--"} if label in ("ce", "cross_entropy") else {"color": ARM_COLORS.get(label)}
        ax.plot([conf[i] / n[i] for i in keep], [acc[i] / n[i] for i in keep], marker="o", markersize=3, label=label, **style)
    ax.set(xlabel="confidence (top-class probability)", ylabel="accuracy", xlim=(0, 1), ylim=(0, 1),
           title="reliability on the test set (seeds pooled)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)
