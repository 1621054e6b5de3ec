"""The students world: score a loss by the networks it trains, on synthetic tasks, with no real data.

The ranking objective (``objectives.ranking``) scores a loss by its *shape* on synthetic predictions;
it cannot see *training*: how fast a network fits, whether it memorises wrong labels, how it
treats rare classes. Here a loss is scored the way a user judges it: each candidate trains small
**student** networks on freshly drawn synthetic tasks, and its fitness is the students' clean
held-out accuracy minus that of students trained by cross-entropy on the same tasks.

Common random numbers make that difference sharp: every loss (each individual of the
population, and the CE reference) trains students from the same initial weights, on the same
tasks, in the same minibatch order. Only the loss differs.

Two task families:

* ``gaussian``: K Gaussian classes in ``dim`` dimensions (means with per-coordinate std
  ``separation * 3 / sqrt(dim)``, unit noise); students are ReLU MLPs (``depth`` x ``width``).
* ``images``: procedural 1 x 12 x 12 images, each class a random smooth (low-frequency Fourier)
  template, each sample the template randomly shifted, scaled and noised; students are small
  ReLU convnets (two 3x3 convolutions of ``width`` // 8 channels, stride 2, then a linear head).

Regimes the world can hold: symmetric or pair-flip label noise on the training labels (the test
labels stay clean), and class imbalance (the exponential profile of Cao et al. 2019: class c keeps
``n_max * imbalance^(-c / (K - 1))`` training points; the test set is balanced, so its accuracy is
the balanced accuracy).

Every student of a generation trains at once: the P x T students are stacked along a batch
dimension and every layer is one batched matmul (``baddbmm``; an image student's convolutions train as one
grouped convolution and are scored as matmuls over unfolded patches), and
the loss network of every individual is evaluated in the same population pass as in pretraining.
A student whose weights or loss stop being finite is frozen and scored 0 (worse than chance);
the fraction of such students is reported, and a run never stops for it.

This module is the world; the students objective that pretraining runs in it is
``objectives.students``.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from edloss.configs import check_fields, check_range
from edloss.lossnet import LossNetConfig
from edloss.penalties import anchor_gradient_norm, ce_anchor_norm, population_penalty
from edloss.student_tasks import IMAGE_SIZE, gaussian_inputs, image_inputs, noisy_labels
from edloss.world_lr import ce_scaled_gradient, check_lr_options, multipliers, select, student_rates, take_step

FAMILIES = ("gaussian", "images")
NOISE_KINDS = ("symmetric", "pair")
COMBINE = ("mean", "min")
ECE_BINS = 15

# (logits (G, M, K), labels (G, M)) -> (G,): each group's summed per-student mean loss, where a
# group is one loss (an individual of the population, or a reference loss) and its M = T * B rows
# are B minibatch rows of each of its T students.
GroupLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


# Named worlds (knobs changed from WorldConfig's defaults), the grid ``benchmarks/world_grid.py``
# checked against CIFAR; ``world.mix`` scores a loss in several (their mean, or the worst with ``combine = "min"``).
PRESETS: dict[str, dict[str, Any]] = {
    "gaussian-default": {"family": "gaussian"},  # underfits, as ResNet-20 does in 8 epochs
    "gaussian-long": {"family": "gaussian", "steps": 400},  # fits further: memorisation under noise shows
    "gaussian-small-data": {"family": "gaussian", "points_per_class": 100, "steps": 300},  # memorises its 1,000 points
    "gaussian-wide": {"family": "gaussian", "width": 128},
    "gaussian-hard": {"family": "gaussian", "separation": 0.5, "steps": 300},
    "gaussian-lr0.1": {"family": "gaussian", "lr": 0.1},
    "images-default": {"family": "images"},
    "images-long": {"family": "images", "steps": 400},
    # 100 classes, CIFAR-100's 8,000-image budget scaled down: 80 training and 20 test points a class.
    # Separation / width chosen so CE's students learn (benchmarks/world_k100.py): at the K = 10
    # defaults they sat at ~6% (chance 1%), where no loss's shape can show; now ~18% (gaussian, 9 s a
    # generation on the 2 cores) and ~13-16% (images, 2 tasks, 12.4 s with grouped convolutions), near
    # CIFAR-100's ~23% at its 5-epoch budget.
    "gaussian-k100": {"family": "gaussian", "classes": (100, 100), "points_per_class": 80, "test_points_per_class": 20,
                      "separation": 1.0},
    "images-k100": {"family": "images", "classes": (100, 100), "points_per_class": 80, "test_points_per_class": 20,
                    "width": 128, "lr": 0.1, "steps": 300, "tasks": 2},
}


@dataclass(frozen=True)
class WorldConfig:
    """The world's knobs: the tasks, the students, their training, the regime and the score."""

    family: str = "gaussian"
    tasks: int = 8  # tasks per generation; every individual trains one student on each
    classes: tuple[int, int] = (10, 10)  # K, log-uniform in this range, one K per generation
    points_per_class: int = 410  # training points of the largest class
    test_points_per_class: int = 100
    dim: int = 32  # gaussian: input dimension
    separation: float = 0.7  # gaussian: class means' spread in units of 3 / sqrt(dim); images: template contrast
    depth: int = 3  # hidden layers (gaussian MLP); the images convnet has two conv layers
    width: int = 64
    steps: int = 150
    batch_size: int = 64
    lr: float = 0.05
    momentum: float = 0.9
    # coupled L2 weight decay of the students' SGD (added to the gradient before momentum, as torch's SGD and the
    # lab's recipe do). 0: none, as every world before session 21. With it, a loss times g at rate m is the loss
    # at rate g m with weight decay / g, as on CIFAR, so a world can judge a gain by more than its step size
    weight_decay: float = 0.0
    label_noise: float = 0.0  # rate of wrong training labels
    noise_kind: str = "symmetric"  # "symmetric": any other class; "pair": class c -> c + 1 mod K
    imbalance: float = 1.0  # n_max / n_min of the exponential profile; 1 = balanced
    prior_aware: bool = False  # candidates are told the class prior: they score softmax(z + log pi), as EDLLoss(class_counts=...)
    nll_weight: float = 0.0  # fitness += nll_weight * (CE students' test NLL - this loss's)
    ece_weight: float = 0.0  # fitness += ece_weight * (CE students' ECE - this loss's)
    mix: tuple[str, ...] = ()  # PRESETS applied on top of these knobs; the fitness is their mean. () = this world alone
    select: tuple[str, ...] = ()  # PRESETS held out from the search: the held-out set that picks the exported loss. () = the mix
    combine: str = "mean"  # a mixture's fitness: "mean" over its worlds, or "min": the worst world's (a loss must help in every one)
    lr_grid: tuple[float, ...] = ()  # multipliers of lr: every loss, CE too, scored at its best on validation (edloss.world_lr). () = lr alone
    normalize_gradient: bool = False  # each student's logit gradient rescaled to CE's norm per minibatch (edloss.world_lr)

    def __post_init__(self) -> None:
        """Each knob is checked here, naming it and its valid range, before any student trains."""
        check_fields(self)
        if self.family not in FAMILIES:
            raise ValueError(f"world.family must be one of {FAMILIES}, got {self.family!r}")
        if self.combine not in COMBINE:
            raise ValueError(f"world.combine must be one of {COMBINE}, got {self.combine!r}")
        if self.noise_kind not in NOISE_KINDS:
            raise ValueError(f"world.noise_kind must be one of {NOISE_KINDS}, got {self.noise_kind!r}")
        lo, hi = self.classes
        if not 2 <= lo <= hi <= 1000:
            raise ValueError(f"world.classes must be a range (lo, hi) with 2 <= lo <= hi <= 1000, got {self.classes}")
        check_range("world.tasks", self.tasks, 1, 4096)
        check_range("world.points_per_class", self.points_per_class, 1, 100_000)
        check_range("world.test_points_per_class", self.test_points_per_class, 1, 100_000)
        check_range("world.dim", self.dim, 1, 4096)
        check_range("world.separation", self.separation, 0, 100, lo_open=True)
        check_range("world.depth", self.depth, 1, 8)
        check_range("world.width", self.width, 8, 1024)
        check_range("world.steps", self.steps, 1, 100_000)
        check_range("world.batch_size", self.batch_size, 1, 100_000)
        check_range("world.lr", self.lr, 0, 10, lo_open=True)
        check_lr_options(self)
        check_range("world.momentum", self.momentum, 0, 0.999)
        check_range("world.weight_decay", self.weight_decay, 0, 1)
        check_range("world.imbalance", self.imbalance, 1, 1e6)
        check_range("world.nll_weight", self.nll_weight, 0, 100)
        check_range("world.ece_weight", self.ece_weight, 0, 100)
        limit = 1 - 1 / hi if self.noise_kind == "symmetric" else 0.5
        check_range("world.label_noise", self.label_noise, 0, 1)
        if self.label_noise >= limit:
            raise ValueError(f"world.label_noise must be below {limit:.3g} for {self.noise_kind} noise at K = {hi} "
                             f"(at that rate a wrong label is as likely as the right one), got {self.label_noise}")
        if self.label_noise >= 1 - 1 / lo and self.noise_kind == "symmetric":
            raise ValueError(f"world.label_noise {self.label_noise} leaves no information at K = {lo}; raise world.classes' lower end "
                             f"above {math.floor(1 / (1 - self.label_noise))}")
        for name in self.mix + self.select:
            if name not in PRESETS:
                raise ValueError(f"world.mix / world.select: unknown world {name!r}; presets: {', '.join(PRESETS)}")
            replace(self, mix=(), select=(), **PRESETS[name])  # each world of the mixture is checked too
        if len(set(self.mix)) != len(self.mix) or len(set(self.select)) != len(self.select):
            raise ValueError(f"world.mix / world.select name a world twice: {self.mix}, {self.select}")
        shared = [name for name in self.select if name in (self.mix or ())]
        if shared:  # a selection world the search trained in is no held-out world
            raise ValueError(f"world.select {list(self.select)} shares {shared} with world.mix {list(self.mix)}: the worlds that "
                             "pick the exported loss must be held out from the search; name others in select")
        if min(self.class_counts(hi)) < 1:
            raise ValueError(f"world.imbalance {self.imbalance} leaves a class with no training point at "
                             f"points_per_class {self.points_per_class}; lower the imbalance or raise points_per_class")

    def class_counts(self, k: int) -> list[int]:
        """Training points per class: the exponential profile n_max * imbalance^(-c / (K - 1))."""
        return [int(self.points_per_class * self.imbalance ** (-c / (k - 1))) for c in range(k)]


@dataclass
class Tasks:
    """T tasks at one class count: training and clean test sets, initial student weights, and
    the minibatch order, all shared by every loss that trains on them."""

    x: torch.Tensor  # (T, N, ...) training inputs
    y: torch.Tensor  # (T, N) training labels as the students see them (noisy where the regime says)
    y_clean: torch.Tensor  # (T, N)
    x_test: torch.Tensor  # (T, N_test, ...)
    y_test: torch.Tensor  # (T, N_test), clean and balanced
    init: list[torch.Tensor]  # each (T, ...): initial student parameters per task
    order: torch.Tensor  # (steps, T, B) indices into the training set
    family: str
    x_val: torch.Tensor | None = None  # (T, N_test, ...) with world.lr_grid: where each loss's rate is chosen
    y_val: torch.Tensor | None = None  # (T, N_test), clean and balanced like the test set

    @property
    def num_classes(self) -> int:
        return int(self.y_test.max()) + 1 if self.y_test.numel() else 0

    @property
    def log_prior(self) -> torch.Tensor:
        """log pi_c of the training labels' classes (every task has the same counts)."""
        counts = torch.bincount(self.y_clean[0], minlength=self.num_classes).float()
        return (counts / counts.sum()).log()

    @property
    def count(self) -> int:
        return self.x.shape[0]


# ---------------------------------------------------------------------- tasks
def sample_tasks(cfg: WorldConfig, gen: torch.Generator, k: int | None = None) -> Tasks:
    """Fresh tasks from ``gen``: data, labels through the regime's channel, student inits, order."""
    if k is None:
        lo, hi = cfg.classes
        k = lo if lo == hi else int(round(math.exp(math.log(lo) + (math.log(hi) - math.log(lo)) * torch.rand((), generator=gen).item())))
    counts = cfg.class_counts(k)
    y = torch.cat([torch.full((n,), c) for c, n in enumerate(counts)]).expand(cfg.tasks, -1)
    y_test = torch.arange(k).repeat_interleave(cfg.test_points_per_class).expand(cfg.tasks, -1)
    draw = gaussian_inputs if cfg.family == "gaussian" else image_inputs
    x, x_test, more = draw(cfg, k, y, y_test, gen)
    noisy = noisy_labels(y, k, cfg, gen)
    init = _student_init(cfg, k, gen)
    order = torch.randint(0, y.shape[1], (cfg.steps, cfg.tasks, cfg.batch_size), generator=gen)
    val = (more(y_test), y_test.clone()) if cfg.lr_grid else (None, None)  # drawn last: the rest is the plain world's
    return Tasks(x, noisy, y.clone(), x_test, y_test.clone(), init, order, cfg.family, *val)


def _student_shapes(cfg: WorldConfig, k: int) -> list[tuple[int, int]]:
    """(fan_in, fan_out) of each weight matrix of one student, each followed by its (1, fan_out) bias.
    The convnet's 3x3 convolutions are matrices over unfolded patches, so every layer is a bmm."""
    if cfg.family == "gaussian":
        dims = [cfg.dim, *([cfg.width] * cfg.depth), k]
    else:
        c = max(cfg.width // 8, 2)
        return [shape for i, o in ((9, c), (9 * c, c), (9 * c, k)) for shape in ((i, o), (1, o))]
    return [shape for i, o in zip(dims[:-1], dims[1:]) for shape in ((i, o), (1, o))]


def _student_init(cfg: WorldConfig, k: int, gen: torch.Generator) -> list[torch.Tensor]:
    """He-normal weights and zero biases, one set per task (shared by every loss)."""
    params = []
    for fan_in, fan_out in _student_shapes(cfg, k):
        if fan_in == 1:
            params.append(torch.zeros(cfg.tasks, 1, fan_out))
        else:
            params.append(torch.randn(cfg.tasks, fan_in, fan_out, generator=gen) * math.sqrt(2.0 / fan_in))
    return params


# ---------------------------------------------------------------------- students
def _forward(params: list[torch.Tensor], x: torch.Tensor, family: str, grouped: bool = False) -> torch.Tensor:
    """Logits of S students on their own inputs: x (S, B, ...) -> (S, B, K). ``grouped``: the
    convolutions as one grouped conv2d (oneDNN), for training, where the student count is fixed."""
    if family == "images":
        x = (_grouped_conv_features if grouped else _conv_features)(params[:4], x)
        params = params[4:]
    h = x
    for i in range(0, len(params), 2):
        h = torch.baddbmm(params[i + 1], h, params[i])
        if i + 2 < len(params):
            h = torch.relu(h)
    return h


def _conv_features(params: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Two 3x3 stride-2 ReLU convolutions of S students as bmm over unfolded patches:
    x (S, B, 1, 12, 12) -> (S, B, 9 c), the flattened 3 x 3 x c maps."""
    s, b = x.shape[:2]
    h = x.reshape(s * b, 1, IMAGE_SIZE, IMAGE_SIZE)
    for w, bias in ((params[0], params[1]), (params[2], params[3])):
        side = h.shape[-1]
        patches = F.unfold(h, 3, padding=1, stride=2)  # (S B, C 9, L)
        n = patches.shape[-1]
        out = torch.relu(torch.baddbmm(bias, patches.transpose(1, 2).reshape(s, b * n, -1), w))  # (S, B L, c)
        side = (side + 1) // 2
        h = out.reshape(s, b, side, side, -1).permute(0, 1, 4, 2, 3).reshape(s * b, -1, side, side)
    return h.permute(0, 2, 3, 1).reshape(s, b, -1)


def _grouped_conv_features(params: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """``_conv_features`` as grouped convolutions, student s being group s: 2.5x faster forward and
    backward on the CPU at the K = 100 world's sizes. Equal to the bmm form up to float rounding,
    but oneDNN's rounding can depend on the number of groups, so scoring (which splits students into
    chunks) keeps the bmm form, whose numbers are the same at any chunk size."""
    s, b = x.shape[:2]
    h = x.reshape(s, b, IMAGE_SIZE, IMAGE_SIZE).transpose(0, 1)  # (B, S, H, W)
    for w, bias in ((params[0], params[1]), (params[2], params[3])):
        c_in, c_out = w.shape[1] // 9, w.shape[2]
        weight = w.reshape(s, c_in, 3, 3, c_out).permute(0, 4, 1, 2, 3).reshape(s * c_out, c_in, 3, 3)
        h = torch.relu(F.conv2d(h, weight, bias.reshape(-1), stride=2, padding=1, groups=s))  # (B, S c, side, side)
    side = h.shape[-1]
    return h.reshape(b, s, -1, side, side).permute(1, 0, 3, 4, 2).reshape(s, b, -1)


def _expand(t: torch.Tensor, groups: int) -> torch.Tensor:
    """(T, ...) -> (G * T, ...): the same tasks for every group (common random numbers)."""
    return t.unsqueeze(0).expand(groups, *t.shape).reshape(groups * t.shape[0], *t.shape[1:])


def train_students(tasks: Tasks, loss: GroupLoss, groups: int, cfg: WorldConfig, normalize: bool = True) -> dict[str, torch.Tensor]:
    """Train ``groups`` x T students (group g: loss group g on every task) and score them; with
    ``world.lr_grid`` each group's students train at every multiplier (``runs`` = G x L sets, the
    loss group g seeing its L x T students' rows) and the group keeps the multiplier of its best
    validation accuracy; with ``world.normalize_gradient`` (and ``normalize``: the CE reference
    passes False) each student's logit gradient is rescaled to CE's norm (``edloss.world_lr``).

    Returns per-student (G, T) clean test accuracy, NLL, ECE and a diverged flag."""
    t, grid = tasks.count, multipliers(cfg)
    runs, rate = groups * len(grid), student_rates(cfg, groups, tasks.count)
    params = [_expand(p, runs).clone().requires_grad_(True) for p in tasks.init]
    velocity = [torch.zeros_like(p) for p in params]
    diverged = torch.zeros(runs * t, dtype=torch.bool)
    x_all, rows = tasks.x, torch.arange(t)[:, None]
    for step in range(tasks.order.shape[0]):
        idx = tasks.order[step]  # (T, B)
        xb = x_all[rows, idx]  # (T, B, ...): each task's minibatch
        yb = tasks.y.gather(1, idx)
        with torch.enable_grad():
            logits = _forward(params, _expand(xb, runs), tasks.family, grouped=GROUPED_CONV)
            k = logits.shape[-1]
            total = loss(logits.reshape(groups, -1, k), _expand(yb, runs).reshape(groups, -1))
            if cfg.normalize_gradient and normalize:
                (gz,) = torch.autograd.grad(total.sum(), logits, retain_graph=True)
                gz = ce_scaled_gradient(gz, logits, _expand(yb, runs), cfg.batch_size)
                grads = torch.autograd.grad(logits, params, gz)
            else:
                grads = torch.autograd.grad(total.sum(), params)
        with torch.no_grad():
            bad = diverged.clone()
            for g in grads:
                bad |= ~torch.isfinite(g.reshape(g.shape[0], -1)).all(1)
            diverged = bad
            keep = (~diverged).float()
            for p, v, g in zip(params, velocity, grads):
                mask = keep.reshape(-1, *[1] * (g.dim() - 1))
                g = torch.nan_to_num(g, nan=0.0, posinf=0.0, neginf=0.0)
                if cfg.weight_decay:
                    g = g + cfg.weight_decay * torch.nan_to_num(p.detach(), nan=0.0, posinf=0.0, neginf=0.0)
                g = g * mask
                v.mul_(cfg.momentum).add_(g)
                take_step(p, v, rate)
    scores = _score(params, tasks, runs, diverged)
    if not cfg.lr_grid:
        return scores
    chosen = _score(params, tasks, runs, diverged, validation=True)["accuracy"]
    return select(scores, chosen, groups, grid)


GROUPED_CONV = True  # the image students train with grouped convolutions (``_grouped_conv_features``)
SCORE_CHUNK_BYTES = 2**30  # activations of one chunk of students on a whole test set (K = 100 would not fit at once)


def _score(params: list[torch.Tensor], tasks: Tasks, groups: int, diverged: torch.Tensor, validation: bool = False) -> dict[str, torch.Tensor]:
    """Per-student test metrics (or validation ones), in chunks of students so the test set's
    activations stay under ``SCORE_CHUNK_BYTES``; each student's matmuls are the same at any chunk
    size (bmm is per student), so the numbers are too."""
    x, y = (tasks.x_val, tasks.y_val) if validation else (tasks.x_test, tasks.y_test)
    n, t = y.shape[1], tasks.count
    per_task = max(1, SCORE_CHUNK_BYTES // max(1, t * n * _point_bytes(params, tasks.family)))
    chunks = [_score_chunk([p[i * t:(i + per_task) * t] for p in params], x, y, min(per_task, groups - i), tasks.family,
                           diverged[i * t:(i + per_task) * t]) for i in range(0, groups, per_task)]
    out = {key: torch.cat([c[key] for c in chunks]) for key in chunks[0]}
    return {key: value.reshape(groups, t) for key, value in out.items()}


def _point_bytes(params: list[torch.Tensor], family: str) -> int:
    """Bytes of one student's activations per test point, roughly: every layer's outputs in float32
    (the convnet's unfolded patches too), the logits again in float64."""
    widths = sum(p.shape[-1] for p in params[1::2]) + (IMAGE_SIZE * IMAGE_SIZE * 9 if family == "images" else 0)
    return 4 * widths + 16 * params[-1].shape[-1]


def _score_chunk(params: list[torch.Tensor], x: torch.Tensor, y: torch.Tensor, groups: int, family: str,
                 diverged: torch.Tensor) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        logits = _forward([p.detach() for p in params], _expand(x, groups), family)
        labels = _expand(y, groups)
        finite = torch.isfinite(logits).all(-1).all(-1)
        diverged = diverged | ~finite
        logits = torch.nan_to_num(logits, nan=0.0, posinf=0.0, neginf=0.0)
        logp = torch.log_softmax(logits.double(), -1)
        conf, pred = logp.exp().max(-1)
        correct = (pred == labels).double()
        acc = torch.where(diverged, 0.0, correct.mean(-1))
        nll = -logp.gather(-1, labels[..., None]).squeeze(-1).mean(-1)
        nll = torch.where(diverged, math.log(logits.shape[-1]) * 10, nll)
        ece = torch.where(diverged, 1.0, expected_calibration_error(conf, correct))
    return {"accuracy": acc, "nll": nll, "ece": ece, "diverged": diverged.double()}


def expected_calibration_error(conf: torch.Tensor, correct: torch.Tensor, bins: int = ECE_BINS) -> torch.Tensor:
    """ECE over equal-width confidence bins, per row: conf, correct (S, N) -> (S,)."""
    index = (conf * bins).long().clamp(max=bins - 1)
    n = conf.shape[-1]
    gap = torch.zeros(conf.shape[0], bins, dtype=conf.dtype).scatter_add_(1, index, conf - correct)
    return gap.abs().sum(-1) / n


# ---------------------------------------------------------------------- fitness
def score_against_reference(results: dict[str, torch.Tensor], reference: dict[str, torch.Tensor], cfg: WorldConfig) -> dict[str, torch.Tensor]:
    """Per-group metrics: mean over tasks of (this loss's students - CE's students on the same tasks)."""
    delta = (results["accuracy"] - reference["accuracy"]).mean(1)
    metrics = {
        "accuracy": results["accuracy"].mean(1),
        "accuracy_delta": delta,
        "nll": results["nll"].mean(1),
        "nll_delta": (reference["nll"] - results["nll"]).mean(1),
        "ece": results["ece"].mean(1),
        "ece_delta": (reference["ece"] - results["ece"]).mean(1),
        "diverged": results["diverged"].mean(1),
        "reference_accuracy": reference["accuracy"].mean(1).expand_as(delta),
    }
    metrics["fitness"] = delta + cfg.nll_weight * metrics["nll_delta"] + cfg.ece_weight * metrics["ece_delta"]
    if "lr_multiplier" in results:  # world.lr_grid: the rate each loss chose, and CE's
        metrics["lr_multiplier"] = results["lr_multiplier"].mean(1)
        metrics["reference_lr_multiplier"] = reference["lr_multiplier"].mean(1).expand_as(delta)
    return metrics


def cross_entropy_group_loss(logits: torch.Tensor, labels: torch.Tensor, batch_size: int) -> torch.Tensor:
    """CE as a GroupLoss: each group's rows summed, divided by the minibatch size (per-student means, summed)."""
    logp = torch.log_softmax(logits, -1)
    return -logp.gather(-1, labels[..., None]).squeeze(-1).sum(-1) / batch_size


def module_group_loss(module: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], tasks: int) -> GroupLoss:
    """A mean-reduced loss module (N, K), (N,) -> scalar as a one-group GroupLoss over T students."""

    def loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        k = logits.shape[-1]
        return (tasks * module(logits.reshape(-1, k), labels.reshape(-1))).reshape(1)

    return loss


def reference_results(tasks: Tasks, cfg: WorldConfig) -> dict[str, torch.Tensor]:
    """The cross-entropy students on these tasks: the reference every loss is scored against."""
    return train_students(tasks, lambda z, y: cross_entropy_group_loss(z, y, cfg.batch_size), 1, cfg, normalize=False)


def score_module(module: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], tasks: Tasks, cfg: WorldConfig,
                 reference: dict[str, torch.Tensor] | None = None) -> dict[str, float]:
    """World metrics of one loss module (the lab's registry losses, a shipped ``EDLLoss``)."""
    reference = reference if reference is not None else reference_results(tasks, cfg)
    results = train_students(tasks, module_group_loss(module, tasks.count * len(multipliers(cfg))), 1, cfg)
    return {name: float(value[0]) for name, value in score_against_reference(results, reference, cfg).items()}


def population_group_loss(theta: torch.Tensor, net: LossNetConfig, batch_size: int, log_prior: torch.Tensor | None = None) -> GroupLoss:
    """P loss networks (flat parameters theta (P, D)) as a GroupLoss, each anchored to CE's
    gradient at the uniform prediction as an exported ``EDLLoss`` is, so every candidate trains
    with the learning rate a user would give it. With ``log_prior`` each scores the logit-adjusted
    prediction softmax(z + log pi), as ``EDLLoss(class_counts=...)`` does."""
    penalty = population_penalty(theta, net)
    scale = ce_anchor_norm() / anchor_gradient_norm(penalty, theta.shape[0]).clamp_min(1e-12)

    def loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        z = logits if log_prior is None else logits + log_prior
        out = penalty(torch.log_softmax(z, -1), labels[..., None]).squeeze(-1)  # (P, M)
        return scale * out.sum(-1) / batch_size

    return loss


def evaluate_population(theta: torch.Tensor, net: LossNetConfig, tasks: Tasks, cfg: WorldConfig,
                        reference: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """World metrics of every individual of ``theta`` (P, D): each trains one student per task."""
    reference = reference if reference is not None else reference_results(tasks, cfg)
    log_prior = tasks.log_prior if cfg.prior_aware else None
    results = train_students(tasks, population_group_loss(theta, net, cfg.batch_size, log_prior), theta.shape[0], cfg)
    return score_against_reference(results, reference, cfg)


HELDOUT_TASKS = 32  # tasks of the fixed held-out set: the progress curves and the choice among elites


@dataclass
class Heldout:
    """Fixed tasks with their cross-entropy students, computed once per run."""

    tasks: Tasks
    reference: dict[str, torch.Tensor]


def heldout_tasks(cfg: WorldConfig, seed: int) -> Heldout:
    """The run's held-out world: ``HELDOUT_TASKS`` tasks at the lower class count, seeded apart from training."""
    world = replace(cfg, tasks=HELDOUT_TASKS)
    tasks = sample_tasks(world, torch.Generator().manual_seed(seed), k=cfg.classes[0])
    return Heldout(tasks, reference_results(tasks, world))


def evaluate_heldout(theta: torch.Tensor, net: LossNetConfig, heldout: Heldout, cfg: WorldConfig) -> dict[str, torch.Tensor]:
    """World metrics of each individual of ``theta`` on the held-out tasks."""
    return evaluate_population(theta, net, heldout.tasks, replace(cfg, tasks=HELDOUT_TASKS), heldout.reference)


# ---------------------------------------------------------------------- memory
MEMORY_HEADROOM = 0.8  # the share of the machine's available memory an estimate may claim


def memory_estimate(cfg: WorldConfig, groups: int) -> int:
    """Bytes at the peak of training and scoring ``groups`` x T students (x the multipliers of
    ``world.lr_grid``) in the world at its largest class count, roughly (within a factor of about
    2): the tasks' data (and validation set), each student's parameters four times (weights,
    velocity, gradient, a masked copy), the activations of a minibatch, and those of the test set
    for one chunk of students (``SCORE_CHUNK_BYTES``); image tasks also hold the draw's int64 index
    tensors. Knobs that each pass their own range check can together need tens of GB; this says so
    before a raw allocator error does."""
    k = cfg.classes[1]
    raw = cfg.dim if cfg.family == "gaussian" else IMAGE_SIZE * IMAGE_SIZE
    inputs = cfg.dim if cfg.family == "gaussian" else raw * 9  # images: unfolded 3x3 patches (scoring's form, the larger)
    n_train, n_test = sum(cfg.class_counts(k)), k * cfg.test_points_per_class * (2 if cfg.lr_grid else 1)
    shapes = _student_shapes(cfg, k)
    params = sum(i * o for i, o in shapes)
    hidden = sum(o for i, o in shapes if i > 1) + inputs
    tasks = max(cfg.tasks, HELDOUT_TASKS)
    students = groups * len(multipliers(cfg)) * tasks
    data = tasks * (n_train + n_test) * raw * (1 if cfg.family == "gaussian" else 5)
    state = 4 * students * params
    scored = min(students, max(tasks, SCORE_CHUNK_BYTES // max(1, 4 * cfg.test_points_per_class * k * (hidden + 4 * k))))
    activations = students * 3 * cfg.batch_size * hidden + scored * k * cfg.test_points_per_class * (hidden + 4 * k)
    return 4 * (data + state + activations)


def available_memory() -> int | None:
    """Bytes the machine can still give (MemAvailable), else its physical memory; None if unknown."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    with contextlib.suppress(OSError, ValueError, AttributeError):
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return None


def check_memory(cfg: WorldConfig, groups: int, available: int | None = None) -> None:
    """Refuse a world whose students cannot fit in memory, with the estimate and the knobs that
    drive it, before any folder is made or tensor allocated."""
    available = available_memory() if available is None else available
    if available is None:
        return
    need = max(memory_estimate(world, groups) for _, world in variants(cfg))
    if need > MEMORY_HEADROOM * available:
        raise ValueError(f"this students world needs about {need / 2**30:.1f} GiB ({groups} losses x {len(multipliers(cfg))} rates x {max(cfg.tasks, HELDOUT_TASKS)} "
                         f"tasks of students: width {cfg.width}, depth {cfg.depth}, dim {cfg.dim}, classes up to {cfg.classes[1]}), "
                         f"more than the {available / 2**30:.1f} GiB available; lower world.width, world.depth, world.dim, "
                         "world.tasks, world.classes, world.points_per_class, world.lr_grid or the population")


# ---------------------------------------------------------------------- mixtures of worlds
def variants(cfg: WorldConfig, names: tuple[str, ...] | None = None) -> list[tuple[str, WorldConfig]]:
    """The worlds a config stands for, named: each preset of ``names`` (default ``cfg.mix``)
    applied on top of ``cfg``'s knobs, or ``cfg`` alone when there are none."""
    names = cfg.mix if names is None else names
    if not names:
        return [("world", replace(cfg, mix=(), select=()))]
    return [(name, replace(cfg, mix=(), select=(), **PRESETS[name])) for name in names]


def sample_worlds(cfg: WorldConfig, gen: torch.Generator) -> list[Tasks]:
    """A generation's tasks in every world of the mixture, drawn in turn from one generator (for a
    single world exactly ``sample_tasks``)."""
    return [sample_tasks(world, gen) for _, world in variants(cfg)]


def combine_metrics(per_world: list[tuple[str, dict[str, torch.Tensor]]], combine: str = "mean") -> dict[str, torch.Tensor]:
    """Each metric averaged over the worlds, the fitness combined as ``combine`` says ("min": each
    individual's worst world); with several worlds, each one's fitness beside (``fitness@NAME``)."""
    if len(per_world) == 1:
        return per_world[0][1]
    out = {key: torch.stack([m[key] for _, m in per_world]).mean(0) for key in per_world[0][1]}
    if combine == "min":
        out["fitness"] = torch.stack([m["fitness"] for _, m in per_world]).min(0).values
    out.update({f"fitness@{name}": m["fitness"] for name, m in per_world})
    return out


def evaluate_worlds(theta: torch.Tensor, net: LossNetConfig, tasks: list[Tasks], cfg: WorldConfig) -> dict[str, torch.Tensor]:
    """``evaluate_population`` in every world of the mixture, combined as ``cfg.combine`` says."""
    return combine_metrics([(name, evaluate_population(theta, net, t, world)) for (name, world), t in zip(variants(cfg), tasks)], cfg.combine)


def heldout_worlds(cfg: WorldConfig, seed: int) -> list[tuple[str, WorldConfig, Heldout]]:
    """Held-out tasks in every selection world (``cfg.select``, else the mixture's), seeded apart."""
    return [(name, world, heldout_tasks(world, seed + i)) for i, (name, world) in enumerate(variants(cfg, cfg.select or cfg.mix))]


def evaluate_heldout_worlds(theta: torch.Tensor, net: LossNetConfig, heldout: list[tuple[str, WorldConfig, Heldout]],
                            combine: str = "mean") -> dict[str, torch.Tensor]:
    """World metrics of each individual on the held-out tasks of every selection world, combined as the search's."""
    return combine_metrics([(name, evaluate_heldout(theta, net, h, world)) for name, world, h in heldout], combine)
