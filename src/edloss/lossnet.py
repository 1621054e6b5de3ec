"""The loss network: features of (p, y) -> tiny MLP -> softplus -> a penalty >= 0.

Four forms:

* ``free``: penalty = softplus(MLP(features)), any features, any weights (the v0-v3 losses);
* ``bounded``: the monotone form without -log p_y: monotone too, and bounded, so a sample the
  model confidently disagrees with (for noisy labels: often a wrong label) pulls with a
  vanishing gradient, as forward-corrected CE, GCE or MAE do;
* ``monotone``: penalty = -log p_y + softplus(MLP+(-features)), where MLP+ has non-negative
  weights (|theta| is used) and a monotone activation, and every feature rises with correctness
  (``features.MONOTONE_FEATURES``). The penalty is then non-increasing in the true logit and
  non-decreasing in every wrong logit *everywhere*, by construction, not only inside the
  pretraining range; the correction is bounded, so a hopeless sample gets cross-entropy's
  gradient (times the loss's scale) and a confidently right one gets CE's vanishing gradient.
* ``corrected``: the monotone form on the forward-corrected base for symmetric label noise at
  ``noise_rate`` eta: penalty = -log((T^T p)_y) + softplus(MLP+(-features)), with
  (T^T p)_y = (1 - eta K/(K-1)) p_y + eta/(K-1) (Patrini et al., 2017). The base is the proper
  loss of the noisy labels, bounded as p_y -> 0; the search learns what the clean-severity
  ranking wants beyond it, and can always turn its correction off (softplus -> 0).

It exists in two implementations that compute the same function:

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

from edloss.features import DEFAULT_FEATURES, MONOTONE_FEATURES, check_feature_names, compute_features


def tanh(x: torch.Tensor) -> torch.Tensor:
    """tanh as 2 sigmoid(2x) - 1: the same function, ~4x faster than ``torch.tanh`` on CPU here."""
    return torch.sigmoid(2.0 * x) * 2.0 - 1.0


def softsign(x: torch.Tensor) -> torch.Tensor:
    """x / (1 + |x|): bounded and monotone like tanh, but no transcendental function, so it costs
    a few cheap elementwise ops (tanh measured 40 us on a 512 x 16 tensor on this CPU)."""
    return x / (1.0 + x.abs())


ACTIVATIONS = {"tanh": tanh, "softsign": softsign, "relu": torch.relu, "silu": nn.functional.silu, "gelu": nn.functional.gelu}
MONOTONE_ACTIVATIONS = ("tanh", "softsign", "relu")  # non-decreasing: a non-negative-weight MLP of them is monotone
FORMS = ("free", "monotone", "bounded", "corrected")
MAX_PARAMS = 1_000_000  # a population of 64 such networks is 256 MB; the shipped network has 353 parameters


@dataclass(frozen=True)
class LossNetConfig:
    """Architecture of the loss network. Everything here is saved with a checkpoint."""

    features: tuple[str, ...] = DEFAULT_FEATURES
    hidden: tuple[int, ...] = (16, 16)  # () is a linear model of the features
    activation: str = "tanh"
    form: str = "monotone"  # v4 default; "free" for the v0-v3 losses (configs/ pins them)
    noise_rate: float = 0.0  # the corrected form's eta (its base); 0 for every other form

    def __post_init__(self) -> None:
        if isinstance(self.features, str) or not all(isinstance(f, str) for f in self.features):
            raise TypeError(f"lossnet.features must be a list of feature names, got {self.features!r}")
        object.__setattr__(self, "features", check_feature_names(self.features))
        if isinstance(self.hidden, (str, int, float)) or not all(isinstance(h, int) and not isinstance(h, bool) for h in self.hidden):
            raise TypeError(f"lossnet.hidden must be a list of integer layer sizes such as [16, 16], got {self.hidden!r}")
        object.__setattr__(self, "hidden", tuple(int(h) for h in self.hidden))
        if any(h < 1 for h in self.hidden):
            raise ValueError(f"hidden layer sizes must be >= 1, got {self.hidden}")
        if self.num_params > MAX_PARAMS:  # before any allocation: [100000, 100000] would ask for 40 GB
            raise ValueError(f"lossnet.hidden {list(self.hidden)} gives a network of {self.num_params:,} parameters; "
                             f"at most {MAX_PARAMS:,} are allowed (the shipped one has 353: hidden [16, 16])")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {self.activation!r}; valid: {', '.join(ACTIVATIONS)}")
        if self.form not in FORMS:
            raise ValueError(f"unknown lossnet form {self.form!r}; valid: {', '.join(FORMS)}")
        rate = self.noise_rate
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not math.isfinite(rate):
            raise ValueError(f"lossnet.noise_rate must be a number, got {rate!r}")
        if self.form == "corrected" and not 0 < rate < 1:
            raise ValueError(f"the corrected form needs lossnet.noise_rate in (0, 1) (the label-noise rate of its base), got {rate!r}")
        if self.form != "corrected" and rate != 0:
            raise ValueError(f"lossnet.noise_rate is the corrected form's base; the {self.form} form takes none (got {rate!r})")
        if self.monotone:
            bad = [f for f in self.features if f not in MONOTONE_FEATURES]
            if bad:
                raise ValueError(f"the monotone form (the default) needs features that rise with correctness; {bad} are not ({', '.join(MONOTONE_FEATURES)} are). For any features set lossnet.form = \"free\"")
            if self.activation not in MONOTONE_ACTIVATIONS:
                raise ValueError(f"the monotone form needs a non-decreasing activation ({', '.join(MONOTONE_ACTIVATIONS)}), got {self.activation!r}")

    @property
    def monotone(self) -> bool:
        """Non-negative weights on correctness features: the monotone, bounded and corrected forms."""
        return self.form in ("monotone", "bounded", "corrected")

    @property
    def has_base(self) -> bool:
        """A known penalty the network corrects: -log p_y (monotone) or forward-corrected (corrected)."""
        return self.form in ("monotone", "corrected")

    @property
    def layer_sizes(self) -> list[tuple[int, int]]:
        """(fan_in, fan_out) of each linear layer, the last one producing the scalar."""
        dims = [len(self.features), *self.hidden, 1]
        return list(zip(dims[:-1], dims[1:]))

    @property
    def num_params(self) -> int:
        return sum(i * o + o for i, o in self.layer_sizes)


def symmetric_channel(k: int, eta: float) -> tuple[float, float]:
    """(slope, floor) of (T^T p)_y = slope p_y + floor for symmetric noise at rate eta over K classes."""
    return 1 - eta * k / (k - 1), eta / (k - 1)


def forward_corrected_nll(logp_y: torch.Tensor, k: int, eta: float) -> torch.Tensor:
    """-log (T^T p)_y for symmetric noise at rate eta (Patrini et al., 2017), from log p_y:
    -log((1 - eta K / (K - 1)) p_y + eta / (K - 1)), in log space so tiny p_y stay finite."""
    slope, floor = symmetric_channel(k, eta)
    if floor == 0:
        return -logp_y
    if slope <= 0:  # eta >= (K - 1) / K: the labels carry no information; (T^T p)_y no longer rises with p_y
        raise ValueError(f"forward correction needs eta < (K - 1) / K = {(k - 1) / k:.3f} for K = {k}, got {eta}")
    return -torch.logaddexp(logp_y + math.log(slope), torch.full_like(logp_y, math.log(floor)))


def base_penalty(config: LossNetConfig, logp_y: torch.Tensor, k: int) -> torch.Tensor:
    """The known part of the penalty that the network's output is added to (zero without a base)."""
    if config.form == "monotone":
        return -logp_y
    if config.form == "corrected":
        return forward_corrected_nll(logp_y, k, config.noise_rate)
    return torch.zeros_like(logp_y)


def base_slope(config: LossNetConfig, logp_y: torch.Tensor, k: int) -> torch.Tensor | float:
    """d base_penalty / d log p_y: -1 for -log p_y (a number: no tensor on the fused hot path);
    -s p_y / (s p_y + f) for the forward-corrected base; 0 without a base."""
    if config.form == "monotone":
        return -1.0
    if config.form == "corrected":
        slope, floor = symmetric_channel(k, config.noise_rate)
        return -torch.sigmoid(logp_y + math.log(slope) - math.log(floor))
    return 0.0


def init_scale(config: LossNetConfig) -> torch.Tensor:
    """Per-gene standard deviation for a fresh network: 1/sqrt(fan_in) for weights, 0.1 for biases."""
    parts = []
    for fan_in, fan_out in config.layer_sizes:
        parts.append(torch.full((fan_in * fan_out,), 1.0 / math.sqrt(fan_in)))
        parts.append(torch.full((fan_out,), 0.1))
    return torch.cat(parts)


CORRECTION_OFF = -4.0  # the corrected form's initial output bias: softplus(-4) = 0.018, the base nearly alone


def init_offset(config: LossNetConfig) -> torch.Tensor:
    """Mean of a fresh population: zero, except the corrected form's output bias, which starts at
    CORRECTION_OFF. Its search then starts at forward correction (the proper loss of the noisy
    labels) and adds a correction only where the ranking pays for one; from a zero bias the
    correction starts at ~softplus(0) = 0.69 everywhere and the search never walked it back
    (measured: held-out fitness 0.19 against forward correction's 0.48 at eta = 0.4)."""
    offset = torch.zeros(config.num_params)
    if config.form == "corrected":
        offset[-1] = CORRECTION_OFF
    return offset


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

def effective_layers(layers: list[tuple[torch.Tensor, torch.Tensor]], config: LossNetConfig) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The weights the network computes with: as stored (free form), or made monotone.

    Monotone form: the first layer sees -features through non-negative weights (-|W1|), later
    layers use |W|, so every unit is non-increasing in every feature."""
    if not config.monotone:
        return layers
    return [(-w.abs() if index == 0 else w.abs(), b) for index, (w, b) in enumerate(layers)]


TILE_ELEMENTS = 1 << 19  # activations per tile: ~2 MB, so each tile's layers stay in cache


def population_forward(theta: torch.Tensor, features: torch.Tensor, config: LossNetConfig) -> torch.Tensor:
    """Penalties of P networks on N feature rows: theta (P, D), features (N, F) or (P, N, F) -> (P, N).

    Shared features (N, F) are broadcast to every individual; per-individual features (P, N, F)
    are used when gradients with respect to each individual's inputs are needed. The whole
    population runs as batched matmuls; rows are processed in tiles only so the (P, tile, H)
    activations stay in cache (measured 3x faster than one (P, N, H) pass at P = 64, N = 4096).
    """
    layers = effective_layers(unflatten(theta.to(features.dtype), config), config)
    p, n = theta.shape[0], features.shape[-2]
    tile = max(1, TILE_ELEMENTS // (p * max(config.hidden, default=1)))
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


CLOSED_FORM_ACTIVATIONS = ("tanh", "softsign", "relu")  # those activation_backward knows


def activation_backward(name: str, grad: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """grad * act'(x), written with the activation's output ``out`` (closed forms for tanh, softsign, relu)."""
    if name == "tanh":
        return torch.ops.aten.tanh_backward(grad, out)  # grad * (1 - out^2) in one kernel
    if name == "softsign":  # d/dx x/(1+|x|) = 1/(1+|x|)^2 = (1 - |out|)^2
        slope = 1.0 - out.abs()
        return grad * slope * slope
    if name == "relu":
        return grad * (out > 0)
    raise ValueError(f"no closed-form derivative for activation {name!r}")


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

    def effective(self, dtype: torch.dtype = torch.float32) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(weight, bias) per layer as computed with, in ``dtype`` (whatever dtype the module was cast to)."""
        layers = [(layer.weight.to(dtype), layer.bias.to(dtype)) for layer in self.layers]
        return effective_layers(layers, self.config)

    def forward_features(self, features: torch.Tensor) -> torch.Tensor:
        """The learned part of the penalty (the monotone form adds -log p_y to it)."""
        h = features
        layers = self.effective(features.dtype)
        for index, (w, b) in enumerate(layers):
            h = nn.functional.linear(h, w, b)
            if index < len(layers) - 1:
                h = self._act(h)
        return nn.functional.softplus(h.squeeze(-1))

    @property
    def has_closed_form_gradient(self) -> bool:
        return self.config.activation in CLOSED_FORM_ACTIVATIONS

    def forward(self, logp: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        learned = self.forward_features(compute_features(logp, target, self.config.features))
        if self.config.has_base:
            return learned + base_penalty(self.config, logp.gather(-1, target.unsqueeze(-1)).squeeze(-1), logp.shape[-1])
        return learned
