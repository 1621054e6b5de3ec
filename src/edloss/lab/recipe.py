"""A training recipe: ``TrainConfig`` (everything that defines a run), its checks, the learning-rate
schedules and the command-line flags ``train`` and ``compare`` share. Checked before any work:
a value out of range would otherwise be used silently or fail minutes later."""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, fields
from typing import Any

import torch

from edloss.lab.data import check_imbalance, get_spec, long_tail_counts
from edloss.lab.losses import LOSSES, build_loss_from_spec, parse_loss_spec
from edloss.lab.models import model_names

SCHEDULES = ("cosine", "onecycle", "step")
STEP_MILESTONES = (0.8, 0.9)  # "step": lr x STEP_DECAY at 80% and again at 90% of training (160/180 of 200)
STEP_DECAY = 0.01
# config fields that may change between a run and its resumption without changing its numbers
RESUME_IGNORED = frozenset({"data_dir", "download", "compile", "device"})
MAX_EPOCHS = 100_000  # years of CPU for ResNet-20 on CIFAR: a larger count is a typo (10**20 would run forever)
NAN_CHECK_EVERY = 25  # steps between divergence checks on CUDA (each one is a host sync)


@dataclass
class TrainConfig:
    """Everything that defines a training run; saved in every checkpoint and result."""

    model: str = "resnet20"
    loss: str = "ce"  # a loss spec: "ce", "focal:gamma=3", "edl:runs/x/loss", ...
    dataset: str = "cifar10"
    data_dir: str | None = None  # None: $EDLOSS_DATA, then ./data
    download: bool = False
    epochs: int = 30
    batch_size: int = 128
    lr: float = 0.1  # peak learning rate
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4  # on every parameter, as in the CIFAR ResNet recipes
    schedule: str = "cosine"  # "cosine" (decay to 0), "onecycle" (linear up, linear down), "step" (x0.01 at 80%, 90%)
    warmup_epochs: float | None = None  # None: 0 for cosine, 25% of training for onecycle
    val_size: int = 5000  # the last val_size training images; 0 disables validation
    train_subset: int | None = None  # train on the first N of the training part only
    balanced_subset: bool = False  # ... taking the first N/K images of each class
    augment: bool = True  # random crop (4-pixel zero padding) + horizontal flip
    eval_batch_size: int = 1000
    seed: int = 0
    device: str = "auto"  # "auto": cuda if available, else cpu
    channels_last: bool = True  # 1.3x faster ResNet-20 steps on CPU (bench_training.py)
    compile: bool = False  # torch.compile the model
    amp: bool = True  # bf16 autocast on CUDA
    # bf16 autocast on the CPU too (oneDNN's bf16 kernels; the loss still sees float32 logits): ResNet-20 steps
    # ran 1.6x faster on this project's AVX512-BF16 CPU (benchmarks/bench_cpu_amp.py). Off by default: it changes
    # the numbers, so a comparison sets it for every arm before its first run, as the regimes that use it do
    cpu_amp: bool = False
    label_noise: float = 0.0  # symmetric noise: this share of each class's training labels flipped
    noise_seed: int = 0  # which labels flip: shared by every loss of a comparison
    reserve: int = 0  # the last N training images set aside before validation is cut (edloss adapt's proxies)
    evaluate_test: bool = True  # False: no test evaluation at all (proxy trainings select on validation only)
    imbalance: float | None = None  # long tail: class c keeps floor(n_max RHO^(-c/(K-1))) training images
    val_every: int = 1  # validate after every N-th epoch and after the last (small training sets: many short epochs)

    def validate(self) -> None:
        """Raise ValueError naming the bad option and its valid range, before any work is done:
        a value out of range would otherwise be used silently or fail minutes later."""
        ints = [("epochs", "--epochs", 1), ("batch_size", "--batch-size", 2),
                ("eval_batch_size", "--eval-batch-size", 1), ("val_size", "--val-size", 0),
                ("seed", "--seed", 0), ("reserve", "reserve", 0), ("val_every", "--val-every", 1)]
        for name, flag, low in ints:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{flag} must be an integer >= {low}, got {value!r}")
        if self.epochs > MAX_EPOCHS:
            raise ValueError(f"--epochs must be an integer in [1, {MAX_EPOCHS}], got {self.epochs}")
        if self.seed >= 2**32:
            raise ValueError(f"--seed must be an integer in [0, 2**32), got {self.seed}")
        if self.train_subset is not None and (isinstance(self.train_subset, bool)
                                              or not isinstance(self.train_subset, int) or self.train_subset < 2):
            raise ValueError(f"--train-subset must be an integer >= 2 (images), got {self.train_subset!r}")
        if self.balanced_subset and self.train_subset is None:
            raise ValueError("--balanced-subset needs --train-subset N (it picks N/K images per class)")
        if self.imbalance is not None:
            check_imbalance(self.imbalance)
            if self.train_subset is not None:
                if not self.balanced_subset:
                    raise ValueError("--imbalance with --train-subset needs --balanced-subset: the long-tail profile "
                                     "starts from a balanced pool of N/K images per class")
                k = get_spec(self.dataset).num_classes
                long_tail_counts(self.train_subset // k, k, self.imbalance)  # too steep for the pool: fails now
        _check_real("--lr", self.lr, _is_real(self.lr) and self.lr > 0, "a finite number > 0")
        _check_real("--momentum", self.momentum, _is_real(self.momentum) and 0 <= self.momentum < 1,
                    "in [0, 1)")
        _check_real("--weight-decay", self.weight_decay, _is_real(self.weight_decay) and self.weight_decay >= 0,
                    "a finite number >= 0")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"--schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if self.warmup_epochs is not None:
            w = self.warmup_epochs
            _check_real("--warmup-epochs", w, _is_real(w) and 0 <= w < self.epochs,
                        f"in [0, --epochs) = [0, {self.epochs})")
        if self.nesterov and self.momentum == 0:
            raise ValueError("Nesterov momentum needs --momentum > 0 (or pass --no-nesterov)")
        _check_device_name(self.device)
        if not isinstance(self.model, str) or self.model.lower().replace("-", "").replace("_", "") not in model_names():
            raise ValueError(f"unknown model {self.model!r}; valid names: {', '.join(model_names())}")
        _check_real("--label-noise", self.label_noise, _is_real(self.label_noise) and 0 <= self.label_noise < 1,
                    "a noise rate in [0, 1)")
        if isinstance(self.noise_seed, bool) or not isinstance(self.noise_seed, int) or self.noise_seed < 0:
            raise ValueError(f"--noise-seed must be an integer >= 0, got {self.noise_seed!r}")
        get_spec(self.dataset)  # unknown dataset: ValueError naming the valid ones
        name, _ = parse_loss_spec(self.loss)
        if name not in LOSSES:
            raise ValueError(f"unknown loss {self.loss!r}; valid names: {', '.join(LOSSES)}")
        build_loss_from_spec(self.loss)  # a bad option (focal:gamma=-1, poly1:epsilon=-5) fails now


def _is_real(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)


def _check_real(flag: str, value: Any, ok: bool, valid: str) -> None:
    if not ok:
        raise ValueError(f"{flag} must be {valid}, got {value!r}")


DEVICE_TYPES = ("cpu", "cuda", "mps")


def _check_device_name(name: Any) -> None:
    """A device string this trainer can use (whether it is present is checked when the run starts)."""
    valid = "auto, cpu, cuda, cuda:N, mps"
    if name == "auto":
        return
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        device = None
    if device is None or device.type not in DEVICE_TYPES:
        raise ValueError(f"--device {name!r} is not a device edloss train can use; valid: {valid}")


def resolve_device(name: str) -> torch.device:
    """The torch device for ``name``, refusing one this machine lacks (with what it has instead)."""
    _check_device_name(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {name!r} requested but CUDA is not available; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"--device {name!r}: this machine has {torch.cuda.device_count()} CUDA "
                             f"device(s), cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"--device {name!r} requested but MPS is not available; use --device cpu")
    return device


def lr_factor(step: int, total: int, schedule: str, warmup: int) -> float:
    """Multiplier of the peak lr for optimizer step ``step`` (0-based) of ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))
    if schedule == "step":
        return STEP_DECAY ** sum(step >= round(m * total) for m in STEP_MILESTONES)
    return (total - step) / max(1, total - warmup)  # onecycle: linear down to ~0


def config_diff(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Human-readable differences between two config dicts, ignoring RESUME_IGNORED fields.
    A field a saved run lacks counts as its default: fields are added with the default that
    reproduces the older behaviour, so older runs still resume and still count as finished."""
    out = []
    defaults = {f.name: f.default for f in fields(TrainConfig)}
    for key in sorted(set(saved) | set(current)):
        if key in RESUME_IGNORED:
            continue
        a = saved.get(key, defaults.get(key, "(absent)"))
        b = current.get(key, defaults.get(key, "(absent)"))
        if a != b:
            out.append(f"{key}: {a!r} in the saved run, {b!r} now")
    return out


def add_recipe_args(parser: argparse.ArgumentParser) -> None:
    """Flags shared by ``train`` and ``compare``: data, optimiser, schedule, hardware."""
    d = TrainConfig
    g = parser.add_argument_group("data")
    g.add_argument("--dataset", default=d.dataset, help="cifar10 or cifar100 (default %(default)s)")
    g.add_argument("--data-dir", default=None,
                   help="folder holding cifar-10-batches-py/ (default: $EDLOSS_DATA, then ./data)")
    g.add_argument("--download", action="store_true",
                   help="download the data set (md5-verified) if the folder lacks it")
    g.add_argument("--val-size", type=int, default=d.val_size,
                   help="validation images cut from the end of the training set (default %(default)s)")
    g.add_argument("--train-subset", type=int, default=None, metavar="N",
                   help="train on the first N images of the training part only (CPU budgets)")
    g.add_argument("--balanced-subset", action="store_true",
                   help="with --train-subset: take the first N/K images of each class")
    g.add_argument("--no-augment", dest="augment", action="store_false",
                   help="no random crop / flip")
    g.add_argument("--label-noise", type=float, default=d.label_noise, metavar="ETA",
                   help="flip exactly floor(ETA n_c) training labels of each class c to a uniformly drawn other "
                        "class (symmetric noise; validation and test stay clean; default %(default)s)")
    g.add_argument("--imbalance", type=float, default=None, metavar="RHO",
                   help="long-tailed training set (Cao et al. 2019): class c keeps its first "
                        "floor(n_max RHO^(-c/(K-1))) training images, n_max the smallest class count left after "
                        "--val-size (and --train-subset N with --balanced-subset: N/K); validation and test stay "
                        "balanced; label noise, if any, is applied after. RHO >= 1 (100: CIFAR-10-LT / CIFAR-100-LT)")
    g.add_argument("--noise-seed", type=int, default=d.noise_seed, metavar="S",
                   help="which labels flip (shared by every loss of a comparison; default %(default)s)")
    g = parser.add_argument_group("recipe")
    g.add_argument("--epochs", type=int, default=d.epochs, help="default %(default)s")
    g.add_argument("--val-every", type=int, default=d.val_every, metavar="N",
                   help="validate after every N-th epoch and after the last (default %(default)s; a larger N saves "
                        "time when epochs are short: a small training set trained for many epochs)")
    g.add_argument("--batch-size", type=int, default=d.batch_size, help="default %(default)s")
    g.add_argument("--lr", type=float, default=d.lr, help="peak learning rate (default %(default)s)")
    g.add_argument("--momentum", type=float, default=d.momentum, help="default %(default)s")
    g.add_argument("--no-nesterov", dest="nesterov", action="store_false",
                   help="plain instead of Nesterov momentum")
    g.add_argument("--weight-decay", type=float, default=d.weight_decay, help="default %(default)s")
    g.add_argument("--schedule", choices=SCHEDULES, default=d.schedule,
                   help="per-step lr schedule: cosine, onecycle, or step (x0.01 at 80%% and again at 90%% of "
                        "training, the CIFAR-LT recipe's 160/180 of 200) (default %(default)s)")
    g.add_argument("--warmup-epochs", type=float, default=None,
                   help="linear warmup length (default: 0 for cosine, 25%% of training for onecycle)")
    g.add_argument("--eval-batch-size", type=int, default=d.eval_batch_size)
    g = parser.add_argument_group("hardware and output")
    g.add_argument("--device", default=d.device, help="auto, cpu, cuda, cuda:1 (default %(default)s)")
    g.add_argument("--channels-last", action=argparse.BooleanOptionalAction,
                   default=d.channels_last, help="channels-last memory format (default on)")
    g.add_argument("--compile", action="store_true", help="torch.compile the model")
    g.add_argument("--no-amp", dest="amp", action="store_false",
                   help="no bf16 autocast on CUDA")
    g.add_argument("--cpu-amp", action="store_true",
                   help="bf16 autocast on the CPU too (faster where the CPU has bf16 instructions; changes the numbers)")
    g.add_argument("--threads", type=int, default=None, help="torch CPU threads (>= 1)")
    g.add_argument("--quiet", action="store_true", help="no progress bars or per-epoch lines")


def config_from_args(args: argparse.Namespace, **overrides: Any) -> TrainConfig:
    """A TrainConfig from parsed flags (every flag named like a field), plus overrides."""
    values = {f.name: getattr(args, f.name) for f in fields(TrainConfig) if hasattr(args, f.name)}
    values.update(overrides)
    return TrainConfig(**values)


def apply_threads(args: argparse.Namespace) -> None:
    """Set torch's CPU threads from --threads; 0 or less is refused, not silently ignored."""
    threads = getattr(args, "threads", None)
    if threads is None:
        return
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"--threads must be an integer >= 1, got {threads!r}")
    torch.set_num_threads(threads)


def autocast_on(config: TrainConfig, device: torch.device) -> bool:
    """Whether this run's forward passes run under bf16 autocast: ``amp`` on CUDA, ``cpu_amp`` on the CPU."""
    return config.amp if device.type == "cuda" else config.cpu_amp and device.type == "cpu"
