"""The shape of a loss: its value and logit-gradient norm against p_y, as a table and a PNG.

A prediction with true-class probability p_y is placed at ``logits = log p`` with the remaining
mass spread evenly over the other K - 1 classes, so one curve per loss summarises its shape.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from edloss.files import save_figure

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (logits, target) -> per-row loss

TABLE_POINTS = (1e-6, 1e-3, 0.01, 0.1, 0.3, 0.5, 0.7, 0.9, 0.99, 0.999)


def logits_for(p_y: torch.Tensor, k: int) -> torch.Tensor:
    """Logits whose softmax gives p_y to class 0 and (1 - p_y)/(K - 1) to each other class."""
    p_y = p_y.double().clamp(1e-12, 1 - 1e-12)
    rest = torch.log1p(-p_y) - math.log(k - 1)
    logits = rest[:, None].expand(-1, k).clone()
    logits[:, 0] = torch.log(p_y)
    return logits.float()


def cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, target, reduction="none")


def loss_profile(loss_fn: LossFn, p_y: torch.Tensor, k: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """Loss value and |d loss / d logits| at each p_y (true class 0)."""
    z = logits_for(p_y, k).requires_grad_(True)
    target = torch.zeros(len(p_y), dtype=torch.long)
    with torch.enable_grad():
        values = loss_fn(z, target)
        (grad,) = torch.autograd.grad(values.sum(), z)
    return values.detach(), grad.norm(dim=1)


def shape_table(loss_fn: LossFn, k: int = 10, points: tuple[float, ...] = TABLE_POINTS) -> list[dict[str, float]]:
    """Rows of p_y, loss, grad norm for the loss and for cross-entropy, for a printed summary."""
    p = torch.tensor(points, dtype=torch.float64)
    value, grad = loss_profile(loss_fn, p, k)
    ce_value, ce_grad = loss_profile(cross_entropy, p, k)
    return [
        {"p_y": float(p[i]), "loss": float(value[i]), "grad_norm": float(grad[i]), "ce_loss": float(ce_value[i]), "ce_grad_norm": float(ce_grad[i])}
        for i in range(len(points))
    ]


RATIO_BINS = (0.0, 0.01, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0)


def gradient_ratio_table(loss_fn: LossFn, k: int = 10, truths: int = 1000, seed: int = 0) -> dict[str, object]:
    """How a loss's logit gradient compares with cross-entropy's on realistic synthetic predictions.

    The one-curve profile above hides how a loss treats whole populations of predictions. Here
    predictions around ``truths`` synthetic truths q (``synthetic.sample_expectation``, 8 per truth by
    default; labels drawn from q)
    are binned by p_y; per bin, the ratio of mean gradient norms (loss / CE), and overall the mean
    cosine between the two gradients. On CIFAR-10 the ratios at the tails tracked accuracy (see
    docs/EXPERIMENTS.md): more push than CE on hopeless predictions (p_y < 0.01) hurt.
    """
    from edloss.synthetic import ExpectationConfig, sample_expectation

    gen = torch.Generator().manual_seed(seed)
    log_q, logits, truth = sample_expectation(truths, k, ExpectationConfig(), gen)
    target = torch.multinomial(log_q.exp()[truth], 1, generator=gen).squeeze(1)
    z = logits.float().requires_grad_(True)
    with torch.enable_grad():
        grad, ce_grad = (torch.autograd.grad(fn(z, target).sum(), z)[0] for fn in (loss_fn, cross_entropy))
    p_y = z.detach().softmax(1).gather(1, target[:, None]).squeeze(1)
    norm, ce_norm = grad.norm(dim=1), ce_grad.norm(dim=1)
    bins = []
    for lo, hi in zip(RATIO_BINS[:-1], RATIO_BINS[1:]):
        inside = (p_y >= lo) & ((p_y < hi) if hi < 1 else (p_y <= hi))
        ratio = float(norm[inside].mean() / ce_norm[inside].mean()) if inside.any() else float("nan")
        bins.append({"p_y_from": lo, "p_y_to": hi, "count": int(inside.sum()), "ratio": ratio})
    cosine = float(F.cosine_similarity(grad, ce_grad, dim=1, eps=1e-12).mean())
    return {"k": k, "bins": bins, "cosine": cosine}


def format_gradient_ratio_table(table: dict[str, object]) -> str:
    bins = table["bins"]
    head = " ".join(f"{b['p_y_from']:g}-{b['p_y_to']:g}".rjust(9) for b in bins)
    ratios = " ".join(f"{b['ratio']:9.2f}" for b in bins)
    return f"{'p_y bin':>9} {head}\n{'ratio':>9} {ratios}\nmean cosine with CE's gradient: {table['cosine']:.3f}"


def format_shape_table(rows: list[dict[str, float]]) -> str:
    lines = [f"{'p_y':>8} {'loss':>10} {'|grad|':>10} {'CE loss':>10} {'CE |grad|':>10}"]
    for r in rows:
        lines.append(f"{r['p_y']:>8.3g} {r['loss']:>10.4g} {r['grad_norm']:>10.4g} {r['ce_loss']:>10.4g} {r['ce_grad_norm']:>10.4g}")
    return "\n".join(lines)


def logit_axis(ax) -> None:
    """A logit-scaled p axis with plain tick labels at both tails (matplotlib's own overlap)."""
    from matplotlib.ticker import FixedLocator, NullLocator

    ticks = [1e-6, 1e-4, 1e-2, 0.5, 1 - 1e-2, 1 - 1e-4]
    ax.set_xscale("logit")
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticklabels(["1e-6", "1e-4", "0.01", "0.5", "0.99", "0.9999"])


def plot_shapes(losses: dict[str, LossFn], path: Path, k: int = 10, title: str = "") -> Path:
    """PNG: loss (left) and |d loss/d logits| (right) against p_y, every loss beside cross-entropy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    p = torch.logspace(-6, math.log10(1 - 1e-4), 300, dtype=torch.float64)
    fig, (ax_value, ax_grad) = plt.subplots(1, 2, figsize=(11, 4.2))
    for name, fn in {"cross-entropy": cross_entropy, **losses}.items():
        value, grad = loss_profile(fn, p, k)
        style = {"color": "black", "linestyle": "--"} if name == "cross-entropy" else {}
        ax_value.plot(p, value, label=name, **style)
        ax_grad.plot(p, grad, label=name, **style)
    for ax, ylabel in ((ax_value, "loss"), (ax_grad, "|d loss / d logits|")):
        logit_axis(ax)
        ax.set_xlabel("p_y (probability of the true class)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    ax_value.set_yscale("symlog", linthresh=1.0)
    ax_value.set_ylim(bottom=0)
    ax_value.legend()
    fig.suptitle(title or f"loss shape at K = {k} (remaining mass spread evenly)")
    fig.tight_layout()
    return save_figure(fig, path)
