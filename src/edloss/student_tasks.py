"""The students world's task distributions: where a task's inputs and the labels its students see
come from (``edloss.students.sample_tasks`` draws them in this order from one generator).

* Gaussian: K classes in ``dim`` dimensions, unit noise around means of per-coordinate std
  ``separation * 3 / sqrt(dim)``.
* Images: 1 x ``IMAGE_SIZE`` x ``IMAGE_SIZE`` procedural images, each class a smooth random template.
* Labels: the regime's channel, symmetric or pair-flip label noise at ``label_noise``.

Each input draw returns the training inputs, the test inputs and the draw itself, which gives more
points of the same classes (the validation set of ``world.lr_grid``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

IMAGE_SIZE = 12

Draw = Callable[[torch.Tensor], torch.Tensor]


def gaussian_inputs(cfg: Any, k: int, y: torch.Tensor, y_test: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, Draw]:
    means = torch.randn(cfg.tasks, k, cfg.dim, generator=gen) * (cfg.separation * 3 / math.sqrt(cfg.dim))

    def draw(labels: torch.Tensor) -> torch.Tensor:
        centre = means.gather(1, labels[..., None].expand(-1, -1, cfg.dim))
        return centre + torch.randn(centre.shape, generator=gen)

    return draw(y), draw(y_test), draw


def image_inputs(cfg: Any, k: int, y: torch.Tensor, y_test: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, Draw]:
    """Class templates: random smooth patterns, sums of plane waves cos(2 pi (a u + b v) / S + phase)
    with |a|, |b| < 4 and amplitudes falling with frequency, at unit pixel std; a sample is its
    template circularly shifted by up to 2 pixels each way, scaled in contrast, plus unit noise."""
    s, f = IMAGE_SIZE, 4
    a = torch.arange(f).float()[:, None].expand(f, 2 * f - 1)
    b = torch.arange(-f + 1, f).float()[None, :].expand(f, 2 * f - 1)
    u = torch.arange(s).float()
    theta = 2 * math.pi * (a[..., None, None] * u[:, None] + b[..., None, None] * u[None, :]) / s  # (F, 2F-1, S, S)
    amp = torch.randn(cfg.tasks, k, f, 2 * f - 1, generator=gen) / (1 + a.abs() + b.abs())
    phase = torch.rand(cfg.tasks, k, f, 2 * f - 1, generator=gen) * (2 * math.pi)
    templates = torch.einsum("tkab,abuv->tkuv", amp * phase.cos(), theta.cos()) - torch.einsum("tkab,abuv->tkuv", amp * phase.sin(), theta.sin())
    templates = (templates - templates.mean((-1, -2), keepdim=True)) / templates.std((-1, -2), keepdim=True).clamp_min(1e-6)
    rows = torch.arange(s)

    def draw(labels: torch.Tensor) -> torch.Tensor:
        t, n = labels.shape
        du, dv = torch.randint(-2, 3, (2, t, n, 1, 1), generator=gen)
        task = torch.arange(t)[:, None, None, None]
        img = templates[task, labels[..., None, None], (rows[:, None] + du) % s, (rows[None, :] + dv) % s]
        contrast = 0.5 + torch.rand(t, n, 1, 1, generator=gen)
        img = cfg.separation * contrast * img + torch.randn(img.shape, generator=gen)
        return img.unsqueeze(2)  # (T, N, 1, S, S)

    return draw(y), draw(y_test), draw  # draw: more points of the same classes (the validation set)


def noisy_labels(y: torch.Tensor, k: int, cfg: Any, gen: torch.Generator) -> torch.Tensor:
    """The labels the students see: each flipped with probability ``label_noise`` to another
    class, uniformly (symmetric) or to the next one (pair-flip)."""
    if cfg.label_noise == 0:
        return y.clone()
    flip = torch.rand(y.shape, generator=gen) < cfg.label_noise
    if cfg.noise_kind == "pair":
        other = (y + 1) % k
    else:
        other = (y + torch.randint(1, k, y.shape, generator=gen)) % k
    return torch.where(flip, other, y)
