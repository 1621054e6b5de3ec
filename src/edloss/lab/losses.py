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
    logit_adjusted          the long-tail baselines, told the training set's class counts by the
    balanced_softmax        trainer (``set_class_counts``; LDAM-DRW also the epoch, ``set_epoch``):
    ldam_drw, cb_ce         logit adjustment (tau = 1), balanced softmax, LDAM with deferred
                            re-weighting, class-balanced CE with effective numbers
    gce:gain=0.5            any loss times a constant (``Gained``): its gradient, so its step
                            size under SGD, scaled; for asking whether a loss wins by its shape
                            or by its gradient's size

A comparison arm may carry a label: ``LABEL=SPEC``, e.g. ``edl-chaotic=edl:runs/x/loss``. The
text before the first ``=`` is a label only if it contains no ``:``, so ``focal:gamma=3`` is
an unlabelled spec and ``f3=focal:gamma=3`` a labelled one.

Here: the registry, the spec strings and the EDL entries. The formula losses live one family a
file, their names importable from here: ``losses_plain`` (CE, label smoothing, focal, Poly-1,
cosine), ``losses_noise`` (MAE, GCE, SCE, NCE+RCE, forward correction) and ``losses_longtail``
(logit adjustment, balanced softmax, class-balanced CE, LDAM-DRW, post-hoc adjustment).
"""

from __future__ import annotations

import inspect
import json
import re
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn

from edloss.lab.losses_longtail import (LDAMDRW, BalancedSoftmax, ClassBalancedCE, LogitAdjusted,  # noqa: F401 (re-exported)
                                        _PriorLoss, check_class_counts, effective_number_weights, posthoc_adjusted)
from edloss.lab.losses_noise import MAE, GCE, NCERCE, RCE_LOG_ZERO, SCE, ForwardCorrected, _rce  # noqa: F401 (re-exported)
from edloss.lab.losses_plain import (Cosine, CrossEntropy, Focal, LabelSmoothing, Poly1, _option,  # noqa: F401 (re-exported)
                                     _target_logprob)


def _edl(checkpoint: str | None = None, prior_aware: bool = False, prior_strength: Any = None, **options: Any) -> nn.Module:
    """The EDL loss: the shipped pretrained weights, or a checkpoint written by pretraining.

    ``prior_aware=true`` (``edl:prior_aware=true``) makes it the prior-aware loss
    ``EDLLoss(class_counts=...)`` with the counts the trainer reports (``PriorAwareEDL``), at
    ``prior_strength`` tau (default 1). Further options (e.g. ``check_inputs=false``) go to the
    ``EDLLoss`` constructor.
    """
    from edloss.loss import EDLLoss  # imported here so the baselines never depend on it

    if not isinstance(prior_aware, bool):
        raise ValueError(f"edl prior_aware must be true or false, got {prior_aware!r}")
    if prior_strength is not None and not prior_aware:  # else it would train prior-blind, silently
        raise ValueError(f"edl prior_strength={prior_strength!r} scales the class prior, which only the prior-aware loss is "
                         "told: add prior_aware=true (e.g. edl:prior_aware=true,prior_strength=2)")
    loss = EDLLoss.pretrained(**options) if checkpoint is None else EDLLoss.from_file(checkpoint, **options)
    return PriorAwareEDL(loss, prior_strength) if prior_aware else loss


class PriorAwareEDL(nn.Module):
    """An ``EDLLoss`` told the class prior by the trainer (``set_class_counts``): it then scores the
    logit-adjusted prediction softmax(z + tau log pi), as ``EDLLoss(class_counts=counts)`` does."""

    def __init__(self, loss: nn.Module, prior_strength: Any = None) -> None:
        from edloss.loss import _prior_strength

        super().__init__()
        self.loss = loss
        # checked now, not when the trainer reports the counts after the data has loaded
        self.prior_strength = 1.0 if prior_strength is None else _prior_strength(prior_strength)

    def set_class_counts(self, counts: Any) -> None:
        self.loss.set_prior(torch.as_tensor(counts).tolist(), self.prior_strength)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.loss.log_prior is None:
            raise ValueError("the prior-aware EDL loss needs the class counts of the training set: call "
                             "loss.set_class_counts(counts) first (edloss train does)")
        return self.loss(logits, target)


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
    "logit_adjusted": LogitAdjusted,
    "balanced_softmax": BalancedSoftmax,
    "ldam_drw": LDAMDRW,
    "cb_ce": ClassBalancedCE,
    "cosine": Cosine,
}
# the option a bare value after "name:" sets
PRIMARY_OPTION: dict[str, str] = {
    "label_smoothing": "eps", "focal": "gamma", "poly1": "epsilon", "edl": "checkpoint",
    "gce": "q", "forward": "eta", "logit_adjusted": "tau", "cb_ce": "beta", "ldam_drw": "drw",
}
_ALIASES = {"cross_entropy": "ce", "crossentropy": "ce", "ls": "label_smoothing",
            "labelsmoothing": "label_smoothing", "poly": "poly1", "la": "logit_adjusted",
            "logit_adjustment": "logit_adjusted", "bs": "balanced_softmax", "class_balanced": "cb_ce"}


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


class Gained(nn.Module):
    """A loss times a constant ``gain`` (the ``gain=G`` option of every registry loss).

    Why: losses differ in the size of their gradient as much as in its shape (GCE's is 3-5 times
    smaller than CE's, the EDL losses are anchored to CE's at the uniform prediction), and with one
    learning rate for every arm the size acts as a step size. ``gain`` separates the two: the same
    shape at another size. Weight decay is not scaled, so this is close to, not exactly, a learning
    rate times G. Hooks of the wrapped loss (``set_class_counts``, ``set_epoch``, ...) pass through.
    """

    def __init__(self, loss: nn.Module, gain: float) -> None:
        super().__init__()
        self.loss = loss
        self.gain = gain

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["loss"], name)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.gain * self.loss(logits, target)


def build_loss(name: str, /, **options: Any) -> nn.Module:
    """A loss module by registry name with keyword options; unknown names/options: ValueError.
    Every loss takes ``gain`` (a positive number): the loss times it (``Gained``)."""
    key = _canonical(name)
    if key not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; valid names: {', '.join(LOSSES)}")
    if "gain" in options:
        gain = _option(key, "gain", options.pop("gain"), lambda v: v > 0, "a positive number (the loss is multiplied by it)")
        return Gained(build_loss(key, **options), gain)
    factory = LOSSES[key]
    inherits_module_init = getattr(factory, "__init__", None) is nn.Module.__init__
    try:  # a loss class with no __init__ of its own has nn.Module's (*args, **kwargs): it takes no option
        accepted = {} if inherits_module_init else inspect.signature(factory).parameters
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
    if Path(rest).exists():
        return True
    match = re.match(r"^\s*([A-Za-z_]+)\s*=", rest)
    return match is None or match.group(1) not in _edl_option_names()


def _edl_option_names() -> set[str]:
    """Every option ``edl:`` takes: the lab's own and those of EDLLoss's constructors."""
    from edloss.loss import EDLLoss

    options = {"checkpoint", "prior_aware", "gain", "prior_strength"}
    for method in (EDLLoss.__init__, EDLLoss.pretrained, EDLLoss.from_file):
        options |= {p.name for p in inspect.signature(method).parameters.values()
                    if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return options - {"self", "cls", "net", "path"}


def _edl_path_options(rest: str, spec: str) -> dict[str, Any]:
    """``edl:PATH``: the path taken whole (it may hold ',' or '='), unless no such path exists and
    it ends in ``,option=value...`` with EDL's options: then the path and those options
    (``edl:runs/x/loss,gain=0.5``), instead of a missing checkpoint named ``runs/x/loss,gain=0.5``."""
    if not Path(rest).exists():
        for match in re.finditer(r",\s*([A-Za-z_]+)\s*=", rest):
            if match.group(1) in _edl_option_names():
                _, options = parse_loss_spec("edl:" + rest[match.start() + 1:])
                if "checkpoint" in options:
                    raise ValueError(f"loss spec {spec!r} names the checkpoint twice; give it once")
                return {"checkpoint": rest[:match.start()], **options}
    return {"checkpoint": rest}


def parse_loss_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """'focal:gamma=3' -> ('focal', {'gamma': 3}); 'edl:path' -> ('edl', {'checkpoint': 'path'})."""
    name, _, rest = spec.strip().partition(":")
    key = _canonical(name)
    if not key:
        raise ValueError(f"empty loss name in spec {spec!r}; write e.g. 'ce' or 'focal:gamma=3'")
    options: dict[str, Any] = {}
    if rest:
        if key == "edl" and _is_edl_path(rest):
            return key, _edl_path_options(rest, spec)
        for i, item in enumerate(rest.split(",")):
            opt, eq, value = item.partition("=")
            if not eq:
                if i > 0 or key not in PRIMARY_OPTION:
                    raise ValueError(f"loss spec {spec!r}: write options as key=value "
                                     f"(e.g. focal:gamma=3)")
                opt, value = PRIMARY_OPTION[key], item
            if opt.strip() in options:  # else the last value would win silently
                raise ValueError(f"loss spec {spec!r} sets {opt.strip()!r} twice"
                                 + (f" (the bare value after '{name}:' is its {opt.strip()})" if i > 0 and key in PRIMARY_OPTION
                                    and PRIMARY_OPTION[key] == opt.strip() else "") + "; give each option once")
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

    if isinstance(loss, Gained):  # the gain is in the spec; the network inside is what a path can swap
        loss = loss.loss
    if isinstance(loss, PriorAwareEDL):  # tau is in the spec and the counts come from the data: hash the network
        loss = EDLLoss(loss.loss.net, scale=loss.loss.scale, metadata=loss.loss.metadata, trainable=loss.loss.trainable)
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
