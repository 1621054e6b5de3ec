"""``EDLLoss``: a pretrained loss network used exactly like ``nn.CrossEntropyLoss``.

Same constructor arguments (``weight``, ``ignore_index``, ``reduction``, ``label_smoothing``), same
input shapes ((N, C), (C,), (N, C, d1, ...)), class-index or probability targets, and CE's rules
for weighted means and ignored elements. For a probability target t the loss is the expected
penalty E_{y~t} l(p, y) = sum_y t_y l(p, y): the quantity the pretraining objective ranks.

A checkpoint is a folder with two files:

* ``loss.safetensors``: the network's weights (safetensors: no pickle, so loading one is safe);
* ``loss.json``: format name and version, the network's architecture, the scale that anchors the
  gradient at the uniform prediction to cross-entropy's, two sha256 sums (of the weights, and of
  the weights together with every other field that decides behaviour: architecture, scale and,
  from format 3 on, the provenance, which holds the noise rate ``from_file(noise_rate=...)``
  checks and the notes a load warns with), the provenance and, for a loss told the class prior
  (format 4), ``prior``: its class counts and tau, which a load restores.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import warnings
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import nn
from torch.autograd import forward_ad

from edloss.fused_op import _spec_cached, fused_losses
from edloss.files import atomic_write_bytes, atomic_write_json
from edloss.lossnet import LossNet, LossNetConfig, base_penalty

FORMAT_NAME = "edloss-loss"
FORMAT_VERSION = 4  # 2: definition_sha256 covers the architecture and scale too; 3: the provenance too; 4: the prior
PRIORLESS_FORMAT_VERSION = 3  # what a loss without a prior is saved as: every edloss since format 3 reads it
WEIGHTS_FILE = "loss.safetensors"
CONFIG_FILE = "loss.json"
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
        ``class_counts`` (per-class training counts; see ``EDLLoss``): the loss is told the prior,
        and where the counts are steeply long-tailed (largest / smallest >= ``LONGTAIL_MIN_IMBALANCE``,
        30) over K classes for which a long-tail loss ships (``longtail-k10``: evolved in the
        long-tail students world at K = 10, imbalance 100) and no ``name`` or ``noise_rate`` is
        given, it is that loss: on CIFAR-10-LT it beat the default's weights at imbalance 100 and
        30 and lost to them at 10. Otherwise (equal or milder counts, other K) the default's
        weights, told the prior.
        Keyword arguments are ``EDLLoss``'s (weight, ignore_index, reduction, label_smoothing, ...)."""
        if num_classes is not None and noise_rate is None:
            raise ValueError("num_classes picks among the noise-aware losses: pass noise_rate too "
                             "(the clean default loss serves every class count)")
        if noise_rate is not None:
            name = _noise_loss_name(name or "default", noise_rate, num_classes)
        elif name is None:
            name = regime_loss_name(kwargs.get("class_counts"), kwargs.get("prior_strength"))
        if not is_shipped(name):
            raise FileNotFoundError(f"no shipped loss named {name!r}; available: {shipped_names()}")
        with resources.as_file(_weights() / name) as path:
            return cls.from_file(path, **kwargs)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], *, noise_rate: float | None = None,
                  allow_unverified: bool = False, **kwargs: Any) -> EDLLoss:
        """Load a checkpoint folder (or its loss.json / loss.safetensors), verifying both checksums,
        the field types and that every weight is finite. ``noise_rate``, if given, must be the
        rate the loss was pretrained for (a file holds one loss; nothing is guessed).
        ``allow_unverified=True`` loads a format-1 file, whose definition no checksum covers."""
        if isinstance(path, bool) or not isinstance(path, (str, os.PathLike)) or not str(path).strip():
            raise TypeError(f"path must name a checkpoint folder (holding {CONFIG_FILE} and {WEIGHTS_FILE}), got {path!r}")
        if not isinstance(allow_unverified, bool):
            raise TypeError(f"allow_unverified must be True or False, got {allow_unverified!r}")
        folder = _checkpoint_folder(Path(path))
        meta = _read_config(folder / CONFIG_FILE, allow_unverified)
        if noise_rate is not None:
            if not _is_rate(noise_rate) or not 0 <= noise_rate <= PRETRAIN_NOISE_MAX:
                raise ValueError(f"noise_rate must be a number in [0, {PRETRAIN_NOISE_MAX}] (the share of wrong labels the loss "
                                 f"was pretrained for), got {noise_rate!r}")
            trained = pretrained_noise_rate(meta)
            if abs(trained - noise_rate) > 1e-9:
                raise ValueError(f"{folder} was pretrained for label noise {trained:g}, not {noise_rate!r}; "
                                 f"pretrain one with `edloss pretrain --label-noise {noise_rate}`, or use "
                                 "EDLLoss.pretrained(noise_rate=...) for the shipped ones")
        blob = _read_bytes(folder / WEIGHTS_FILE)
        digest = hashlib.sha256(blob).hexdigest()
        if digest != meta["sha256"]:
            raise ValueError(
                f"checksum mismatch for {folder / WEIGHTS_FILE}: the weights were modified or truncated "
                f"after saving (sha256 {digest[:12]}..., expected {meta['sha256'][:12]}...). "
                "Re-export the loss with `edloss pretrain` or restore the original files."
            )
        if meta["format_version"] >= 2 and definition_digest(meta, blob) != meta["definition_sha256"]:
            covered = "architecture, scale or provenance" if meta["format_version"] >= 3 else "architecture or scale"
            raise ValueError(
                f"{folder / CONFIG_FILE} was edited after saving: its {covered} no longer match "
                "definition_sha256, so the file would define a different loss. Restore the original loss.json."
            )
        try:
            tensors = load_safetensors(blob)
        except Exception as err:  # noqa: BLE001 - any parse failure means a corrupt file
            raise ValueError(f"{folder / WEIGHTS_FILE} is not a valid safetensors file ({err})") from err
        try:  # files written before the monotone form existed hold free-form networks
            config = LossNetConfig(**{"form": "free", **meta["lossnet"]})
        except (TypeError, ValueError) as err:
            raise ValueError(f"{folder / CONFIG_FILE}: invalid field 'lossnet': {err}") from err
        net = LossNet(config)
        theta = tensors.get("theta")
        if theta is None or not torch.isfinite(theta).all():
            raise ValueError(f"{folder / WEIGHTS_FILE} holds no 'theta' tensor or non-finite weights; the loss cannot be used")
        if theta.dim() != 1:
            raise ValueError(f"{folder / WEIGHTS_FILE}: 'theta' must be a flat vector, got shape {tuple(theta.shape)}")
        try:
            net.load_flat(theta)
        except ValueError as err:
            raise ValueError(f"{folder / WEIGHTS_FILE} does not match its loss.json architecture: {err}") from err
        provenance = meta.get("provenance", {})
        if isinstance(provenance.get(NOT_MONOTONE), str):  # e.g. v3: shipped for comparison, not for use
            warnings.warn(f"{folder.name}: this loss is not monotone: {provenance[NOT_MONOTONE]}", stacklevel=2)
        if "prior" in meta and kwargs.get("class_counts") is None:  # saved told a prior: it is part of the loss
            kwargs["class_counts"] = meta["prior"]["class_counts"]
            kwargs.setdefault("prior_strength", meta["prior"]["prior_strength"])
        return cls(net, scale=meta["scale"], metadata=provenance, **kwargs)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write ``loss.safetensors`` and ``loss.json`` into the folder ``path``; returns it."""
        from edloss import __version__

        folder = Path(path)
        blob = save_safetensors({"theta": self.net.flat().float().contiguous()})
        meta = {
            "format": FORMAT_NAME,
            # a loss told a prior is format 4, which an edloss that cannot restore the prior refuses
            "format_version": FORMAT_VERSION if self.class_counts is not None else PRIORLESS_FORMAT_VERSION,
            "edloss_version": __version__,
            "lossnet": lossnet_fields(self.net.config),
            "scale": float(self.scale),
            "sha256": hashlib.sha256(blob).hexdigest(),
        }
        if self.class_counts is not None:
            meta["prior"] = {"class_counts": list(self.class_counts), "prior_strength": self.prior_strength}
        provenance = json.loads(json.dumps(self.metadata))  # the digest covers what a load will read back
        meta["definition_sha256"] = definition_digest({**meta, "provenance": provenance}, blob)
        meta["provenance"] = provenance
        atomic_write_bytes(folder / WEIGHTS_FILE, blob)
        atomic_write_json(folder / CONFIG_FILE, meta)
        return folder


NOISE_RANGE = (0.0, 0.8)
PRETRAIN_NOISE_MAX = 0.99  # the largest --label-noise pretraining takes
NOT_MONOTONE = "not_monotone"  # a provenance field: where the loss was measured to push a logit the wrong way


def _is_rate(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)


def _weights() -> Any:
    """The package's folder of shipped losses (an importlib Traversable: a wheel may be zipped)."""
    return resources.files("edloss") / "weights"


def shipped_names() -> list[str]:
    """The names ``EDLLoss.pretrained(name)`` accepts, sorted."""
    root = _weights()
    return sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []


def is_shipped(name: Any) -> bool:
    """Whether the package ships a loss of this name (``EDLLoss.pretrained(name)``); "." and ".."
    are folders too, but no loss."""
    return isinstance(name, str) and name in shipped_names()


def pretrained_noise_rate(meta: dict[str, Any]) -> float:
    """The label-noise rate a checkpoint was pretrained for (0 for clean labels, or where the
    provenance does not record one as a number): the ranking objective's ``label_noise``, or for
    a loss evolved in the students world (``objective.kind = "students"``) its world's."""
    provenance = meta.get("provenance", {})
    config = provenance.get("config", {}) if isinstance(provenance, dict) else {}
    config = config if isinstance(config, dict) else {}
    objective = config.get("objective", {}) if isinstance(config.get("objective"), dict) else {}
    source = config.get("world", {}) if objective.get("kind") == "students" else objective
    rate = source.get("label_noise", 0.0) if isinstance(source, dict) else 0.0
    return float(rate) if _is_rate(rate) else 0.0


NOISE_FOLDER = re.compile(r"noise-(\d+(?:\.\d+)?)(?:-k(\d+))?")  # noise-ETA (any K) or noise-ETA-kK


def shipped_noise_losses() -> dict[tuple[float, int | None], str]:
    """(rate, class count or None for every K) -> folder name, for each shipped noise-aware loss."""
    found = {}
    for name in shipped_names():
        match = NOISE_FOLDER.fullmatch(name)
        if match:
            found[(float(match[1]), int(match[2]) if match[2] else None)] = name
    return found


LONGTAIL_MIN_IMBALANCE = 30.0  # largest / smallest class count from which pretrained() picks a long-tail loss


def regime_loss_name(class_counts: Any, prior_strength: Any = None) -> str:
    """The shipped loss ``EDLLoss.pretrained(class_counts=...)`` picks for these counts (validated):
    ``longtail-kK`` where one ships for their class count K and largest / smallest >=
    LONGTAIL_MIN_IMBALANCE, else ``default`` (told the prior all the same).

    Why both conditions: on CIFAR-10-LT (ResNet-32, 5 epochs, validation and test) the loss evolved
    at K = 10 beat the default's weights at imbalance 100 (3 seeds) and 30 (2 seeds) and lost at 10
    (3 of 3 seeds: 52.30 vs 56.01), where the students world (benchmarks/longtail_threshold.py)
    had it winning from 10 up: CIFAR decides. At K = 20, 40 and 100 it no longer won in the world,
    and on CIFAR-100-LT the default's weights led (README). ``prior_strength=0`` switches the
    prior off, and a long-tail loss was evolved to be used with it: then the default."""
    if log_prior(class_counts) is None:  # validates the counts
        return "default"
    if prior_strength is not None and _prior_strength(prior_strength) == 0:
        return "default"
    counts = _counts_tensor(class_counts)
    name = f"longtail-k{counts.numel()}"
    if is_shipped(name) and float(counts.max() / counts.min()) >= LONGTAIL_MIN_IMBALANCE:
        return name
    return "default"


def _noise_loss_name(name: str, rate: Any, num_classes: Any = None) -> str:
    """The shipped loss for a noise rate: the default at 0, else the nearest rate's folder, the
    one pretrained for ``num_classes`` where it ships."""
    lo, hi = NOISE_RANGE
    if not _is_rate(rate) or not lo <= rate <= hi:
        raise ValueError(f"noise_rate must be a number in [{lo}, {hi}] (the share of wrong training labels), got {rate!r}")
    if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2):
        raise ValueError(f"num_classes must be an integer >= 2 (your class count), got {num_classes!r}")
    if name != "default":
        raise ValueError(f"pass either a loss name ({name!r}) or noise_rate, not both")
    if rate == 0:
        return "default"
    shipped = shipped_noise_losses()
    general = sorted(r for r, k in shipped if k is None)
    if not general:
        raise FileNotFoundError("this edloss ships no noise-aware losses; pretrain one with `edloss pretrain --label-noise ETA`")
    nearest = min(general, key=lambda r: (abs(r - rate), r))
    return shipped.get((nearest, num_classes), shipped[(nearest, None)])


def definition_digest(meta: dict[str, Any], blob: bytes) -> str:
    """sha256 of everything that decides behaviour: format, architecture, scale, weights and, from
    format 3 on, the provenance (``from_file(noise_rate=...)`` checks the rate recorded there, and a
    load warns with its notes: an edited provenance would pass a loss off as another)."""
    keys = ("format", "format_version", "lossnet", "scale") + (("provenance",) if meta["format_version"] >= 3 else ())
    keys += ("prior",) if meta["format_version"] >= 4 else ()
    definition = {key: meta.get(key) for key in keys}
    canonical = json.dumps(definition, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(canonical + b"\0" + blob).hexdigest()


def lossnet_fields(cfg: LossNetConfig) -> dict[str, Any]:
    """The architecture as loss.json stores it."""
    return {"features": list(cfg.features), "hidden": list(cfg.hidden), "activation": cfg.activation, "form": cfg.form,
            **({"noise_rate": cfg.noise_rate} if cfg.form == "corrected" else {})}


def definition_tensor(cfg: LossNetConfig, scale: float, prior: tuple[list[int], float] | None = None) -> torch.Tensor:
    """sha256 of the architecture, scale and (for a loss told a prior) class counts and tau as 32
    uint8: a state-dict entry (a tensor, so a state dict stays loadable with ``weights_only`` and
    savable as safetensors) that names the function the weights belong to. Integer, so
    ``.half()`` leaves it alone. A prior-blind loss hashes as before the prior existed, so its
    saved state dicts stay loadable."""
    fields: dict[str, Any] = {"lossnet": lossnet_fields(cfg), "scale": float(scale)}
    if prior is not None:
        fields["prior"] = {"class_counts": list(prior[0]), "prior_strength": float(prior[1])}
    canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"))
    return torch.frombuffer(bytearray(hashlib.sha256(canonical.encode()).digest()), dtype=torch.uint8)


def _values_readable(x: torch.Tensor) -> bool:
    """False where a tensor's values cannot be read: ``torch.compile`` tracing, ``torch.func``
    transforms (grad, vmap, jacrev, ...) and the meta device. There the input checks (a host sync)
    are skipped (under compile the fused operator runs them), and outside compile the plain
    autograd path replaces the fused one (an operator these transforms have no rules for)."""
    return not (torch.compiler.is_compiling() or torch._C._are_functorch_transforms_active() or x.device.type == "meta")


# torch >= 2.4 says which device types autocast knows (not the meta device); before, assume all but meta
_autocast_available = getattr(torch.amp, "is_autocast_available", lambda device_type: device_type != "meta")


# ---------------------------------------------------------------------- input handling
def _as_rows(input: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, tuple[int, ...], bool]:  # noqa: A002
    """CE's shapes -> (rows (M, C), targets (M,) or (M, C), the unreduced output shape, soft?).

    (C,) with () is one sample; (N, C) with (N,); (N, C, d1, ...) with (N, d1, ...); probability
    targets have the input's shape. The class dimension is moved last and the rest flattened."""
    if not isinstance(input, torch.Tensor) or not isinstance(target, torch.Tensor):
        raise TypeError(f"EDLLoss expects tensors (input, target), got {type(input).__name__}, {type(target).__name__}")
    if not input.is_floating_point():
        raise TypeError(f"input (logits) must be a floating-point tensor, got {input.dtype}")
    if input.dim() == 0:
        raise ValueError("input must have a class dimension: (C,), (N, C) or (N, C, d1, ...), got a scalar")
    soft = target.is_floating_point()
    if target.is_complex() or target.dtype == torch.bool:
        raise TypeError(f"target must hold class indices (an integer dtype) or class probabilities (float), got {target.dtype}")
    unbatched = input.dim() == 1
    x = input.unsqueeze(0) if unbatched else input
    t = target.unsqueeze(0) if unbatched else target
    k = x.shape[1]
    if k < 2:
        raise ValueError(f"need at least 2 classes, got input of shape {tuple(input.shape)} (classes are dimension {0 if unbatched else 1})")
    if soft:
        if t.shape != x.shape:
            raise ValueError(f"probability targets must have the input's shape {tuple(input.shape)}, got {tuple(target.shape)}")
    elif t.shape != (x.shape[0], *x.shape[2:]):
        expected = () if unbatched else (x.shape[0], *x.shape[2:])
        raise ValueError(
            f"class-index target must have shape {expected} for input of shape {tuple(input.shape)}, got {tuple(target.shape)} "
            "(for one-hot or soft labels pass float probabilities of the input's shape)"
        )
    if x.numel() == 0:  # deliberately an error, for every reduction: CE's NaN / 0 / [] would hide an empty loader
        raise ValueError(f"empty batch: input of shape {tuple(input.shape)} has no elements (CE would return NaN for the "
                         "mean); skip empty batches in the data loader, e.g. drop_last=True or a check on len(batch)")
    out_shape = tuple(t.shape[:0]) if unbatched else tuple(x.shape[:1] + x.shape[2:])
    if x.dim() > 2:
        x = x.movedim(1, -1).reshape(-1, k)
        t = t.movedim(1, -1).reshape(-1, k) if soft else t.reshape(-1)
    if not soft and t.dtype != torch.long:
        t = t.long()
    return x, t, out_shape, soft


MAX_CLASS_COUNT = 2.0 ** 53  # the largest whole number float64 holds exactly; their sum must stay finite too


def _counts_tensor(class_counts: Any) -> torch.Tensor:
    """Per-class training counts as a float64 CPU tensor, validated: 1-D, at least 2 classes, each a
    finite whole number in [1, 2^53]. Booleans are refused: a class mask is no count."""
    if isinstance(class_counts, (str, bytes, bool)):
        raise ValueError(f"class_counts must be a sequence or 1-D tensor of per-class training counts, got {class_counts!r}")
    try:
        raw = torch.as_tensor(class_counts).detach().cpu()
    except (TypeError, ValueError, RuntimeError) as err:
        raise ValueError(f"class_counts must be a sequence or 1-D tensor of per-class training counts, got {class_counts!r} ({err})") from None
    if raw.dtype == torch.bool or (isinstance(class_counts, (list, tuple)) and any(isinstance(c, bool) for c in class_counts)):
        raise ValueError("class_counts holds booleans (a class mask?); give the number of training examples of each class, "
                         "e.g. torch.bincount(train_labels, minlength=num_classes)")
    if raw.is_complex():
        raise ValueError(f"class_counts must be real whole numbers, got {raw.dtype}")
    counts = raw.to(torch.float64)
    if counts.dim() != 1 or counts.numel() < 2:
        raise ValueError(f"class_counts must be 1-D with one count per class (at least 2), got shape {tuple(counts.shape)}")
    bad = ~torch.isfinite(counts) | (counts <= 0) | (counts != counts.round()) | (counts > MAX_CLASS_COUNT)
    if bad.any():
        i = int(bad.nonzero()[0])
        raise ValueError(f"class_counts must be whole numbers in [1, 2^53] (a class with no training example has no prior); "
                         f"entry {i} is {counts[i].item()!r}")
    return counts


def log_prior(class_counts: Any) -> torch.Tensor | None:
    """log pi_c (float64) from per-class training counts, validated: one finite, positive, whole
    number per class. float64 because the loss adds it in the logits' dtype: float64 logits get
    the exact prior, float32 ones its rounding, as with every other part of the loss."""
    if class_counts is None:
        return None
    counts = _counts_tensor(class_counts)
    prior = (counts / counts.sum()).log()
    if not torch.isfinite(prior).all():  # counts near 2^53 each can sum past what the ratio resolves
        raise ValueError(f"class_counts are too large for their ratios to be computed (sum {float(counts.sum()):.3g}); "
                         "pass the actual per-class training counts")
    return prior


def _prior_strength(value: Any) -> float:
    """tau as a float in [0, 10]: Python, numpy and 0-d torch numbers alike (a bool is no strength)."""
    if not isinstance(value, (bool, int, float)) and tuple(getattr(value, "shape", (0,))) == () and hasattr(value, "item"):
        value = value.item()  # a 0-d tensor or numpy scalar; a bool or complex one stays refused below
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and 0 <= value <= 10):
        raise ValueError(f"prior_strength must be a number in [0, 10] (1: the logit-adjusted loss), got {value!r}")
    return float(value)


def _check_weight(weight: torch.Tensor | None) -> torch.Tensor | None:
    if weight is None:
        return None
    if not isinstance(weight, torch.Tensor) or weight.dim() != 1 or not weight.is_floating_point():
        got = f"a tensor of shape {tuple(weight.shape)}, {weight.dtype}" if isinstance(weight, torch.Tensor) else repr(weight)
        raise ValueError(f"weight must be a 1-D float tensor with one entry per class, got {got}")
    if weight.device.type != "meta" and (not torch.isfinite(weight).all() or (weight < 0).any()):  # meta: no values
        raise ValueError(f"weight must be finite and >= 0, got {weight.tolist()}")
    return weight.detach().float() if weight.dtype != torch.float64 else weight.detach()


def _short_list(values: list[int], shown: int = 6) -> str:
    """[5000, 2997, ..., 50] for a repr: a long count list would drown the rest."""
    if len(values) <= shown:
        return str(values)
    return "[" + ", ".join(map(str, values[: shown - 1])) + f", ..., {values[-1]}] ({len(values)} classes)"


def evolved_with_prior(metadata: dict[str, Any]) -> bool:
    """Whether a loss's provenance says it was evolved to score the logit-adjusted prediction
    (a prior-aware students world: ``longtail-k10``, any ``edloss pretrain --imbalance`` output)."""
    config = metadata.get("config") if isinstance(metadata, dict) else None
    world = config.get("world") if isinstance(config, dict) else None
    objective = config.get("objective") if isinstance(config, dict) else None
    kind = objective.get("kind") if isinstance(objective, dict) else None
    return kind == "students" and isinstance(world, dict) and world.get("prior_aware") is True


def _warn_if_probabilities(x: torch.Tensor) -> None:
    """The probabilities-instead-of-logits mistake, judged on the first row of the first call."""
    first = x[0].detach()
    if float(first.min()) >= 0 and float(first.max()) <= 1 and abs(float(first.sum()) - 1) < 1e-3:
        warnings.warn(
            "the first row of logits lies in [0, 1] and sums to 1: it looks like probabilities. "
            "EDLLoss applies log_softmax itself; pass raw logits (drop the softmax).",
            stacklevel=6,
        )


def _check_finite(x: torch.Tensor, per_row: torch.Tensor) -> None:
    """NaN or +-Inf anywhere in a row makes that row's log-probabilities (and loss) non-finite, so
    checking the per-row values finds bad logits without another pass over (M, C). -Inf in a
    wrong class is a mask, as in CE, and is allowed."""
    if math.isfinite(per_row.detach().sum().item()) or bool(torch.isfinite(per_row).all()):  # the sum: one kernel, not isfinite's four
        return
    rows = (~torch.isfinite(per_row)).nonzero().flatten()[:5].tolist()
    raise ValueError(
        f"logits contain NaN or Inf (rows {rows}...), or a target's logit is -Inf; the model diverged or "
        "its inputs are bad - lower the learning rate or check the data"
    )


def _check_logits_finite(x: torch.Tensor) -> None:
    """NaN or +-Inf logits (-Inf in a wrong class allowed, as a mask), rows named; one host sync."""
    if not math.isfinite(x.detach().sum().item()):  # cheap; on overflow the exact test decides
        _check_finite(x, torch.logsumexp(x.detach(), dim=1))


def _check_probabilities(probs: torch.Tensor) -> None:
    """Finite, >= 0, rows summing to 1; on detached values, so a target that requires grad (a
    teacher's output) reads without torch's requires_grad-to-scalar warning."""
    probs = probs.detach()
    lo, total_err = probs.min(), (probs.sum(1) - 1).abs().max()
    if not bool(torch.isfinite(probs).all()) or float(lo) < 0 or float(total_err) > 1e-3:
        raise ValueError(
            "probability targets must be finite, >= 0 and sum to 1 over the class dimension "
            f"(found min {float(lo):.3g}, largest |sum - 1| {float(total_err):.3g}); for class indices pass an integer tensor"
        )


def loss_folder(path: str | os.PathLike[str]) -> Path | None:
    """The loss folder a path names, as ``edloss inspect`` reads it: a loss folder, its
    ``loss.json`` or ``loss.safetensors``, or a run folder holding ``loss/``; None where none is."""
    path = Path(path)
    folder = path.parent if path.name in (WEIGHTS_FILE, CONFIG_FILE) and path.is_file() else path
    for candidate in (folder, folder / "loss"):
        if (candidate / CONFIG_FILE).is_file():
            return candidate
    return None


def _checkpoint_folder(path: Path) -> Path:
    folder = path.parent if path.name in (WEIGHTS_FILE, CONFIG_FILE) else path
    if not folder.is_dir():
        raise FileNotFoundError(f"no EDL loss checkpoint at {path}: expected a folder holding {CONFIG_FILE} and {WEIGHTS_FILE}")
    return folder


def _read_bytes(path: Path) -> bytes:
    if path.is_dir():
        raise ValueError(f"{path} is a folder, not a file; a checkpoint folder holds the files {CONFIG_FILE} and {WEIGHTS_FILE}")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file {path} is missing; a checkpoint folder holds {CONFIG_FILE} and {WEIGHTS_FILE}")
    return path.read_bytes()


FIELD_TYPES: dict[str, tuple[type, ...]] = {"format": (str,), "format_version": (int,), "lossnet": (dict,), "scale": (float, int), "sha256": (str,)}


def _read_config(path: Path, allow_unverified: bool = False) -> dict[str, Any]:
    """Parse loss.json and check every field that defines the loss: presence, type, range. A
    format-1 file (no definition checksum) only with ``allow_unverified``."""
    try:
        meta = json.loads(_read_bytes(path))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON (truncated or edited?): {err}") from err
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
        raise ValueError(f"{path} is not an edloss loss checkpoint (format {meta.get('format') if isinstance(meta, dict) else None!r})")
    for key, types in FIELD_TYPES.items():
        if key not in meta:
            raise ValueError(f"{path} lacks the field {key!r}; the checkpoint is incomplete")
        value = meta[key]
        if isinstance(value, bool) or not isinstance(value, types):
            raise ValueError(f"{path}: field {key!r} must be {' or '.join(t.__name__ for t in types)}, got {type(value).__name__} {value!r}")
    version = meta["format_version"]
    if version > FORMAT_VERSION or version < 1:
        raise ValueError(f"{path} has format version {version}; this edloss reads 1..{FORMAT_VERSION} (newer: pip install -U edloss)")
    if version >= 2 and not isinstance(meta.get("definition_sha256"), str):
        raise ValueError(f"{path}: field 'definition_sha256' must be a string (format version {version} requires it)")
    if not isinstance(meta.get("provenance", {}), dict):
        raise ValueError(f"{path}: field 'provenance' must be a dict, got {type(meta['provenance']).__name__}")
    if version == 1 and not allow_unverified:
        raise ValueError(f"{path} is format version 1: no checksum covers its architecture, scale or provenance, so an edit "
                         "would load silently. If you trust it, load it with EDLLoss.from_file(path, allow_unverified=True) "
                         "and re-save it with loss.save(path)")
    if version == 1:
        warnings.warn(f"{path} is format version 1, loaded unverified (allow_unverified=True); re-save it with loss.save()", stacklevel=3)
    if version == 2:
        warnings.warn(f"{path} is format version 2: its provenance (the noise rate it was pretrained for) is not checksummed; "
                      "re-save it with loss.save()", stacklevel=3)
    if not (math.isfinite(meta["scale"]) and meta["scale"] > 0):
        raise ValueError(f"{path}: field 'scale' must be a finite positive number, got {meta['scale']!r}")
    if "prior" in meta or version >= 4:
        _check_prior_field(path, meta.get("prior"), version)
    return meta


def _check_prior_field(path: Path, prior: Any, version: int) -> None:
    """loss.json's ``prior`` (format 4): the class counts and tau the loss was saved with."""
    if version < 4:
        raise ValueError(f"{path}: field 'prior' needs format version 4 (found {version}); the file was edited")
    if prior is None:
        return
    if not isinstance(prior, dict) or set(prior) != {"class_counts", "prior_strength"}:
        raise ValueError(f"{path}: field 'prior' must be an object with 'class_counts' and 'prior_strength', got {prior!r}")
    try:
        log_prior(prior["class_counts"])
        _prior_strength(prior["prior_strength"])
    except ValueError as err:
        raise ValueError(f"{path}: invalid field 'prior': {err}") from None
