"""The loss network: features of (p, y) -> tiny MLP -> softplus -> a penalty >= 0.

It exists in two forms that compute the same function:

* ``LossNet``: a plain ``nn.Module`` used by ``EDLLoss`` at training time;
* ``population_forward``: P flat parameter vectors evaluated on the same features in one
  batched pass (``baddbmm`` over the population), which is what makes an evolution strategy
  generation cheap: no Python loop over individuals.

The flat layout is that of ``nn.Linear`` layers in order: weight (out, in) row-major, then bias.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from edloss.features import DEFAULT_FEATURES, check_feature_names, compute_features


def tanh(x: torch.Tensor) -> torch.Tensor:
    """tanh as 2 sigmoid(2x) - 1: the same function, ~4x faster than ``torch.tanh`` on CPU here."""
    return torch.sigmoid(2.0 * x) * 2.0 - 1.0


ACTIVATIONS = {"tanh": tanh, "relu": torch.relu, "silu": nn.functional.silu, "gelu": nn.functional.gelu}


@dataclass(frozen=True)
class LossNetConfig:
    """Architecture of the loss network. Everything here is saved with a checkpoint."""

    features: tuple[str, ...] = DEFAULT_FEATURES
    hidden: tuple[int, ...] = (16, 16)
    activation: str = "tanh"

    def __post_init__(self) -> None:
        object.__setattr__(self, "features", check_feature_names(self.features))
        object.__setattr__(self, "hidden", tuple(int(h) for h in self.hidden))
        if any(h < 1 for h in self.hidden):
            raise ValueError(f"hidden layer sizes must be >= 1, got {self.hidden}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {self.activation!r}; valid: {', '.join(ACTIVATIONS)}")

    @property
    def layer_sizes(self) -> list[tuple[int, int]]:
        """(fan_in, fan_out) of each linear layer, the last one producing the scalar."""
        dims = [len(self.features), *self.hidden, 1]
        return list(zip(dims[:-1], dims[1:]))

    @property
    def num_params(self) -> int:
        return sum(i * o + o for i, o in self.layer_sizes)


def init_scale(config: LossNetConfig) -> torch.Tensor:
    """Per-gene standard deviation for a fresh network: 1/sqrt(fan_in) for weights, 0.1 for biases."""
    parts = []
    for fan_in, fan_out in config.layer_sizes:
        parts.append(torch.full((fan_in * fan_out,), 1.0 / math.sqrt(fan_in)))
        parts.append(torch.full((fan_out,), 0.1))
    return torch.cat(parts)


def unflatten(theta: torch.Tensor, config: LossNetConfig) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Split (P, D) flat vectors into per-layer (P, out, in) weights and (P, out) biases."""
    if theta.shape[-1] != config.num_params:
        raise ValueError(f"parameter vector has {theta.shape[-1]} entries, the network needs {config.num_params}")
    layers, start = [], 0
    for fan_in, fan_out in config.layer_sizes:
        w = theta[..., start : start + fan_in * fan_out].reshape(*theta.shape[:-1], fan_out, fan_in)
        start += fan_in * fan_out
        b = theta[..., start : start + fan_out]
        start += fan_out
        layers.append((w, b))
    return layers

TILE_ELEMENTS = 1 << 19  # activations per tile: ~2 MB, so each tile's layers stay in cache


def population_forward(theta: torch.Tensor, features: torch.Tensor, config: LossNetConfig) -> torch.Tensor:
    """Penalties of P networks on N feature rows: theta (P, D), features (N, F) or (P, N, F) -> (P, N).

    Shared features (N, F) are broadcast to every individual; per-individual features (P, N, F)
    are used when gradients with respect to each individual's inputs are needed. The whole
    population runs as batched matmuls; rows are processed in tiles only so the (P, tile, H)
    activations stay in cache (measured 3x faster than one (P, N, H) pass at P = 64, N = 4096).
    """
    layers = unflatten(theta.to(features.dtype), config)
    p, n = theta.shape[0], features.shape[-2]
    tile = max(1, TILE_ELEMENTS // (p * max(config.hidden)))
    if n <= tile:
        return _population_mlp(layers, features, p, config)
    parts = [_population_mlp(layers, features[..., i : i + tile, :], p, config) for i in range(0, n, tile)]
    return torch.cat(parts, dim=1)


def _population_mlp(layers: list[tuple[torch.Tensor, torch.Tensor]], features: torch.Tensor, p: int, config: LossNetConfig) -> torch.Tensor:
    act = ACTIVATIONS[config.activation]
    h = features if features.dim() == 3 else features.unsqueeze(0).expand(p, -1, -1)
    for index, (w, b) in enumerate(layers):
        h = torch.baddbmm(b.unsqueeze(1), h, w.transpose(1, 2))
        if index < len(layers) - 1:
            h = act(h)
    return nn.functional.softplus(h.squeeze(-1))


class LossNet(nn.Module):
    """One loss network as an ordinary module: (log p, target) -> penalty per row."""

    def __init__(self, config: LossNetConfig) -> None:
        super().__init__()
        self.config = config
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in config.layer_sizes)
        self._act = ACTIVATIONS[config.activation]

    @classmethod
    def from_flat(cls, theta: torch.Tensor, config: LossNetConfig) -> LossNet:
        net = cls(config)
        net.load_flat(theta)
        return net

    def load_flat(self, theta: torch.Tensor) -> None:
        with torch.no_grad():
            for layer, (w, b) in zip(self.layers, unflatten(theta.detach().float(), self.config)):
                layer.weight.copy_(w)
                layer.bias.copy_(b)

    def flat(self) -> torch.Tensor:
        return torch.cat([t.detach().reshape(-1) for layer in self.layers for t in (layer.weight, layer.bias)])

    def forward_features(self, features: torch.Tensor) -> torch.Tensor:
        h = features
        for index, layer in enumerate(self.layers):
            h = layer(h)
            if index < len(self.layers) - 1:
                h = self._act(h)
        return nn.functional.softplus(h.squeeze(-1))

    @property
    def has_closed_form_gradient(self) -> bool:
        return self.config.activation in ("tanh", "relu")

    def value_and_input_grad(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Penalty (N,) and its gradient with respect to the features (N, F), by a hand-written
        backward pass: a dozen small ops instead of an autograd graph (tanh and relu only)."""
        activations = []
        h = features
        for index, layer in enumerate(self.layers):
            h = nn.functional.linear(h, layer.weight, layer.bias)
            if index < len(self.layers) - 1:
                h = self._act(h)
                activations.append(h)
        grad = torch.sigmoid(h) * self.layers[-1].weight  # softplus' times the last layer: (N, H)
        for index in reversed(range(len(activations))):
            a = activations[index]
            grad = grad * (1.0 - a * a) if self.config.activation == "tanh" else grad * (a > 0)
            grad = grad @ self.layers[index].weight
        return nn.functional.softplus(h.squeeze(-1)), grad

    def forward(self, logp: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.forward_features(compute_features(logp, target, self.config.features))
