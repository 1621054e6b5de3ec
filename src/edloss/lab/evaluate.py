"""Evaluating a model: mean NLL and accuracy over a loader, with calibration (ECE, reliability
bins, per-class accuracy, the logits for temperature scaling) for the final test; and the check
that no weight became NaN/Inf."""

from __future__ import annotations

import contextlib
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from edloss.lab.calibration import ECE_BINS, confidence_bins, ece_of_bins
from edloss.lab.data import BatchLoader


def _autocast(device: torch.device, enabled: bool):
    """bf16 autocast on ``device`` when ``enabled`` (``recipe.autocast_on`` decides, per device)."""
    if enabled and device.type in ("cuda", "cpu"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def evaluate(model: nn.Module, loader: BatchLoader, amp: bool = False, calibration: bool = False,
             adjust: torch.Tensor | None = None,
             keep_logits: bool = False) -> tuple[float, float] | tuple[float, float, dict[str, Any]]:
    """Mean cross-entropy (the NLL) and accuracy over a loader (whatever loss the model trained
    with); with ``calibration``, also the top-label expected calibration error, the
    reliability bins (count, mean confidence, accuracy per equal-width confidence bin) and the
    accuracy per class (``class_acc``); with ``adjust`` (K,) too, the accuracy per class of the
    predictions argmax(logits - adjust) (``class_acc_adjusted``: post-hoc logit adjustment); with
    ``keep_logits`` too, every logit and label (``logits``, ``labels``, on the CPU) for temperature
    scaling."""
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=loader.device)
    correct = torch.zeros((), dtype=torch.int64, device=loader.device)
    bins = torch.zeros(3, ECE_BINS, dtype=torch.float64, device=loader.device)  # count, confidence, correct
    per_class: torch.Tensor | None = None  # (3, K): images, hits, hits after adjustment
    count = 0
    kept: list[tuple[torch.Tensor, torch.Tensor]] = []
    for x, y in loader:
        with _autocast(loader.device, amp):
            logits = model(x)
        logits = logits.float()
        if keep_logits:
            kept.append((logits.cpu(), y.cpu()))
        loss_sum += F.cross_entropy(logits, y, reduction="sum").double()
        hit = logits.argmax(1) == y
        correct += hit.sum()
        count += y.numel()
        if calibration:
            confidence = logits.softmax(1).amax(1).double()
            bins += confidence_bins(confidence, hit)
            if per_class is None:
                per_class = torch.zeros(3, logits.shape[1], dtype=torch.float64, device=loader.device)
            adjusted = hit if adjust is None else (logits - adjust.to(logits.device)).argmax(1) == y
            for row, value in enumerate((torch.ones_like(confidence), hit.double(), adjusted.double())):
                per_class[row].index_add_(0, y, value)
    nll, accuracy = (loss_sum / count).item(), (correct.double() / count).item()
    if not calibration:
        return nll, accuracy
    ece = ece_of_bins(bins)
    n, conf, hits = bins.tolist()
    reliability = {"count": n, "confidence": [c / k if k else None for c, k in zip(conf, n)],
                   "accuracy": [h / k if k else None for h, k in zip(hits, n)]}
    out = {"ece": ece, "bins": ECE_BINS, "reliability": reliability}
    if keep_logits:
        out["logits"], out["labels"] = (torch.cat(part) for part in zip(*kept))
    if per_class is not None:
        images, right, right_adjusted = per_class.tolist()
        out["class_acc"] = [h / k if k else None for h, k in zip(right, images)]
        if adjust is not None:
            out["class_acc_adjusted"] = [h / k if k else None for h, k in zip(right_adjusted, images)]
    return nll, accuracy, out


def nonfinite_state(model: nn.Module) -> str | None:
    """The name of the first parameter or buffer holding NaN/Inf, or None: a step can blow the
    weights up after the last loss was computed, so a finite training loss alone proves nothing."""
    for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            return name
    return None
