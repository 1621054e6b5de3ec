"""The fused eager path of ``EDLLoss``: few passes over the logits, the gradient in closed form.

Cross-entropy is a couple of fused kernels. An autograd graph of the loss network's features and
MLP is ~100 small ops whose dispatch, not arithmetic, dominates a call (the network has 353
parameters). Here the loss and its logit gradient are computed together in ~40 ops:

* (M, C) passes: one ``softmax``, one ``max`` for the best wrong class (the target is masked in
  place and restored: no copy), one multiply and two ``scatter_add`` for the gradient (the older
  losses' entropy feature adds a ``log_softmax`` and a product);
* every feature is a linear combination of a few per-row scalars, the *basis* b =
  (floor(log p_y), floor(log p_c), log p_y, log p_c, p_y[, H(p), rank]) with c the best wrong
  class, so the feature map is folded into the first layer's weights: h1 = b @ (A W1^T) + b1';
* each basis scalar's logit gradient is a multiple of (e_y - p) or (e_c - p) (the entropy's is
  -p (log p + H) / log K), so the MLP's hand-written backward reduces to two or three
  coefficients per row, and the (M, C) gradient to p * c_p + c_y e_y + c_c e_c.

The folded weights are cached per dtype and device and rebuilt when the network's parameters
change. The closed-form gradient is differentiable once, with respect to the logits; under
``create_graph=True`` (second-order gradients) the backward differentiates the autograd path
instead. ``features`` defines the same features for autograd, and a property test checks that
both paths agree.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from edloss.features import FEATURE_SCALE, LOG_FLOOR, rank
from edloss.lossnet import LossNet, activation_backward, base_penalty, base_slope

BASIS = ("floor_y", "floor_c", "logp_y", "logp_c", "p_y", "entropy", "rank")
# feature -> ({basis: coefficient}, coefficient of log K): each feature is linear in the basis
FEATURE_BASIS: dict[str, tuple[dict[str, float], float]] = {
    "log_kpy": ({"floor_y": 1 / FEATURE_SCALE}, 1 / FEATURE_SCALE),
    "margin": ({"floor_y": 1 / FEATURE_SCALE, "floor_c": -1 / FEATURE_SCALE}, 0.0),
    "logit_margin": ({"logp_y": 1 / FEATURE_SCALE, "logp_c": -1 / FEATURE_SCALE}, 0.0),
    "log_krival": ({"floor_c": 1 / FEATURE_SCALE}, 1 / FEATURE_SCALE),
    "p_y": ({"p_y": 1.0}, 0.0),
    "entropy": ({"entropy": 1.0}, 0.0),
    "rank": ({"rank": 1.0}, 0.0),
}
LOGP_CLIP = -1e6  # log p_c below this is clipped: every bounded activation is saturated there


@dataclass
class Plan:
    """The network folded for the fused path, for one dtype and device."""

    key: tuple
    basis: tuple[str, ...]  # the basis columns this network uses, in order
    first_weight: torch.Tensor  # (nb, H1): A @ W1^T
    first_bias: torch.Tensor  # (H1,): b1 (+ log K * first_logk, added per call)
    first_logk: torch.Tensor  # (H1,): W1 @ (log-K offsets of the features)
    layers: list[tuple[torch.Tensor, torch.Tensor]]  # the remaining (W, b), as computed with
    first_w: torch.Tensor  # (H1, nb): first_weight transposed, for the backward
    to_coefficients: torch.Tensor  # (nb, 2): basis gradient -> (a_y, a_c)


def plan_for(net: LossNet, dtype: torch.dtype, device: torch.device) -> Plan:
    """The folded network, rebuilt only when the dtype, device or a parameter changed (a parameter's
    version counter moves on every in-place update; its data pointer on every move)."""
    params = net.__dict__.get("_fused_params")
    if params is None:  # net.parameters() walks the module tree: measured ~90 us a call, so list them once
        params = net.__dict__["_fused_params"] = list(net.parameters())
    key = (dtype, device, *[p._version for p in params], *[p.data_ptr() for p in params])
    cached = net.__dict__.get("_fused_plan")
    if cached is not None and cached.key == key:
        return cached
    layers = net.effective(dtype)
    features = net.config.features
    used = {b for f in features for b in FEATURE_BASIS[f][0]}
    basis = tuple(b for b in BASIS[:5]) + tuple(b for b in BASIS[5:] if b in used)
    a = torch.zeros(len(basis), len(features), dtype=torch.float64)
    logk = torch.zeros(len(features), dtype=torch.float64)
    for j, f in enumerate(features):
        for b, coefficient in FEATURE_BASIS[f][0].items():
            a[basis.index(b), j] = coefficient
        logk[j] = FEATURE_BASIS[f][1]
    with torch.no_grad():
        w1, b1 = layers[0]
        a = a.to(dtype=dtype, device=device)
        first_weight = (a @ w1.t()).contiguous()
        select = torch.zeros(len(basis), 2, dtype=dtype, device=device)
        for b, column in (("floor_y", 0), ("logp_y", 0), ("p_y", 0), ("floor_c", 1), ("logp_c", 1)):
            select[basis.index(b), column] = 1.0
        plan = Plan(key, basis, first_weight, b1.detach().clone(), w1 @ logk.to(dtype=dtype, device=device),
                    [(w.detach(), b.detach()) for w, b in layers[1:]], first_weight.t().contiguous(), select)
    net.__dict__["_fused_plan"] = plan
    return plan


def closed_form(x: torch.Tensor, target: torch.Tensor, net: LossNet, scale: float, with_grad: bool = True) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Per-row loss (M,), its gradient with respect to x (M, C) (None if not asked), and log p_y (M,)."""
    plan = plan_for(net, x.dtype, x.device)
    k = x.shape[1]
    log_k = math.log(k)
    ty = target[:, None]
    # One softmax pass gives the probabilities (and, later, the gradient's p term); the two
    # log-probabilities the features need come from whichever of p_y, p_c is the larger (>= 1/K,
    # never underflowing) and the logit gap: log p_y = z_y - z_c + log p_c. This replaces a
    # log_softmax pass and an exp pass over (M, C), measured slow on CPU.
    p = torch.softmax(x, dim=1)
    p_y = p.gather(1, ty)  # (M, 1)
    p.scatter_(1, ty, -1.0)  # mask the target in place: the max is then the best wrong class
    p_c, rival = p.max(dim=1, keepdim=True)
    p.scatter_(1, ty, p_y)
    gap = x.gather(1, ty) - x.gather(1, rival)  # z_y - z_c
    y_larger = p_y >= p_c
    log_larger = torch.where(y_larger, p_y, p_c).log()
    logp_y = torch.where(y_larger, log_larger, log_larger + gap)
    logp_c = torch.where(y_larger, log_larger - gap, log_larger)
    pair = torch.cat([logp_y, logp_c.clamp_min(LOGP_CLIP)], dim=1)  # (M, 2)
    shifted = pair - LOG_FLOOR
    columns = [F.softplus(shifted).add_(LOG_FLOOR), pair, p_y]
    entropy = logp = None
    if "entropy" in plan.basis or "rank" in plan.basis:
        logp = torch.log_softmax(x, dim=1)  # only the older losses' features need every log p
    if "entropy" in plan.basis:
        entropy = torch.special.entr(p).sum(dim=1, keepdim=True).div_(log_k)
        columns.append(entropy)
    if "rank" in plan.basis:
        columns.append(rank(logp, ty))
    basis = torch.cat(columns, dim=1)

    # the MLP, its first layer folded with the feature map
    act, name = net._act, net.config.activation
    h = torch.addmm(torch.add(plan.first_bias, plan.first_logk, alpha=log_k), basis, plan.first_weight)
    outs = []  # each activation's output: what its backward needs
    for w, b in plan.layers:
        a = torch.tanh(h) if name == "tanh" else act(h)  # one kernel (lossnet's tanh is written for autograd)
        outs.append(a)
        h = torch.addmm(b, a, w.t())
    loss = F.softplus(h).squeeze(1)
    if net.config.has_base:  # -log p_y, or forward-corrected
        loss = loss + base_penalty(net.config, logp_y.squeeze(1), x.shape[1])
    loss = loss * scale
    if not with_grad:
        return loss, None, logp_y.squeeze(1)

    last = plan.layers[-1][0] if plan.layers else plan.first_w  # no hidden layer: the output layer is the first
    g = torch.sigmoid(h) * last  # d softplus / d a_last: (M, H_last), or (M, nb) without hidden layers
    for index in range(len(plan.layers) - 1, -1, -1):
        g = activation_backward(name, g, outs[index]) @ (plan.layers[index - 1][0] if index > 0 else plan.first_w)  # last: (M, nb)
    multipliers = torch.cat([torch.sigmoid(shifted), torch.ones_like(pair), p_y], dim=1)  # d basis / d log p (y or c)
    ay_ac = (g[:, :5] * multipliers) @ plan.to_coefficients[:5]  # (M, 2)
    if net.config.has_base:  # the base's d / d log p_y: -1 for -log p_y
        ay_ac[:, 0] += base_slope(net.config, logp_y.squeeze(1), x.shape[1])
    ay_ac.mul_(scale)
    cp = ay_ac.sum(dim=1, keepdim=True).neg_()
    if entropy is not None:  # dH/dz = -p (log p + H) / log K
        a_h = g[:, plan.basis.index("entropy") : plan.basis.index("entropy") + 1] * scale
        grad = p * (cp - a_h * entropy - (a_h / log_k) * logp.clamp_min(-1e4))
    else:
        grad = p.mul_(cp)
    grad.scatter_add_(1, ty, ay_ac[:, :1])
    grad.scatter_add_(1, rival, ay_ac[:, 1:])
    return loss, grad, logp_y.squeeze(1)


def differentiable_grad(x: torch.Tensor, target: torch.Tensor, net: LossNet, scale: float, grad_rows: torch.Tensor) -> torch.Tensor:
    """sum_i grad_rows_i * d l(x_i, y_i) / dx through the autograd path, as a differentiable function
    of x: what ``create_graph=True`` (a gradient penalty, a Hessian, double backward) needs. The
    closed-form gradient is a constant saved at forward time, so its own derivative would be
    silently missing (measured: a gradient penalty 15% off)."""
    with torch.enable_grad():
        loss = net(torch.log_softmax(x, dim=1), target) * scale
        (grad,) = torch.autograd.grad(loss, x, grad_rows, create_graph=True)
    return grad


class _FusedLoss(torch.autograd.Function):
    """Per-row loss whose logit gradient was assembled during the forward pass. The logits are
    saved too (a reference): under ``create_graph`` the backward differentiates the autograd path."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, target: torch.Tensor, net: LossNet, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
        loss, grad, logp_y = closed_form(x, target, net, scale)
        ctx.save_for_backward(grad, x, target)
        ctx.net, ctx.scale = net, scale
        ctx.mark_non_differentiable(logp_y)
        return loss, logp_y

    @staticmethod
    def backward(ctx: Any, grad_loss: torch.Tensor, _grad_logp_y: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        grad, x, target = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True: the gradient must itself be differentiable
            return differentiable_grad(x, target, ctx.net, ctx.scale, grad_loss), None, None, None
        return grad * grad_loss[:, None], None, None, None


class _FusedSum(torch.autograd.Function):
    """The summed loss (the mean when ``scale`` carries 1/M): no per-row autograd node or reduction."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, target: torch.Tensor, net: LossNet, scale: float) -> torch.Tensor:
        loss, grad, _ = closed_form(x, target, net, scale)
        ctx.save_for_backward(grad, x, target)
        ctx.net, ctx.scale = net, scale
        return loss.sum()

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        grad, x, target = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True: the gradient must itself be differentiable
            return differentiable_grad(x, target, ctx.net, ctx.scale, grad_out.expand(x.shape[0])), None, None, None
        if grad_out.device.type == "cpu" and float(grad_out) == 1.0:  # loss.backward(): skip a pass
            return grad, None, None, None
        return grad * grad_out, None, None, None


def fused_reduced_loss(x: torch.Tensor, target: torch.Tensor, net: LossNet, scale: float) -> torch.Tensor:
    """sum over rows of scale * l(p, y), with the closed-form gradient attached."""
    if not x.requires_grad:
        with torch.no_grad():
            return closed_form(x, target, net, scale, with_grad=False)[0].sum()
    return _FusedSum.apply(x, target, net, scale)


def fused_row_losses(x: torch.Tensor, target: torch.Tensor, net: LossNet, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row losses (M,) with the closed-form gradient attached, and log p_y (M,)."""
    if not x.requires_grad:
        with torch.no_grad():
            loss, _, logp_y = closed_form(x, target, net, scale, with_grad=False)
        return loss, logp_y
    return _FusedLoss.apply(x, target, net, scale)
