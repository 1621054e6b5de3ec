"""The losses shipped inside the package (``edloss/weights/NAME/``) and the choice among them:
``EDLLoss.pretrained()`` picks one by your regime (the noise rate you expect, your class count,
your per-class training counts) when you name none. Why each threshold is where it is: the
measurements in the docstrings below and in docs/results/.
"""

from __future__ import annotations

import re
from importlib import resources
from typing import Any

from edloss.checks import _counts_tensor, _is_rate, _prior_strength, log_prior

NOISE_RANGE = (0.0, 0.8)


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
    if num_classes is not None:
        _check_num_classes(num_classes)
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


def _clean_loss_name(name: str | None, num_classes: Any, class_counts: Any, prior_strength: Any) -> str:
    """The clean-label loss for ``num_classes`` K: ``default-kK`` where one ships (chosen for K on
    the regime matrix's calibration regimes, docs/results/regimes.md), else ``default``, which was
    pretrained over every K from 2 to 1000. With ``class_counts`` the long-tail choice
    (``regime_loss_name``) decides, and the counts must be K long."""
    _check_num_classes(num_classes)
    if name is not None:
        raise ValueError(f"pass either a loss name ({name!r}) or num_classes, not both")
    if class_counts is not None:
        k = len(_counts_tensor(class_counts))
        if k != num_classes:
            raise ValueError(f"class_counts has {k} classes but num_classes is {num_classes}; give one of them, "
                             "or make them agree")
        return regime_loss_name(class_counts, prior_strength)
    tailored = f"default-k{num_classes}"
    return tailored if is_shipped(tailored) else "default"


def _check_num_classes(num_classes: Any) -> None:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2 (your class count), got {num_classes!r}")


def shipped_loss_name(name: str | None = None, noise_rate: Any = None, num_classes: Any = None,
                      class_counts: Any = None, prior_strength: Any = None) -> str:
    """The shipped loss ``EDLLoss.pretrained(name, noise_rate=..., num_classes=..., class_counts=...,
    prior_strength=...)`` loads (see there): ``name``, else the one for the noise rate (and class
    count), else the one for the class counts, else ``default``; FileNotFoundError where none ships."""
    if noise_rate is not None:
        name = _noise_loss_name(name or "default", noise_rate, num_classes)
    elif num_classes is not None:
        name = _clean_loss_name(name, num_classes, class_counts, prior_strength)
    elif name is None:
        name = regime_loss_name(class_counts, prior_strength)
    if not is_shipped(name):
        raise FileNotFoundError(f"no shipped loss named {name!r}; available: {shipped_names()}")
    return name
