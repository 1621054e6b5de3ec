"""A registry of classification losses behind one call: ``build_loss(name, **options)``.

Every loss maps (logits (N, K), target (N,) int64) to the scalar mean over the batch, so the
trainer and the comparison grid treat EDL and its baselines alike. Losses are named by *spec
strings* so that a command line can carry options and checkpoints:

    ce                      cross-entropy
    label_smoothing:0.2     the loss's main option given bare (here eps)
    focal:gamma=3           options as key=value, comma-separated
    gce, sce, nce_rce       the noise-robust baselines (GCE q=0.7, SCE 0.1/1.0, NCE+RCE 1/1)
    forward:0.4             CE forward-corrected for symmetric noise at the known rate 0.4
    edl                     the shipped pretrained EDL loss
    edl:runs/x/loss         an EDL checkpoint (same as edl:checkpoint=runs/x/loss)

A comparison arm may carry a label: ``LABEL=SPEC``, e.g. ``edl-chaotic=edl:runs/x/loss``. The
text before the first ``=`` is a label only if it contains no ``:``, so ``focal:gamma=3`` is
an unlabelled spec and ``f3=focal:gamma=3`` a labelled one.
"""

from __future__ import annotations

import inspect
import json
import math
import re
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F


def _target_logprob(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """log p_y per sample, computed stably from logits."""
    return F.log_softmax(logits.float(), dim=1).gather(1, target[:, None]).squeeze(1)


def _option(loss: str, option: str, value: Any, ok: Callable[[float], bool], valid: str,
            why: str = "") -> float:
    """``value`` as a float, or ValueError naming the loss, the option and its valid range."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{loss} {option} must be {valid}, got {value!r}")
    if not ok(float(value)):
        raise ValueError(f"{loss} {option} must be {valid}, got {value!r}{why}")
    return float(value)


class CrossEntropy(nn.Module):
    """-log p_y: the reference every other loss is compared against."""

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float(), target)


class LabelSmoothing(nn.Module):
    """Cross-entropy against (1 - eps) * onehot + eps / K (Szegedy et al. 2016)."""

    def __init__(self, eps: float = 0.1) -> None:
        super().__init__()
        self.eps = _option("label_smoothing", "eps", eps, lambda v: 0 <= v < 1, "a number in [0, 1)")

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float(), target, label_smoothing=self.eps)


class Focal(nn.Module):
    """-(1 - p_y)^gamma log p_y (Lin et al. 2017): down-weights examples already right."""

    def __init__(self, gamma: float = 2.0) -> None:
        super().__init__()
        self.gamma = _option("focal", "gamma", gamma, lambda v: v >= 0, "a number >= 0")

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logp = _target_logprob(logits, target)
        return (-(1 - logp.exp()).pow(self.gamma) * logp).mean()


class Poly1(nn.Module):
    """CE + epsilon * (1 - p_y) (Leng et al. 2022, PolyLoss with one extra term).

    d/dp_y = -1/p_y - epsilon, which is negative for every p_y in (0, 1] only if epsilon >= -1:
    below that the loss rises once p_y > -1/epsilon and training would push the right class
    down, so such an epsilon is refused.
    """

    def __init__(self, epsilon: float = 1.0) -> None:
        super().__init__()
        self.epsilon = _option("poly1", "epsilon", epsilon, lambda v: v >= -1, "a number >= -1",
                               ": below -1 the loss -log p_y + epsilon (1 - p_y) stops decreasing in "
                               "p_y (it rises for p_y > -1/epsilon), so it would reward a less likely "
                               "right answer")

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logp = _target_logprob(logits, target)
        return (-logp + self.epsilon * (1 - logp.exp())).mean()


class MAE(nn.Module):
    """Mean absolute error between p and the one-hot label: sum_k |p_k - onehot_k| = 2 (1 - p_y).

    This is the L1 form of Ghosh et al. (2017), bounded in [0, 2] and robust to label noise
    but known to underfit on clean data (its gradient vanishes where p_y is small); it is
    here as a bounded, saturating reference point, not as a contender.
    """

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return (2 * (1 - _target_logprob(logits, target).exp())).mean()


class GCE(nn.Module):
    """Generalized cross-entropy (Zhang & Sabuncu, NeurIPS 2018): (1 - p_y^q) / q.

    q -> 0 is CE, q = 1 is MAE; q = 0.7 is the paper's choice for CIFAR with noisy labels.
    Bounded, so a mislabelled sample the model disagrees with cannot pull arbitrarily hard.
    """

    def __init__(self, q: float = 0.7) -> None:
        super().__init__()
        self.q = _option("gce", "q", q, lambda v: 0 < v <= 1, "a number in (0, 1]")

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return ((1 - (self.q * _target_logprob(logits, target)).exp()) / self.q).mean()


RCE_LOG_ZERO = -math.log(1e-4)  # log 0 of the one-hot label, clamped at 1e-4 as in the reference code


def _rce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Reverse cross-entropy -sum_k p_k log onehot_k with log 0 := log 1e-4: = -log(1e-4) (1 - p_y)."""
    return RCE_LOG_ZERO * (1 - _target_logprob(logits, target).exp())


class SCE(nn.Module):
    """Symmetric cross-entropy (Wang et al., ICCV 2019): alpha * CE + beta * RCE, with RCE the
    reverse cross-entropy whose one-hot label is clamped at 1e-4 (so RCE = -log(1e-4) (1 - p_y)).
    alpha = 0.1, beta = 1.0: the paper's CIFAR-10 setting."""

    def __init__(self, alpha: float = 0.1, beta: float = 1.0) -> None:
        super().__init__()
        self.alpha = _option("sce", "alpha", alpha, lambda v: v >= 0, "a number >= 0")
        self.beta = _option("sce", "beta", beta, lambda v: v >= 0, "a number >= 0")

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return (-self.alpha * _target_logprob(logits, target) + self.beta * _rce(logits, target)).mean()


class NCERCE(nn.Module):
    """Active-passive loss NCE + RCE (Ma et al., ICML 2020): alpha * NCE + beta * RCE, with the
    normalised CE  NCE = log p_y / sum_k log p_k  (in [0, 1]) and RCE as in SCE. alpha = beta = 1
    (the paper's CIFAR-10 setting)."""

    def __init__(self, alpha: float = 1.0, beta: float = 1.0) -> None:
        super().__init__()
        self.alpha = _option("nce_rce", "alpha", alpha, lambda v: v >= 0, "a number >= 0")
        self.beta = _option("nce_rce", "beta", beta, lambda v: v >= 0, "a number >= 0")

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logp = F.log_softmax(logits.float(), dim=1)
        nce = logp.gather(1, target[:, None]).squeeze(1) / logp.sum(dim=1)
        return (self.alpha * nce + self.beta * _rce(logits, target)).mean()


class ForwardCorrected(nn.Module):
    """Forward-corrected CE (Patrini et al., CVPR 2017) for symmetric noise at a known rate eta:
    -log (T^T p)_y with T = (1 - eta) I + eta / (K - 1) (11^T - I), i.e.
    -log((1 - eta K / (K - 1)) p_y + eta / (K - 1)). Proper for the noisy labels; bounded as
    p_y -> 0. It knows the true noise rate, as EDL pretrained for that rate does: the fair rival."""

    def __init__(self, eta: float = 0.0) -> None:
        super().__init__()
        self.eta = _option("forward", "eta", eta, lambda v: 0 <= v < 1, "a noise rate in [0, 1)")

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        from edloss.objective import forward_corrected_nll  # the one formula, shared with pretraining

        return forward_corrected_nll(_target_logprob(logits, target), logits.shape[1], self.eta).mean()


def _edl(checkpoint: str | None = None, **options: Any) -> nn.Module:
    """The EDL loss: the shipped pretrained weights, or a checkpoint written by pretraining.

    Further options (e.g. ``check_inputs=false``) go to the ``EDLLoss`` constructor.
    """
    from edloss.loss import EDLLoss  # imported here so the baselines never depend on it

    if checkpoint is None:
        return EDLLoss.pretrained(**options)
    return EDLLoss.from_file(checkpoint, **options)


LOSSES: dict[str, Callable[..., nn.Module]] = {
    "ce": CrossEntropy,
    "label_smoothing": LabelSmoothing,
    "focal": Focal,
    "poly1": Poly1,
    "mae": MAE,
    "gce": GCE,
    "sce": SCE,
    "nce_rce": NCERCE,
    "forward": ForwardCorrected,
    "edl": _edl,
}
# the option a bare value after "name:" sets
PRIMARY_OPTION: dict[str, str] = {
    "label_smoothing": "eps", "focal": "gamma", "poly1": "epsilon", "edl": "checkpoint",
    "gce": "q", "forward": "eta",
}
_ALIASES = {"cross_entropy": "ce", "crossentropy": "ce", "ls": "label_smoothing",
            "labelsmoothing": "label_smoothing", "poly": "poly1"}


def loss_names() -> list[str]:
    return list(LOSSES)


def register_loss(name: str, factory: Callable[..., nn.Module], primary: str | None = None) -> None:
    """Add a loss to the registry (for experiments and tests); ``factory(**options)``."""
    LOSSES[name] = factory
    if primary:
        PRIMARY_OPTION[name] = primary


def _canonical(name: str) -> str:
    key = name.strip().lower().replace("-", "_")
    return _ALIASES.get(key, key)


def build_loss(name: str, /, **options: Any) -> nn.Module:
    """A loss module by registry name with keyword options; unknown names/options: ValueError."""
    key = _canonical(name)
    if key not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; valid names: {', '.join(LOSSES)}")
    factory = LOSSES[key]
    try:
        accepted = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        accepted = None
    if accepted is not None and not any(p.kind == p.VAR_KEYWORD for p in accepted.values()):
        unknown = sorted(set(options) - set(accepted))
        if unknown:
            valid = ", ".join(accepted) or "none"
            raise ValueError(f"loss {key!r} has no option {', '.join(unknown)}; "
                             f"its options: {valid}")
    return factory(**options)


def _parse_value(text: str) -> Any:
    """'3' -> 3, '0.1' -> 0.1, 'true' -> True, 'none' -> None; anything else stays a string."""
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def _is_edl_path(rest: str) -> bool:
    """Whether the text after ``edl:`` is a checkpoint path rather than ``key=value`` options: an
    existing path always is, and so is anything not starting with one of EDL's option names (a
    folder named ``my=loss`` is no option ``my``)."""
    from edloss.loss import EDLLoss

    if Path(rest).exists():
        return True
    match = re.match(r"^\s*([A-Za-z_]+)\s*=", rest)
    if match is None:
        return True
    options = {"checkpoint"}
    for method in (EDLLoss.__init__, EDLLoss.pretrained, EDLLoss.from_file):
        options |= {p.name for p in inspect.signature(method).parameters.values()
                    if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return match.group(1) not in options - {"self", "cls", "net", "path"}


def parse_loss_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """'focal:gamma=3' -> ('focal', {'gamma': 3}); 'edl:path' -> ('edl', {'checkpoint': 'path'})."""
    name, _, rest = spec.strip().partition(":")
    key = _canonical(name)
    if not key:
        raise ValueError(f"empty loss name in spec {spec!r}; write e.g. 'ce' or 'focal:gamma=3'")
    options: dict[str, Any] = {}
    if rest:
        if key == "edl" and _is_edl_path(rest):
            return key, {"checkpoint": rest}  # a bare path, taken whole (it may hold ',' or '=')
        for i, item in enumerate(rest.split(",")):
            opt, eq, value = item.partition("=")
            if not eq:
                if i > 0 or key not in PRIMARY_OPTION:
                    raise ValueError(f"loss spec {spec!r}: write options as key=value "
                                     f"(e.g. focal:gamma=3)")
                opt, value = PRIMARY_OPTION[key], item
            options[opt.strip()] = _parse_value(value.strip())
    return key, options


def build_loss_from_spec(spec: str) -> nn.Module:
    """``build_loss`` for a spec string like 'focal:gamma=3' or 'edl:runs/x/loss'."""
    name, options = parse_loss_spec(spec)
    return build_loss(name, **options)


def definition_sha256(loss: nn.Module) -> str | None:
    """The sha256 of what defines a learned loss (an EDLLoss's architecture, scale and weights: the
    ``definition_sha256`` its loss.json would carry), or None for a formula loss, which its spec
    string defines. A run stores it: the same spec ``edl:PATH`` names another loss once PATH is
    overwritten, and a resumed or reused run must not silently mix or swap the two."""
    from edloss.loss import CONFIG_FILE, EDLLoss

    if not isinstance(loss, EDLLoss):
        return None
    with tempfile.TemporaryDirectory() as folder:  # the checksum exactly as the file format defines it
        loss.save(folder)
        return json.loads((Path(folder) / CONFIG_FILE).read_text())["definition_sha256"]


def spec_definition(spec: str) -> str | None:
    """``definition_sha256`` of the loss a spec builds now (None for formula losses)."""
    return definition_sha256(build_loss_from_spec(spec))


_LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


def parse_loss_arm(text: str) -> tuple[str, str]:
    """'LABEL=SPEC' -> (label, spec); a bare spec gets a label derived from it.

    Labels name output folders, so they are restricted to letters, digits and ``_.+-``.
    """
    head, eq, tail = text.partition("=")
    if eq and ":" not in head:
        label, spec = head.strip(), tail.strip()
        if not _LABEL.match(label):
            raise ValueError(f"loss label {label!r} in {text!r} may use only letters, digits "
                             "and _.+- (it names a folder)")
    else:
        spec = text.strip()
        label = re.sub(r"[^A-Za-z0-9_.+-]+", "_", spec.replace(":", "-")).strip("_") or "loss"
    parse_loss_spec(spec)  # fail early on malformed specs
    return label, spec
