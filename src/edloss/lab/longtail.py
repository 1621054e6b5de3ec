"""Long-tail bookkeeping shared by the trainer, the comparison summary and the report: which
classes are many-, medium- and few-shot, and the accuracy of each group.

The split: for 100 classes (CIFAR-100-LT) the literature's absolute thresholds (Liu et al. 2019,
used by every CIFAR-100-LT paper since): many > 100 training images, medium 20-100, few < 20.
For any other class count (CIFAR-10-LT: 10 classes, where those thresholds leave the few-shot
group empty at imbalance 100) the classes sorted by training count (most first, ties by class
index) are cut in thirds: the first floor(K/3) many-shot, the last floor(K/3) few-shot, the rest
medium (3 / 4 / 3 for CIFAR-10).
"""

from __future__ import annotations

from typing import Any, Sequence

GROUPS = ("many", "medium", "few")


def shot_groups(counts: Sequence[int]) -> dict[str, Any]:
    """{"many": [classes], "medium": [...], "few": [...], "rule": text} for per-class training counts."""
    k = len(counts)
    if k == 100:
        groups = {"many": [c for c in range(k) if counts[c] > 100],
                  "medium": [c for c in range(k) if 20 <= counts[c] <= 100],
                  "few": [c for c in range(k) if counts[c] < 20]}
        rule = "many > 100, medium 20-100, few < 20 training images (the CIFAR-100-LT thresholds)"
    else:
        order = sorted(range(k), key=lambda c: (-counts[c], c))
        third = k // 3
        groups = {"many": sorted(order[:third]), "medium": sorted(order[third:k - third]),
                  "few": sorted(order[k - third:])}
        rule = (f"thirds of the {k} classes sorted by training count: the {third} largest many-shot, "
                f"the {third} smallest few-shot, the other {k - 2 * third} medium")
    return {**groups, "rule": rule}


def shot_accuracy(class_acc: Sequence[float | None], groups: dict[str, Any]) -> dict[str, float | None]:
    """Mean per-class accuracy of each group (None for an empty group)."""
    out: dict[str, float | None] = {}
    for name in GROUPS:
        values = [class_acc[c] for c in groups[name] if class_acc[c] is not None]
        out[name] = sum(values) / len(values) if values else None
    return out
