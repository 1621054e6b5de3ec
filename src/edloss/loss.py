"""``EDLLoss``: a pretrained loss network used exactly like ``nn.CrossEntropyLoss``.

A checkpoint is a folder with two files:

* ``loss.safetensors``: the network's weights (safetensors: no pickle, so loading one is safe);
* ``loss.json``: format name and version, the network's architecture, the scale that anchors the
  gradient at the uniform prediction to cross-entropy's, the sha256 of the weights file, and the
  provenance of the loss (pretraining config, seed, command, synthetic metrics).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import warnings
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import nn

from edloss.features import feature_with_gradient, row_stats
from edloss.files import atomic_write_bytes, atomic_write_json
from edloss.lossnet import LossNet, LossNetConfig

FORMAT_NAME = "edloss-loss"
FORMAT_VERSION = 1
WEIGHTS_FILE = "loss.safetensors"
CONFIG_FILE = "loss.json"
REDUCTIONS = ("mean", "sum", "none")


class EDLLoss(nn.Module):
    """Evolutionary Dynamic Loss: ``loss = scale * softplus(MLP(features(log_softmax(logits), target)))``.

    Args:
        net: the loss network.
        scale: multiplies the network's output; set at export so that the gradient norm at the
            uniform prediction equals cross-entropy's, which lets CE's learning rates carry over.
        reduction: "mean", "sum" or "none", as in ``nn.CrossEntropyLoss``.
        ignore_index: targets equal to it contribute nothing (and are not counted by "mean").
        check_inputs: validate shapes, label range and finiteness (one host sync per call).
            Skipped automatically under ``torch.compile``.
        fused: in eager mode, compute the logit gradient in closed form during the forward pass
            (several times faster than autograd for this many tiny ops). The loss is then
            differentiable once, with respect to the logits only; pass ``fused=False`` for
            double backward or to train the loss network itself. ``torch.compile`` always
            traces the plain autograd path, which it fuses anyway.
        metadata: provenance saved with the checkpoint.
    """

    def __init__(
        self,
        net: LossNet,
        scale: float = 1.0,
        reduction: str = "mean",
        ignore_index: int = -100,
        check_inputs: bool = True,
        fused: bool = True,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
        if not (math.isfinite(scale) and scale > 0):
            raise ValueError(f"scale must be a finite positive number, got {scale}")
        self.net = net
        self.register_buffer("scale", torch.tensor(float(scale)))
        self.reduction = reduction
        self.ignore_index = ignore_index
        self.check_inputs = check_inputs
        self.fused = fused
        self.metadata = dict(metadata or {})

    # ------------------------------------------------------------------ forward
    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        _check_types(logits, target)
        valid = target != self.ignore_index
        if self.check_inputs and not torch.compiler.is_compiling():
            _check_values(logits, target, valid)
        safe_target = torch.where(valid, target, torch.zeros_like(target))
        with torch.autocast(device_type=logits.device.type, enabled=False):
            if self.fused and self.net.has_closed_form_gradient and not torch.compiler.is_compiling():
                loss = _ClosedFormLoss.apply(logits.float(), safe_target, self.net, self.scale)
            else:
                loss = self.net(torch.log_softmax(logits.float(), dim=1), safe_target) * self.scale
        loss = torch.where(valid, loss, torch.zeros_like(loss))
        if self.reduction == "none":
            return loss
        if self.reduction == "sum":
            return loss.sum()
        return loss.sum() / valid.sum().clamp_min(1)

    def extra_repr(self) -> str:
        cfg = self.net.config
        return (
            f"features={list(cfg.features)}, hidden={list(cfg.hidden)}, activation={cfg.activation}, "
            f"scale={self.scale.item():.4g}, reduction={self.reduction}"
        )

    # ------------------------------------------------------------------ files
    @classmethod
    def pretrained(cls, name: str = "default", **kwargs: Any) -> EDLLoss:
        """The loss shipped inside the package (made by ``edloss pretrain``; see its loss.json)."""
        folder = resources.files("edloss") / "weights" / name
        if not folder.is_dir():
            available = sorted(p.name for p in (resources.files("edloss") / "weights").iterdir() if p.is_dir())
            raise FileNotFoundError(f"no shipped loss named {name!r}; available: {available}")
        with resources.as_file(folder) as path:
            return cls.from_file(path, **kwargs)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], **kwargs: Any) -> EDLLoss:
        """Load a checkpoint folder (or its loss.json / loss.safetensors), verifying its checksum."""
        folder = _checkpoint_folder(Path(path))
        meta = _read_config(folder / CONFIG_FILE)
        blob = _read_bytes(folder / WEIGHTS_FILE)
        digest = hashlib.sha256(blob).hexdigest()
        if digest != meta["sha256"]:
            raise ValueError(
                f"checksum mismatch for {folder / WEIGHTS_FILE}: the weights were modified or truncated "
                f"after saving (sha256 {digest[:12]}..., expected {meta['sha256'][:12]}...). "
                "Re-export the loss with `edloss pretrain` or restore the original files."
            )
        try:
            tensors = load_safetensors(blob)
        except Exception as err:  # noqa: BLE001 - any parse failure means a corrupt file
            raise ValueError(f"{folder / WEIGHTS_FILE} is not a valid safetensors file ({err})") from err
        config = LossNetConfig(**meta["lossnet"])
        net = LossNet(config)
        try:
            net.load_flat(tensors["theta"])
        except (KeyError, ValueError) as err:
            raise ValueError(f"{folder / WEIGHTS_FILE} does not match its loss.json architecture: {err}") from err
        return cls(net, scale=meta["scale"], metadata=meta.get("provenance", {}), **kwargs)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write ``loss.safetensors`` and ``loss.json`` into the folder ``path``; returns it."""
        from edloss import __version__

        folder = Path(path)
        blob = save_safetensors({"theta": self.net.flat().float().contiguous()})
        cfg = self.net.config
        meta = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "edloss_version": __version__,
            "lossnet": {"features": list(cfg.features), "hidden": list(cfg.hidden), "activation": cfg.activation},
            "scale": float(self.scale),
            "sha256": hashlib.sha256(blob).hexdigest(),
            "provenance": self.metadata,
        }
        atomic_write_bytes(folder / WEIGHTS_FILE, blob)
        atomic_write_json(folder / CONFIG_FILE, meta)
        return folder


class _ClosedFormLoss(torch.autograd.Function):
    """Per-row loss whose logit gradient is assembled in closed form during the forward pass.

    d loss / d z = sum_f (d loss / d feature_f) * (d feature_f / d z), and every feature gradient
    is a combination of e_y, e_c (best wrong class), p and p * log p (see ``features``).
    """

    @staticmethod
    def forward(ctx: Any, logits: torch.Tensor, target: torch.Tensor, net: LossNet, scale: torch.Tensor) -> torch.Tensor:
        stats = row_stats(torch.log_softmax(logits, dim=1), target)
        values, coefficients = zip(*(feature_with_gradient(name, stats) for name in net.config.features))
        loss, feature_grad = net.value_and_input_grad(torch.stack(values, dim=1))
        total: dict[str, torch.Tensor] = {}
        for f, coefs in enumerate(coefficients):
            for key, coef in coefs.items():
                term = feature_grad[:, f] * coef
                total[key] = total[key] + term if key in total else term
        zero = feature_grad.new_zeros(())
        grad = stats.p * (total.get("p", zero)[..., None] + total.get("plogp", zero)[..., None] * stats.logp.clamp_min(-1e4))
        grad = grad.expand_as(stats.p).contiguous() if grad.shape != stats.p.shape else grad
        if "y" in total:
            grad.scatter_add_(1, target[:, None], total["y"][:, None])
        if "c" in total:
            grad.scatter_add_(1, stats.rival[:, None], total["c"][:, None])
        ctx.save_for_backward(grad * scale)
        return loss * scale

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        (grad,) = ctx.saved_tensors
        return grad_output[:, None] * grad, None, None, None


def _check_types(logits: torch.Tensor, target: torch.Tensor) -> None:
    """Shape and dtype checks: free (no device sync), so always on."""
    if not isinstance(logits, torch.Tensor) or not isinstance(target, torch.Tensor):
        raise TypeError(f"EDLLoss expects tensors (logits, target), got {type(logits).__name__}, {type(target).__name__}")
    if not logits.is_floating_point():
        raise TypeError(f"logits must be a floating-point tensor, got {logits.dtype}")
    if logits.dim() != 2:
        raise ValueError(
            f"logits must be 2-D (N, K), got shape {tuple(logits.shape)}; "
            "for (N, K, d1, ...) outputs move K last and flatten: logits.movedim(1, -1).reshape(-1, K)"
        )
    if logits.shape[1] < 2:
        raise ValueError(f"need at least 2 classes, got logits of shape {tuple(logits.shape)}")
    if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
        raise TypeError(
            f"target must hold integer class indices (int64), got {target.dtype}; "
            "for one-hot or soft labels pass target.argmax(dim=1)"
        )
    if target.dim() != 1 or target.shape[0] != logits.shape[0]:
        raise ValueError(f"target must have shape ({logits.shape[0]},) to match logits {tuple(logits.shape)}, got {tuple(target.shape)}")
    if logits.shape[0] == 0:
        raise ValueError("empty batch: logits has 0 rows")


def _check_values(logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> None:
    """Label range, finiteness and the probabilities-instead-of-logits mistake, in one host sync."""
    k = logits.shape[1]
    detached = logits.detach()
    labels = target[valid]
    stats = torch.stack(
        [
            torch.isfinite(detached).all().to(torch.float64),
            labels.min().to(torch.float64) if labels.numel() else torch.zeros((), dtype=torch.float64),
            labels.max().to(torch.float64) if labels.numel() else torch.zeros((), dtype=torch.float64),
            ((detached.min() >= 0) & (detached.max() <= 1) & ((detached.float().sum(1) - 1).abs().max() < 1e-3)).to(torch.float64),
        ]
    ).tolist()
    finite, lo, hi, looks_like_probs = stats
    if not finite:
        bad = (~torch.isfinite(detached)).any(dim=1).nonzero().flatten()[:5].tolist()
        raise ValueError(f"logits contain NaN or Inf (rows {bad}...); the model diverged or its inputs are bad - lower the learning rate or check the data")
    if lo < 0 or hi >= k:
        raise ValueError(f"target labels must lie in [0, {k}) (or equal ignore_index), found values in [{int(lo)}, {int(hi)}]")
    if looks_like_probs and k > 1:
        warnings.warn(
            "every row of logits lies in [0, 1] and sums to 1: these look like probabilities. "
            "EDLLoss applies log_softmax itself; pass raw logits (drop the softmax).",
            stacklevel=3,
        )


def _checkpoint_folder(path: Path) -> Path:
    folder = path.parent if path.name in (WEIGHTS_FILE, CONFIG_FILE) else path
    if not folder.is_dir():
        raise FileNotFoundError(f"no EDL loss checkpoint at {path}: expected a folder holding {CONFIG_FILE} and {WEIGHTS_FILE}")
    return folder


def _read_bytes(path: Path) -> bytes:
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file {path} is missing; a checkpoint folder holds {CONFIG_FILE} and {WEIGHTS_FILE}")
    return path.read_bytes()


def _read_config(path: Path) -> dict[str, Any]:
    try:
        meta = json.loads(_read_bytes(path))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON (truncated or edited?): {err}") from err
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
        raise ValueError(f"{path} is not an edloss loss checkpoint (format {meta.get('format') if isinstance(meta, dict) else None!r})")
    version = meta.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ValueError(
            f"{path} has format version {version}, newer than this edloss understands ({FORMAT_VERSION}); "
            "upgrade edloss: pip install -U edloss"
        )
    for key in ("lossnet", "scale", "sha256"):
        if key not in meta:
            raise ValueError(f"{path} lacks the field {key!r}; the checkpoint is incomplete")
    return meta
