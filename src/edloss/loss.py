"""``EDLLoss``: a pretrained loss network used exactly like ``nn.CrossEntropyLoss``.

Same constructor arguments (``weight``, ``ignore_index``, ``reduction``, ``label_smoothing``), same
input shapes ((N, C), (C,), (N, C, d1, ...)), class-index or probability targets, and CE's rules
for weighted means and ignored elements. For a probability target t the loss is the expected
penalty E_{y~t} l(p, y) = sum_y t_y l(p, y): the quantity the pretraining objective ranks.

The module is here; around it, one concept a file: its input checks (``checks``), the losses
shipped inside the package and the choice among them by regime (``shipped``), and its file
format, a folder with ``loss.safetensors`` and ``loss.json`` (``loss_file``). Their names stay
importable from here.
"""

from __future__ import annotations

import contextlib
import math
import os
import warnings
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.autograd import forward_ad

from edloss.checks import (  # noqa: F401 (re-exported: edloss.loss names them as before)
    MAX_CLASS_COUNT,
    _as_rows,
    _check_finite,
    _check_logits_finite,
    _check_probabilities,
    _check_weight,
    _counts_tensor,
    _is_rate,
    _prior_strength,
    _values_readable,
    _warn_if_probabilities,
    log_prior,
)
from edloss.fused_op import _spec_cached, fused_losses
from edloss.loss_file import (  # noqa: F401 (re-exported)
    CONFIG_FILE,
    FIELD_TYPES,
    FORMAT_NAME,
    FORMAT_VERSION,
    NOT_MONOTONE,
    PRETRAIN_NOISE_MAX,
    PRIORLESS_FORMAT_VERSION,
    WEIGHTS_FILE,
    _check_prior_field,
    _checkpoint_folder,
    _read_bytes,
    _read_config,
    definition_digest,
    definition_tensor,
    evolved_with_prior,
    loss_folder,
    lossnet_fields,
    pretrained_noise_rate,
    read_checkpoint,
    write_checkpoint,
)
from edloss.lossnet import LossNet, base_penalty
from edloss.shipped import (  # noqa: F401 (re-exported)
    LONGTAIL_MIN_IMBALANCE,
    NOISE_FOLDER,
    NOISE_RANGE,
    _noise_loss_name,
    _weights,
    is_shipped,
    regime_loss_name,
    shipped_loss_name,
    shipped_names,
    shipped_noise_losses,
)

REDUCTIONS = ("mean", "sum", "none")


class EDLLoss(nn.Module):
    """Evolutionary Dynamic Loss, a drop-in for ``nn.CrossEntropyLoss``.

    ``loss = scale * penalty(features(log_softmax(logits), target))``, the penalty being the
    pretrained loss network (see ``lossnet``).

    Args:
        net: the loss network.
        scale: multiplies the network's output; set at export so that the gradient norm at the
            uniform prediction equals cross-entropy's, which lets CE's learning rates carry over.
        weight, ignore_index, reduction, label_smoothing: as in ``nn.CrossEntropyLoss``
            (``ignore_index=None`` ignores nothing).
        check_inputs: validate label range and finiteness (a host sync or two per call). Under
            ``torch.compile`` the fused operator checks class-index targets when the graph runs
            (soft targets and the unfused path go unchecked there); shapes and dtypes are always checked.
        fused: compute the logit gradient in closed form during the forward pass (measured several
            times faster than autograd for this many tiny ops): the ``edloss::fused_loss``
            operator (``fused_op``), one node under ``torch.compile`` and ``torch.export``. Under
            ``create_graph=True`` (second-order gradients) its backward differentiates the same
            function through autograd; ``torch.func`` transforms, forward-mode AD and the meta
            device use the plain autograd path (and, where values cannot be read, skip the input
            checks).
        trainable: a pretrained loss is frozen: its network gets no gradient and an optimizer
            over ``model.parameters()`` cannot change it (else a model learns to game its own
            loss). ``trainable=True`` opts in (and turns the fused path off).
        metadata: provenance saved with the checkpoint.
        class_counts: per-class training counts (a sequence or a 1-D tensor, one entry per class):
            the loss then knows the class prior pi and scores the *logit-adjusted* prediction
            softmax(z + prior_strength * log pi) (Menon et al. 2021), so rare classes must win by a
            margin during training while the model's own logits stay balanced for a balanced test.
            With the network at cross-entropy this is exactly the logit-adjusted loss; equal counts
            change nothing. ``None`` (the default) assumes balanced classes.
        prior_strength: tau of the adjustment (default 1, the logit-adjusted loss's choice); only
            with ``class_counts`` (without a prior there is nothing to scale, and ignoring it
            silently would train prior-blind). Saved with the loss and part of its definition.
    """

    def __init__(
        self,
        net: LossNet,
        scale: float = 1.0,
        weight: torch.Tensor | None = None,
        ignore_index: int | None = -100,
        reduction: str = "mean",
        label_smoothing: float = 0.0,
        check_inputs: bool = True,
        fused: bool = True,
        trainable: bool = False,
        metadata: dict[str, Any] | None = None,
        class_counts: Any = None,
        prior_strength: float | None = None,
    ) -> None:
        super().__init__()
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not (math.isfinite(scale) and scale > 0):
            raise ValueError(f"scale must be a finite positive number, got {scale!r}")
        if isinstance(label_smoothing, bool) or not isinstance(label_smoothing, (int, float)) or not 0.0 <= label_smoothing <= 1.0:
            raise ValueError(f"label_smoothing must be a number in [0, 1], got {label_smoothing!r}")
        if ignore_index is not None and (isinstance(ignore_index, bool) or not isinstance(ignore_index, int)):
            raise TypeError(f"ignore_index must be an int or None, got {ignore_index!r}")
        if not isinstance(net, LossNet):
            raise TypeError(f"net must be an edloss LossNet, got {type(net).__name__}; for a shipped loss use EDLLoss.pretrained()")
        for name, flag in (("check_inputs", check_inputs), ("fused", fused), ("trainable", trainable)):
            if not isinstance(flag, bool):  # "no" would be truthy
                raise TypeError(f"{name} must be True or False, got {flag!r}")
        if metadata is not None and not isinstance(metadata, dict):
            raise TypeError(f"metadata must be a dict (the provenance saved with the loss), got {type(metadata).__name__}")
        self.net = net
        _spec_cached(net)  # the fused operator's architecture string, made here: formatting it inside a dynamic-shape trace fails
        self.scale = float(scale)  # a Python float: part of the definition, immune to .half()
        self.register_buffer("weight", _check_weight(weight))
        self.register_buffer("log_prior", None)
        self.register_buffer("log_prior64", None, persistent=False)  # what float64 logits are shifted by
        self.register_buffer("definition", None)
        self.set_prior(class_counts, prior_strength)
        self.ignore_index = ignore_index
        self.reduction = reduction
        self.label_smoothing = float(label_smoothing)
        self.check_inputs = check_inputs
        self.fused = fused
        self.metadata = dict(metadata or {})
        self.trainable = trainable
        self.net.requires_grad_(trainable)
        self._warned_probabilities = False
        self._warned_no_prior = False

    def set_prior(self, class_counts: Any, prior_strength: Any = None) -> None:
        """Tell the loss the class prior (per-class training counts; None: balanced) and tau.

        The prior is part of the loss's definition: the ``definition`` buffer is rebuilt, so that
        ``load_state_dict`` refuses the state of a loss with another tau, and ``save`` writes the
        counts and tau into loss.json, so that ``from_file`` restores them."""
        if class_counts is None and prior_strength is not None:
            raise ValueError(f"prior_strength={prior_strength!r} scales the class prior, but no class_counts were given, so it "
                             "would be ignored; pass class_counts=<per-class training counts> too, or drop prior_strength")
        tau = 1.0 if prior_strength is None else _prior_strength(prior_strength)
        prior = log_prior(class_counts)
        self.class_counts = None if prior is None else [int(c) for c in _counts_tensor(class_counts).tolist()]
        self.prior_strength = tau
        device = self.net.layers[0].weight.device
        self.log_prior = None if prior is None else prior.float().to(device)
        self.log_prior64 = None if prior is None else prior.to(device)
        # the definition (architecture, form, scale, prior) in the state dict, so that load_state_dict
        # refuses another loss's weights instead of silently making a third function
        told = None if prior is None else (self.class_counts, tau)
        self.definition = definition_tensor(self.net.config, self.scale, told).to(device)

    def _apply(self, fn: Any, recurse: bool = True) -> EDLLoss:
        """``.to(device)`` moves the network; ``.half()`` / ``.bfloat16()`` do not round its weights.

        The network's weights define the loss, so they stay float32 (or float64 after ``.double()``)
        whatever dtype the surrounding model is cast to; the loss computes in float32 (float64 for
        float64 logits) and returns the logits' dtype."""
        master = [p.detach().clone() for p in self.net.parameters()]
        weight = None if self.weight is None else self.weight.clone()  # class weights define the loss too
        prior = None if self.log_prior is None else self.log_prior.clone()  # and so does the prior
        prior64 = None if self.log_prior64 is None else self.log_prior64.clone()
        super()._apply(fn, recurse)
        for p, m in zip(self.net.parameters(), master):
            if p.dtype not in (torch.float32, torch.float64):
                p.data = m.to(p.device)
        if self.weight is not None and self.weight.dtype not in (torch.float32, torch.float64):
            self.weight = weight.to(self.weight.device)
        if self.log_prior is not None and self.log_prior.dtype not in (torch.float32, torch.float64):
            self.log_prior = prior.to(self.log_prior.device)  # log-priors of 1e-5 classes would round in half precision
        if self.log_prior64 is not None and self.log_prior64.dtype != torch.float64:  # float64 logits: the exact prior
            self.log_prior64 = self.log_prior64.to(torch.float64) if prior64 is None else prior64.to(self.log_prior64.device)
        return self

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        """Refuse the state dict of a loss with another definition before any weight is copied:
        the weights alone do not define the function (the scale and the form are not weights)."""
        theirs = state_dict.get(prefix + "definition")
        if isinstance(theirs, torch.Tensor) and not torch.equal(theirs.cpu(), self.definition.cpu()):
            cfg = self.net.config
            raise ValueError(
                f"this state dict holds another loss (its architecture, form, scale or prior (class counts, prior_strength) differ from this one's: "
                f"form {cfg.form}, features {list(cfg.features)}, scale {self.scale:.6g}, "
                f"prior_strength {f'{self.prior_strength:g}' if self.class_counts is not None else 'none (no prior)'}); loading its weights here would "
                "define a third function. Build that loss with EDLLoss.pretrained(name) or EDLLoss.from_file(path) instead"
            )
        super()._load_from_state_dict(state_dict, prefix, *args)

    # ------------------------------------------------------------------ forward
    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:  # noqa: A002 - CE's names
        logits, target, out_shape, soft = _as_rows(input, target)
        self._check_device(logits, target)
        if self.weight is not None and self.weight.shape[0] != logits.shape[1]:
            raise ValueError(f"weight has {self.weight.shape[0]} entries but the input has {logits.shape[1]} classes")
        if self.log_prior is not None and self.log_prior.shape[0] != logits.shape[1]:
            raise ValueError(f"class_counts has {self.log_prior.shape[0]} entries but the input has {logits.shape[1]} classes; "
                             "give one training count per class")
        if soft and self.ignore_index is not None and self.ignore_index >= 0:  # CE's rule and message
            raise ValueError(f"ignore_index is not supported for floating point target (got ignore_index={self.ignore_index} "
                             "with probability targets); pass class indices, or ignore_index=None")
        dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
        checking = self.check_inputs and _values_readable(logits)
        self._warn_once(logits, checking)
        # like F.cross_entropy: float32 under autocast, else the logits' dtype
        amp = _autocast_available(logits.device.type)
        out_dtype = dtype if amp and torch.is_autocast_enabled(logits.device.type) else input.dtype
        with torch.autocast(device_type=logits.device.type, enabled=False) if amp else contextlib.nullcontext():
            x = logits if logits.dtype == dtype else logits.to(dtype)
            if self.log_prior is not None and self.prior_strength:  # logit adjustment: the gradient w.r.t. z is unchanged in form
                prior = self.log_prior64 if dtype == torch.float64 else self.log_prior
                x = x + self.prior_strength * prior.to(device=x.device, dtype=dtype)
            if soft:
                loss, denominator = self._soft_target_loss(x, target.to(dtype), checking)
            else:
                fusable = self.weight is None and self.label_smoothing == 0 and self.reduction != "none" and self._fused_ok(x)
                # on the fused path the logits' finiteness is judged on the reduced loss instead: one host sync fewer
                ignored = self._check_class_indices(x, target, finite=not fusable) if checking else None
                if fusable and ignored == 0:
                    # the common case: one fused call returns the reduced loss
                    factor = 1.0 / x.shape[0] if self.reduction == "mean" else 1.0
                    reduced = fused_losses(x, target, self.net, self.scale * factor, reduce=True)[0]
                    if checking and not math.isfinite(reduced.item()):  # NaN / Inf logits or a -inf target logit: name the rows
                        _check_finite(x, torch.log_softmax(x.detach(), 1).gather(1, target[:, None]).squeeze(1))
                    return reduced.to(out_dtype)
                if checking and fusable:  # the check deferred above, for the general path
                    _check_logits_finite(x)
                loss, denominator = self._class_index_loss(x, target, checking)
        if self.reduction == "none":
            loss = loss.reshape(out_shape)
        else:  # reduced before the cast: a weighted row of 2e5 is no inf in float16 once divided by its weight
            loss = loss.sum() if self.reduction == "sum" else loss.sum() / denominator
        return loss if loss.dtype == out_dtype else loss.to(out_dtype)

    def _fused_ok(self, x: torch.Tensor) -> bool:
        """The closed-form path (eager, or the ``edloss::fused_loss`` node under ``torch.compile``),
        unless ``torch.func`` transforms, the meta device or forward-mode AD need plain ops: the
        operator has no forward derivative and no functorch rules."""
        if not (self.fused and not self.trainable and self.net.has_closed_form_gradient):
            return False
        return torch.compiler.is_compiling() or (_values_readable(x) and getattr(forward_ad, "_current_level", -1) < 0)

    def _check_device(self, x: torch.Tensor, target: torch.Tensor) -> None:
        """The target, the network and the class weights on the logits' device (else a raw
        'expected device' error deep inside)."""
        if target.device != x.device:
            raise ValueError(f"the logits are on {x.device} but the target is on {target.device}; move the target with .to({str(x.device)!r})")
        device = self.net.layers[0].weight.device
        if device != x.device or (self.weight is not None and self.weight.device != x.device):
            where = device if device != x.device else self.weight.device
            raise ValueError(f"the logits are on {x.device} but the loss is on {where}: move it with "
                             f"criterion.to({str(x.device)!r}) (or model.to(...) if the model holds it)")

    def _check_class_indices(self, x: torch.Tensor, target: torch.Tensor, finite: bool = True) -> int:
        """Labels in range (or ignored) and (``finite``) finite logits; returns how many targets are ignored."""
        k = x.shape[1]
        lo, hi = torch.aminmax(target)
        parts = [lo, hi, (target == self.ignore_index).sum() if self.ignore_index is not None else torch.zeros_like(lo)]
        lo, hi, ignored = torch.stack(parts).tolist()
        if ignored:  # the range check must skip the ignored targets
            kept = target[target != self.ignore_index]
            lo, hi = (int(kept.min()), int(kept.max())) if kept.numel() else (0, 0)
        if lo < 0 or hi >= k:
            raise ValueError(f"target labels must lie in [0, {k}) (or equal ignore_index={self.ignore_index}), found values in [{lo}, {hi}]")
        if finite:
            _check_logits_finite(x)
        return int(ignored)

    def _warn_once(self, logits: torch.Tensor, checking: bool) -> None:
        """The first call's warnings, on the logits as given (before any prior shifts them, which
        would hide probabilities passed for logits): probabilities instead of logits, and a loss
        evolved for use with the class prior used without one."""
        if checking and not self._warned_probabilities and logits.shape[0]:
            self._warned_probabilities = True
            _warn_if_probabilities(logits)
        if not self._warned_no_prior and (self.log_prior is None or not self.prior_strength) and evolved_with_prior(self.metadata):
            self._warned_no_prior = True
            warnings.warn("this loss was evolved to be used with the class prior (its world was long-tailed and prior-aware), "
                          "but it has none here: pass class_counts=<per-class training counts> (and prior_strength > 0), "
                          "or use a loss evolved without the prior (EDLLoss.pretrained())", stacklevel=5)

    def _row_losses(self, x: torch.Tensor, target: torch.Tensor, given: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Per-row penalty l(p, y) (times scale), through the fused closed form when allowed. Under
        ``torch.compile`` with ``check_inputs`` the operator checks the ``given`` targets (ignored
        ones included) and the logits when the graph runs: at trace time there are no values."""
        if self._fused_ok(x):
            check = given if given is not None and self.check_inputs and torch.compiler.is_compiling() else None
            return fused_losses(x, target, self.net, self.scale, reduce=False, check_target=check, ignore_index=self.ignore_index)
        logp = torch.log_softmax(x, dim=1)
        return self.net(logp, target) * self.scale, logp.gather(1, target[:, None]).squeeze(1)

    def _class_index_loss(self, x: torch.Tensor, target: torch.Tensor, checking: bool) -> tuple[torch.Tensor, torch.Tensor]:
        k = x.shape[1]
        valid = None if self.ignore_index is None else target != self.ignore_index
        safe = target if valid is None else torch.where(valid, target, torch.zeros((), dtype=target.dtype, device=target.device))
        loss, logp_y = self._row_losses(x, safe, target)
        if checking:  # a -inf target logit (a masked target) gives an infinite loss: say so
            _check_finite(x, logp_y if valid is None else torch.where(valid, logp_y, 0.0))
        row_weight = None if self.weight is None else self.weight.to(x.dtype)[safe]
        if self.label_smoothing > 0:
            eps = self.label_smoothing
            every = self._all_label_losses(x)  # (M, C)
            smooth = (every * self.weight.to(x.dtype)).sum(1) if self.weight is not None else every.sum(1)
            loss = (1 - eps) * (loss if row_weight is None else loss * row_weight) + (eps / k) * smooth
        elif row_weight is not None:
            loss = loss * row_weight
        if valid is not None:
            loss = torch.where(valid, loss, torch.zeros((), dtype=loss.dtype, device=loss.device))
        if self.reduction != "mean":
            return loss, loss.new_ones(())
        # CE's weighted mean: divide by the summed weight of the counted targets. Where nothing is
        # counted CE returns NaN; we return 0 with a zero gradient (never a silent NaN).
        if row_weight is None:
            counted = loss.new_tensor(float(loss.shape[0])) if valid is None else valid.sum().to(loss.dtype)
        else:
            counted = row_weight.sum() if valid is None else torch.where(valid, row_weight, 0.0).sum()
        return loss, counted.clamp_min(torch.finfo(loss.dtype).tiny)

    def _soft_target_loss(self, x: torch.Tensor, probs: torch.Tensor, checking: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """E_{y~t} l(p, y) = sum_y t_y l(p, y) per row; CE's rules: weights multiply each class's
        term, label smoothing mixes t with the uniform distribution, the mean divides by the rows.

        A class the target gives no mass contributes nothing, even where its logit is -Inf (a
        mask, as for class indices): its l(p, c) is infinite, and 0 * inf would be NaN."""
        if checking:
            _check_probabilities(probs)  # a target's mass on a -Inf logit is an infinite loss: say so
            _check_finite(x, torch.where(probs > 0, torch.log_softmax(x.detach(), 1), 0.0).sum(1))
        k = x.shape[1]
        if self.label_smoothing > 0:
            probs = probs * (1 - self.label_smoothing) + self.label_smoothing / k
        # a massless class is evaluated at the row's likeliest label instead (finite, so no NaN
        # reaches the gradient either) and weighted 0
        classes = torch.arange(k, device=x.device)[None, :]
        labels = torch.where(probs > 0, classes, probs.argmax(1, keepdim=True))
        every = self._all_label_losses(x, labels)
        terms = every * probs if self.weight is None else every * probs * self.weight.to(x.dtype)
        loss = terms.sum(1)
        return loss, loss.new_tensor(float(loss.shape[0]))

    def _all_label_losses(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """l(p, c) for every class c of every row, (M, C), or for the given labels (M, L). One network
        evaluation per label and row (autograd)."""
        from edloss.features import label_features

        logp = torch.log_softmax(x, dim=1)
        if labels is None:
            labels, logp_labels = torch.arange(x.shape[1], device=x.device)[None, :], logp
        else:
            logp_labels = logp.gather(1, labels)
        feats = label_features(logp, labels, self.net.config.features)  # (M, L, F)
        out = self.net.forward_features(feats)
        if self.net.config.has_base:
            out = out + base_penalty(self.net.config, logp_labels, x.shape[1])
        return out * self.scale

    def extra_repr(self) -> str:
        cfg = self.net.config
        prior = "none" if self.class_counts is None else f"class_counts={_short_list(self.class_counts)}, prior_strength={self.prior_strength:g}"
        return (
            f"form={cfg.form}, features={list(cfg.features)}, hidden={list(cfg.hidden)}, activation={cfg.activation}, "
            f"scale={self.scale:.4g}, reduction={self.reduction}, ignore_index={self.ignore_index}, "
            f"label_smoothing={self.label_smoothing}, weighted={self.weight is not None}, prior={prior}"
            + (", evolved_with_prior=True" if evolved_with_prior(self.metadata) else "")
        )

    # ------------------------------------------------------------------ files
    @classmethod
    def pretrained(cls, name: str | None = None, *, noise_rate: float | None = None,
                   num_classes: int | None = None, **kwargs: Any) -> EDLLoss:
        """A loss shipped inside the package (made by ``edloss pretrain``; see its loss.json).

        ``name``: a shipped loss (``shipped_names()``); left out, the one for your regime below,
        else ``default``.
        ``noise_rate``: the share of training labels you expect to be wrong (symmetric noise), in
        [0, 0.8]: 0 is the default loss, otherwise the shipped loss pretrained for the nearest
        rate (``noise-0.2`` ... ``noise-0.8``, made by ``edloss pretrain --label-noise ETA``).
        ``num_classes`` (with ``noise_rate``): your class count K. Where a loss pretrained for that
        K ships (``noise-0.4-k10``: ``--classes 10``), it is used: under noise the class count
        changes what a label is worth, and on noisy CIFAR-10 the K = 10 losses were measured far
        better than the ones pretrained over K in [2, 1000] (README). Otherwise the general loss
        of that rate; ``edloss pretrain --label-noise ETA --classes K`` makes yours in minutes.
        ``num_classes`` alone (clean labels): ``default-kK`` where one ships for your K (it would be
        chosen on the regime matrix's calibration regimes: docs/results/regimes.md; none ships
        today), else ``default``, pretrained over every K from 2 to 1000. ``loss.metadata`` says
        which one you got.
        ``class_counts`` (per-class training counts; see ``EDLLoss``): the loss is told the prior,
        and where the counts are steeply long-tailed (largest / smallest >= ``LONGTAIL_MIN_IMBALANCE``,
        30) over K classes for which a long-tail loss ships (``longtail-k10``: evolved in the
        long-tail students world at K = 10, imbalance 100) and no ``name`` or ``noise_rate`` is
        given, it is that loss: on CIFAR-10-LT it beat the default's weights at imbalance 100 and
        30 and lost to them at 10. Otherwise (equal or milder counts, other K) the default's
        weights, told the prior.
        Keyword arguments are ``EDLLoss``'s (weight, ignore_index, reduction, label_smoothing, ...)."""
        name = shipped_loss_name(name, noise_rate, num_classes, kwargs.get("class_counts"), kwargs.get("prior_strength"))
        with resources.as_file(_weights() / name) as path:
            return cls.from_file(path, **kwargs)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], *, noise_rate: float | None = None,
                  allow_unverified: bool = False, **kwargs: Any) -> EDLLoss:
        """Load a checkpoint folder (or its loss.json / loss.safetensors), verifying both checksums,
        the field types and that every weight is finite. ``noise_rate``, if given, must be the
        rate the loss was pretrained for (a file holds one loss; nothing is guessed).
        ``allow_unverified=True`` loads a format-1 file, whose definition no checksum covers."""
        folder, meta, net = read_checkpoint(path, noise_rate, allow_unverified)
        provenance = meta.get("provenance", {})
        if isinstance(provenance.get(NOT_MONOTONE), str):  # e.g. v3: shipped for comparison, not for use
            warnings.warn(f"{folder.name}: this loss is not monotone: {provenance[NOT_MONOTONE]}", stacklevel=2)
        if "prior" in meta and kwargs.get("class_counts") is None:  # saved told a prior: it is part of the loss
            kwargs["class_counts"] = meta["prior"]["class_counts"]
            kwargs.setdefault("prior_strength", meta["prior"]["prior_strength"])
        return cls(net, scale=meta["scale"], metadata=provenance, **kwargs)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write ``loss.safetensors`` and ``loss.json`` into the folder ``path``; returns it."""
        prior = None if self.class_counts is None else {"class_counts": list(self.class_counts), "prior_strength": self.prior_strength}
        return write_checkpoint(Path(path), self.net, self.scale, self.metadata, prior)


# torch >= 2.4 says which device types autocast knows (not the meta device); before, assume all but meta
_autocast_available = getattr(torch.amp, "is_autocast_available", lambda device_type: device_type != "meta")


def _short_list(values: list[int], shown: int = 6) -> str:
    """[5000, 2997, ..., 50] for a repr: a long count list would drown the rest."""
    if len(values) <= shown:
        return str(values)
    return "[" + ", ".join(map(str, values[: shown - 1])) + f", ..., {values[-1]}] ({len(values)} classes)"
