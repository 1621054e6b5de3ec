"""The penalties a population of loss networks is scored with, shared by both pretraining
objectives (``objectives.ranking``, and the students world that ``objectives.students`` trains
in) and by the export, which anchors the chosen loss's scale to cross-entropy's.

A penalty maps log-probabilities and labels to losses: ``penalty(logp (B, I, K), labels
(B, I, L)) -> (P, I, L)``, with B = 1 broadcasting over the population. Beside the population's
own (``population_penalty``), the references a loss is measured against: cross-entropy, Poly-1,
MAE and forward-corrected CE.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from edloss.features import label_features
from edloss.lossnet import LossNetConfig, base_penalty, forward_corrected_nll, population_forward

# penalty(logp (B, I, K), labels (B, I, L)) -> (P, I, L); B = 1 broadcasts over the population
Penalty = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def population_penalty(theta: torch.Tensor, net: LossNetConfig) -> Penalty:
    """The penalty function of P loss networks given as flat parameter vectors (P, D)."""

    def penalty(logp: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        feats = label_features(logp, labels, net.features)  # (B, I, L, F)
        b, i, l, f = feats.shape
        flat = feats.reshape(b, i * l, f)
        out = population_forward(theta, flat if b == theta.shape[0] else flat[0], net).reshape(theta.shape[0], i, l)
        if net.has_base:  # the base (-log p_y, or forward-corrected) + the learned, bounded, monotone correction
            out = out + base_penalty(net, -cross_entropy_penalty(logp, labels), logp.shape[-1])
        return out

    return penalty


def cross_entropy_penalty(logp: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy as a reference penalty: proper, and perfect under the KL expectation ranking."""
    return -logp.gather(-1, labels.expand(*logp.shape[:-1], labels.shape[-1]))


def forward_corrected_penalty(eta: float) -> Penalty:
    """Forward-corrected CE as a reference penalty: proper for the noisy labels, the reference a
    noise-aware loss should match."""

    def penalty(logp: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return forward_corrected_nll(-cross_entropy_penalty(logp, labels), logp.shape[-1], eta)

    return penalty


def poly1_penalty(logp: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """CE + (1 - p_y) (Poly-1, eps = 1): the perfect ranker under the kl_disagreement severity at eps = 1."""
    return cross_entropy_penalty(logp, labels) + mae_penalty(logp, labels)


def mae_penalty(logp: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """1 - p_y (mean absolute error up to a factor 2): improper, a reference that should rank worse."""
    return 1 - logp.gather(-1, labels.expand(*logp.shape[:-1], labels.shape[-1])).exp()


def anchor_gradient_norm(penalty: Penalty, population: int, k: int = 10) -> torch.Tensor:
    """Norm of d(loss)/d(logits) at the uniform prediction, per individual (label 0 by symmetry)."""
    z = torch.zeros(population, 1, k, requires_grad=True)
    with torch.enable_grad():
        out = penalty(torch.log_softmax(z, -1), torch.zeros(1, 1, 1, dtype=torch.long))
        (grad,) = torch.autograd.grad(out.sum(), z)
    return grad.norm(dim=-1).reshape(population)


def ce_anchor_norm(k: int = 10) -> float:
    """Cross-entropy's gradient norm at the uniform prediction: |softmax - onehot| = sqrt((K-1)/K)."""
    return math.sqrt((k - 1) / k)
