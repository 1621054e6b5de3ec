"""Train a CIFAR ResNet with any registered loss: ``edloss train`` and ``train(config, out_dir)``.

One recipe for every loss (SGD + Nesterov, weight decay, a per-step cosine or one-cycle
schedule), so that a comparison measures the loss and nothing else. For the same seed every
loss starts from the same initial weights and sees the same batches in the same order with
the same augmentation: differences between losses are paired, not confounded with init noise.

A run folder holds:
- ``epochs.jsonl``: one line per epoch (train loss/acc, validation CE loss/acc, lr, seconds);
- ``checkpoint.pt``: model, optimizer, scheduler, RNG states and history after the last good
  epoch; a rerun resumes from it and reproduces the uninterrupted run exactly (on CPU);
- ``result.json``: written atomically at the end: config, versions, seed, wall time over all
  resumed segments, final validation and test accuracy, and the test accuracy of the weights
  of the best validation epoch (early stopping's answer; label noise shows as the gap between
  the two); the training images per class (``class_counts``) and the test accuracy per class;
  with ``--imbalance``, many/medium/few-shot test accuracy and the test accuracy of the same
  model after post-hoc logit adjustment (tau = 1). The test set is evaluated only here;
  or, for a run whose loss or weights became NaN/Inf, status "diverged" and what to do;
- ``.lock``: held for the whole run, so a second ``edloss train`` into the folder is refused.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from edloss.configs import versions
from edloss.files import (RunLock, append_jsonl, atomic_torch_save, atomic_write_json, atomic_write_text,
                          check_output_path, prepare_output_folder)
from edloss.files import writing as _writing
from edloss.lab.calibration import temperature_scaling
from edloss.lab.data import (BatchLoader, Splits, check_imbalance_feasible, check_present, flip_labels, load_splits,
                             resolve_data_dir)
from edloss.lab.evaluate import _autocast, evaluate, nonfinite_state
from edloss.lab.longtail import shot_accuracy, shot_groups
from edloss.lab.losses import build_loss_from_spec, definition_sha256, parse_loss_arm, spec_definition
from edloss.lab.models import build_model, model_names, use_cosine_head
from edloss.lab.recipe import (MAX_EPOCHS, NAN_CHECK_EVERY, RESUME_IGNORED, SCHEDULES, STEP_DECAY,  # noqa: F401
                               STEP_MILESTONES, TrainConfig, add_recipe_args, apply_threads, autocast_on, config_diff,
                               config_from_args, lr_factor, resolve_device)
from edloss.lab.runfiles import (CHECKPOINT, CHECKPOINT_FORMAT, DEFINITION_KEY, EPOCHS, RESULT,  # noqa: F401
                                 _load_checkpoint, _refuse, _remove_run_files, _sync_epochs, definition_diff,
                                 is_finished, read_result)  # noqa: F401


class TrainingDiverged(RuntimeError):
    """The training, validation or test loss (or the weights) became NaN/Inf, or the loss refused
    NaN/Inf logits; result.json records status "diverged" and the last good checkpoint is kept."""


def _train_epoch(model: nn.Module, loss_fn: nn.Module, loader: BatchLoader,
                 optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler,
                 amp: bool, bar: tqdm) -> tuple[float, float, float]:
    """One pass over the training loader; returns (mean loss, accuracy, lr of the last step).

    Raises TrainingDiverged as soon as the loss is seen to be non-finite: every step on CPU
    (free), every NAN_CHECK_EVERY steps and at the end on CUDA (each check syncs). A loss that
    refuses NaN/Inf logits (EDLLoss raises ValueError) counts as a divergence too.
    """
    model.train()
    device = loader.device
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    count, lr = 0, optimizer.param_groups[0]["lr"]
    for step, (x, y) in enumerate(loader):
        lr = optimizer.param_groups[0]["lr"]
        with _autocast(device, amp):
            logits = model(x)
        try:
            loss = loss_fn(logits.float(), y)
        except ValueError as err:  # e.g. EDLLoss refuses NaN/Inf logits instead of returning NaN
            if torch.isfinite(logits.detach()).all() and "NaN or Inf" not in str(err):
                raise
            raise TrainingDiverged(f"the model's logits became NaN/Inf at step {step + 1}/{len(loader)} "
                                   f"(the loss refused them: {err})") from None
        loss_sum += loss.detach().double() * y.numel()
        if device.type == "cpu" or step % NAN_CHECK_EVERY == 0 or step == len(loader) - 1:
            if not torch.isfinite(loss_sum):
                raise TrainingDiverged(f"the training loss became {loss.item()} at step "
                                       f"{step + 1}/{len(loader)}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        correct += (logits.detach().argmax(1) == y).sum()
        count += y.numel()
        bar.update(1)
        if step % 20 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{lr:.3g}", refresh=False)
    return (loss_sum / count).item(), (correct.double() / count).item(), lr


# ----------------------------------------------------------------------------- the run


@dataclass
class _Run:
    """The live objects of a run, built the same way for a fresh start and a resume."""

    config: TrainConfig
    device: torch.device
    data: Splits
    model: nn.Module  # the plain module (what is checkpointed)
    forward: nn.Module  # the module called in the loop (compiled or not)
    loss_fn: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    data_gen: torch.Generator
    train_loader: BatchLoader
    val_loader: BatchLoader | None
    test_loader: BatchLoader
    flipped: torch.Tensor | None = None  # training indices whose label --label-noise changed
    loss_definition: str | None = None  # definition_sha256 of a learned loss (None: a formula)
    best_state: dict[str, torch.Tensor] | None = None  # weights after the best validation epoch so far
    class_counts: list[int] | None = None  # training images per class (true labels)
    label_counts: list[int] | None = None  # training labels per class as trained on (after noise): what losses are told


def _build(config: TrainConfig) -> _Run:
    device = resolve_device(config.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    data = load_splits(config.dataset, config.data_dir, config.val_size, config.train_subset,
                       config.balanced_subset, config.download, config.reserve, config.imbalance)
    class_counts = data.class_counts
    flipped = None
    if config.label_noise > 0:  # training labels only: validation and test stay clean
        data.train_y, flipped = flip_labels(data.train_y, data.num_classes, config.label_noise, config.noise_seed)
    label_counts = torch.bincount(data.train_y, minlength=data.num_classes).tolist()
    torch.manual_seed(config.seed)  # the model is built first, so every loss gets the same init
    model = build_model(config.model, data.num_classes, channels_last=config.channels_last)
    loss_fn = build_loss_from_spec(config.loss)
    if hasattr(loss_fn, "set_class_counts"):  # the long-tail losses: told the training labels' counts
        loss_fn.set_class_counts(label_counts)
    if getattr(loss_fn, "cosine_head_scale", None):  # LDAM: the cosine classifier its scale s is meant for
        use_cosine_head(model, loss_fn.cosine_head_scale)
    model.to(device)
    loss_definition = definition_sha256(loss_fn)
    loss_fn = loss_fn.to(device)
    data_gen = torch.Generator(device=device)
    data_gen.manual_seed(config.seed + 1_000_003)

    def loader(x: torch.Tensor, y: torch.Tensor, train: bool) -> BatchLoader:
        return BatchLoader(x, y, config.batch_size if train else config.eval_batch_size,
                           data.mean, data.std, train=train, generator=data_gen if train else None,
                           device=device, channels_last=config.channels_last,
                           augment_data=config.augment)

    train_loader = loader(data.train_x, data.train_y, True)
    steps = len(train_loader)
    if steps == 0:
        raise ValueError(f"the training set has {data.train_x.shape[0]} images: too few to train")
    total = steps * config.epochs
    warmup_epochs = config.warmup_epochs
    if warmup_epochs is None:
        warmup_epochs = 0.25 * config.epochs if config.schedule == "onecycle" else 0.0
    warmup = round(warmup_epochs * steps)
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                                nesterov=config.nesterov, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, total, config.schedule, warmup))
    forward = torch.compile(model) if config.compile else model
    val_loader = loader(data.val_x, data.val_y, False) if config.val_size else None
    return _Run(config, device, data, model, forward, loss_fn, optimizer, scheduler, data_gen,
                train_loader, val_loader, loader(data.test_x, data.test_y, False), flipped,
                loss_definition=loss_definition, class_counts=class_counts, label_counts=label_counts)


def _checkpoint(run: _Run, epoch: int, history: list[dict], clock: _Clock) -> dict[str, Any]:
    cuda = run.device.type == "cuda"
    return {
        "format": CHECKPOINT_FORMAT, "epoch": epoch, "config": asdict(run.config),
        "model": run.model.state_dict(), "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(),
        "rng": {"torch": torch.get_rng_state(), "data": run.data_gen.get_state(),
                "cuda": torch.cuda.get_rng_state_all() if cuda else []},
        "history": history, "train_seconds": clock.train, "wall_seconds": clock.wall(),
        "segments": clock.segments, "best_model": run.best_state, DEFINITION_KEY: run.loss_definition,
    }


def _restore(run: _Run, ckpt: dict[str, Any]) -> None:
    run.model.load_state_dict(ckpt["model"])
    run.optimizer.load_state_dict(ckpt["optimizer"])
    run.scheduler.load_state_dict(ckpt["scheduler"])
    torch.set_rng_state(ckpt["rng"]["torch"])
    run.data_gen.set_state(ckpt["rng"]["data"])
    run.best_state = ckpt.get("best_model")  # absent in checkpoints of older versions: tracked from here on
    if ckpt["rng"]["cuda"] and run.device.type == "cuda":
        torch.cuda.set_rng_state_all(ckpt["rng"]["cuda"])


def _log(progress: bool, message: str) -> None:
    if progress:
        tqdm.write(message, file=sys.stderr)


@dataclass
class _Clock:
    """Time spent on a run over all its segments (a run stopped and resumed has several):
    ``train`` sums epoch and test-evaluation time; ``wall`` adds setup, evaluation and
    checkpointing, i.e. the real time the run took up to its last checkpoint and now."""

    train: float = 0.0
    wall_before: float = 0.0  # wall time of the earlier segments
    segments: int = 1
    started: float = 0.0

    def __post_init__(self) -> None:
        self.started = time.perf_counter()

    def wall(self) -> float:
        return self.wall_before + time.perf_counter() - self.started


def _result(run: _Run, status: str, history: list[dict], clock: _Clock,
            **extra: Any) -> dict[str, Any]:
    last = history[-1] if history else {}
    best = _best_epoch(history) or {}
    return {
        "status": status, "config": asdict(run.config), "seed": run.config.seed,
        "versions": versions(), "device": str(run.device), "threads": torch.get_num_threads(),
        "loss": repr(run.loss_fn), DEFINITION_KEY: run.loss_definition, "epochs_completed": len(history),
        "data_path": _portable(resolve_data_dir(run.config.data_dir)),
        "num_train": int(run.data.train_x.shape[0]), "num_val": int(run.data.val_x.shape[0]),
        "num_test": int(run.data.test_x.shape[0]), "class_counts": run.class_counts,
        "final_train_loss": last.get("train_loss"), "final_val_loss": last.get("val_loss"),
        "final_val_acc": last.get("val_acc"),
        "best_val_acc": best.get("val_acc"), "best_val_epoch": best.get("epoch"),
        "wall_seconds": clock.wall(), "train_seconds": clock.train, "segments": clock.segments,
        **extra,
    }


def _long_tail(run: _Run, calibration: dict[str, Any]) -> dict[str, Any]:
    """Many/medium/few-shot test accuracy (and after post-hoc logit adjustment) of a long-tail run."""
    if run.config.imbalance is None or "class_acc" not in calibration:
        return {}
    groups = shot_groups(run.class_counts)
    adjusted = calibration.get("class_acc_adjusted")
    balanced = [a for a in adjusted if a is not None] if adjusted else []
    return {"test_shot_acc": shot_accuracy(calibration["class_acc"], groups), "shot_groups": groups,
            "test_class_acc_posthoc_la": adjusted,
            "test_acc_posthoc_la": sum(balanced) / len(balanced) if balanced else None,
            "test_shot_acc_posthoc_la": shot_accuracy(adjusted, groups) if adjusted else None}


def _best_epoch(history: list[dict]) -> dict | None:
    """The history row of the best validation accuracy (the first of ties), or None."""
    return max(history, key=lambda r: r["val_acc"] or 0.0) if history else None


def _temperature_scaled(run: _Run, test_logits: torch.Tensor, test_labels: torch.Tensor) -> dict[str, Any]:
    """The final model's test NLL and ECE after temperature scaling fitted on validation (the
    temperature too); nothing without a validation split, where there is nothing to fit T on."""
    if run.val_loader is None:
        return {}
    _, _, val = evaluate(run.forward, run.val_loader, autocast_on(run.config, run.device), calibration=True, keep_logits=True)
    return temperature_scaling(val["logits"], val["labels"], test_logits, test_labels)


def _best_val_test(run: _Run, history: list[dict], test_loss: float, test_acc: float) -> dict[str, Any]:
    """Test NLL and accuracy of the weights kept at the best validation epoch (the last epoch's
    numbers when that was the best). Selection is by validation alone; the test set only reports.
    None when there is no validation split or the run resumed from a checkpoint that predates
    the kept weights."""
    best_epoch = (_best_epoch(history) or {}).get("epoch")
    if run.val_loader is None or best_epoch is None:
        return {"best_val_test_acc": None, "best_val_test_nll": None}
    if best_epoch == history[-1]["epoch"]:
        return {"best_val_test_acc": test_acc, "best_val_test_nll": test_loss}
    if run.best_state is None:
        return {"best_val_test_acc": None, "best_val_test_nll": None}
    run.model.load_state_dict(run.best_state)
    nll, acc = evaluate(run.forward, run.test_loader, autocast_on(run.config, run.device))
    return {"best_val_test_acc": acc, "best_val_test_nll": nll}


def _portable(path: Path) -> str:
    """A path as recorded in results: relative to the working folder, not this machine's absolute path."""
    return os.path.relpath(Path(path).resolve(), Path.cwd())


def check_stop_after(stop_after: Any) -> None:
    """``stop_after`` is None (run to the end) or a number of epochs >= 1."""
    if stop_after is not None and (isinstance(stop_after, bool) or not isinstance(stop_after, int)
                                   or stop_after < 1):
        raise ValueError(f"--stop-after must be an integer >= 1 (epochs to run in this call), "
                         f"got {stop_after!r}")


def train(config: TrainConfig, out_dir: Path, progress: bool = True, *, resume: bool = True,
          stop_after: int | None = None) -> dict[str, Any]:
    """Train (or resume) one run in ``out_dir``; returns the contents of result.json.

    ``resume=False`` deletes an earlier run's files in ``out_dir`` first. ``stop_after`` ends
    this call after that many epochs (for time-sliced jobs); the returned dict then has
    status "incomplete" and no result.json is written. A run whose result.json already exists
    for the same config is returned as is. Raises TrainingDiverged if the training, validation
    or test loss (or the weights) become NaN/Inf (result.json then records status "diverged"),
    ValueError for bad or mismatched configs or an unusable ``out_dir``, RunFolderBusy while
    another process trains in ``out_dir`` (the folder is locked for the whole run).
    """
    config.validate()
    check_stop_after(stop_after)
    resolve_device(config.device)  # a device this machine lacks is refused before the folder is touched
    check_output_path(out_dir, "--out")
    check_present(config.dataset, config.data_dir, config.download)  # so is missing data
    if config.imbalance is not None:  # and a long tail so steep that a class keeps no image
        check_imbalance_feasible(config.dataset, config.data_dir, config.val_size, config.train_subset,
                                 config.balanced_subset, config.reserve, config.imbalance)
    out_dir = prepare_output_folder(out_dir, "--out")
    with RunLock(out_dir, "edloss train"):
        return _train_locked(config, out_dir, progress, resume, stop_after)


def _train_locked(config: TrainConfig, out_dir: Path, progress: bool, resume: bool,
                  stop_after: int | None) -> dict[str, Any]:
    clock = _Clock()
    ckpt_path, epochs_path, result_path = out_dir / CHECKPOINT, out_dir / EPOCHS, out_dir / RESULT
    if not resume:
        _remove_run_files(out_dir)
    definition = spec_definition(config.loss)
    previous = read_result(out_dir)
    if previous is not None:
        diff = config_diff(previous.get("config", {}), asdict(config)) or definition_diff(previous, config.loss, definition)
        if diff:
            raise _refuse(out_dir, "finished run", diff)
        if previous.get("status") == "diverged":
            raise TrainingDiverged(f"{previous.get('message')} (stored in {result_path}; "
                                   "rerun with --fresh to try again)")
        _log(progress, f"{out_dir}: already finished (test acc {previous['test_acc']})")
        return previous
    ckpt = _load_checkpoint(ckpt_path, config, definition) if ckpt_path.is_file() else None

    run = _build(config)
    if run.flipped is not None:  # which labels lied, saved with the run (the same for every loss)
        atomic_write_text(out_dir / "noise.json", json.dumps({
            "label_noise": config.label_noise, "noise_seed": config.noise_seed, "flipped": run.flipped.tolist(),
            "noisy_labels": run.data.train_y[run.flipped].tolist()}) + "\n")
    history: list[dict] = []
    start = 0
    if ckpt is not None:
        _restore(run, ckpt)
        history, start = list(ckpt["history"]), ckpt["epoch"]
        clock.train = float(ckpt["train_seconds"])
        clock.wall_before = float(ckpt.get("wall_seconds", clock.train))
        clock.segments = int(ckpt.get("segments", 1)) + 1
        _log(progress, f"{out_dir}: resuming after epoch {start}/{config.epochs}")
    _sync_epochs(epochs_path, history)

    def diverged(epoch: int, what: str, kept_epoch: int) -> TrainingDiverged:
        """Record the divergence in result.json and return the error to raise."""
        kept = (f"the checkpoint of epoch {kept_epoch}" if kept_epoch
                else "no checkpoint (it diverged in the first epoch)")
        message = (f"training diverged in epoch {epoch}/{config.epochs}: {what}; stopped, keeping "
                   f"{kept} in {out_dir}. Lower the learning rate (--lr {config.lr:g} now; try "
                   f"{config.lr / 10:g}) or check the loss {config.loss!r}, then rerun with --fresh")
        result = _result(run, "diverged", history, clock, message=message, diverged_epoch=epoch,
                         test_acc=None, test_loss=None)
        with _writing(result_path):
            atomic_write_json(result_path, result)
        return TrainingDiverged(message)

    for epoch in range(start + 1, config.epochs + 1):
        t0 = time.perf_counter()
        bar = tqdm(total=len(run.train_loader), desc=f"epoch {epoch}/{config.epochs}",
                   unit="batch", leave=False, disable=not progress, file=sys.stderr)
        if hasattr(run.loss_fn, "set_epoch"):  # e.g. LDAM-DRW's deferred re-weighting (0-based epoch)
            run.loss_fn.set_epoch(epoch - 1, config.epochs)
        try:
            train_loss, train_acc, lr = _train_epoch(
                run.forward, run.loss_fn, run.train_loader, run.optimizer, run.scheduler,
                autocast_on(config, run.device), bar)
        except TrainingDiverged as err:
            raise diverged(epoch, str(err), epoch - 1) from None
        finally:
            bar.close()
        val_loss = val_acc = None
        if run.val_loader is not None and (epoch % config.val_every == 0 or epoch == config.epochs):
            val_loss, val_acc = evaluate(run.forward, run.val_loader, autocast_on(config, run.device))
        broken = nonfinite_state(run.model)
        if val_loss is not None and not math.isfinite(val_loss):
            where = f"; the weights hold NaN/Inf ({broken})" if broken else ""
            raise diverged(epoch, f"the validation loss is {val_loss}{where}", epoch - 1)
        if broken:
            raise diverged(epoch, f"the weights hold NaN/Inf after the epoch ({broken})", epoch - 1)
        elapsed = time.perf_counter() - t0
        clock.train += elapsed
        if val_acc is not None and val_acc > max((r["val_acc"] for r in history if r["val_acc"] is not None),
                                                 default=-1.0):
            run.best_state = {k: v.detach().clone() for k, v in run.model.state_dict().items()}
        history.append({"epoch": epoch, "train_loss": train_loss, "train_acc": train_acc,
                        "val_loss": val_loss, "val_acc": val_acc, "lr": lr, "seconds": elapsed})
        with _writing(epochs_path):
            append_jsonl(epochs_path, history[-1])
        with _writing(ckpt_path):
            atomic_torch_save(_checkpoint(run, epoch, history, clock), ckpt_path)
        val_text = f"val loss {val_loss:.4f} acc {val_acc:.4f}" if val_acc is not None else "not validated"
        _log(progress, f"epoch {epoch}/{config.epochs}  train loss {train_loss:.4f} "
                       f"acc {train_acc:.4f}  {val_text}  lr {lr:.4g}  {elapsed:.1f}s")
        if stop_after is not None and epoch - start >= stop_after and epoch < config.epochs:
            return _result(run, "incomplete", history, clock, test_acc=None, test_loss=None)

    if not config.evaluate_test:  # a proxy run: validation decides, the test set stays unread
        result = _result(run, "finished", history, clock, test_loss=None, test_acc=None)
        with _writing(result_path):
            atomic_write_json(result_path, result)
        return result
    t0 = time.perf_counter()
    adjust = None
    if config.imbalance is not None:  # post-hoc logit adjustment (tau = 1) of the same model, for reference
        counts = torch.tensor(run.label_counts, dtype=torch.float64)
        adjust = (counts / counts.sum()).log().float()
    test_loss, test_acc, calibration = evaluate(run.forward, run.test_loader, autocast_on(config, run.device), calibration=True,
                                                adjust=adjust, keep_logits=True)
    if not math.isfinite(test_loss):
        raise diverged(config.epochs, f"the test loss is {test_loss} after the last epoch",
                       config.epochs)
    scaled = _temperature_scaled(run, calibration.pop("logits"), calibration.pop("labels"))
    best_val = _best_val_test(run, history, test_loss, test_acc)
    clock.train += time.perf_counter() - t0
    result = _result(run, "finished", history, clock, test_loss=test_loss, test_acc=test_acc,
                     test_nll=test_loss, test_ece=calibration["ece"], test_reliability=calibration["reliability"],
                     test_class_acc=calibration.get("class_acc"), **_long_tail(run, calibration), **scaled,
                     **best_val)
    with _writing(result_path):
        atomic_write_json(result_path, result)
    _log(progress, f"done: val acc {history[-1]['val_acc']}  test acc {test_acc:.4f}  "
                   f"({result['wall_seconds']:.0f}s) -> {result_path}")
    return result


# ----------------------------------------------------------------------------- command line


def _cli(args: argparse.Namespace) -> int:
    apply_threads(args)
    check_stop_after(args.stop_after)
    label, spec = parse_loss_arm(args.loss)
    config = config_from_args(args, loss=spec)
    out = Path(args.out) if args.out else Path("runs") / config.model / label / f"seed{config.seed}"
    try:
        result = train(config, out, progress=not args.quiet, resume=not args.fresh,
                       stop_after=args.stop_after)
    except TrainingDiverged as err:  # exit 1: the run is recorded (status "diverged"), not misused
        print(f"edloss train: diverged: {err}", file=sys.stderr)
        return 1
    if result["status"] == "incomplete":
        print(f"stopped after epoch {result['epochs_completed']}/{config.epochs} as asked; "
              f"rerun the same command to continue ({out})")
    elif args.quiet:
        print(json.dumps({k: result[k] for k in ("final_val_acc", "test_acc", "wall_seconds")}))
    return 0


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    """Register ``edloss train``."""
    p = subparsers.add_parser(
        "train", help="train a CIFAR ResNet with one loss",
        description="Train a CIFAR ResNet with one loss (SGD + Nesterov, per-step schedule); "
                    "resumes from OUT/checkpoint.pt when rerun with the same options.")
    p.add_argument("--model", default=TrainConfig.model,
                   help=f"one of {', '.join(model_names())} (default %(default)s)")
    p.add_argument("--loss", default=TrainConfig.loss,
                   help="loss spec: ce, label_smoothing[:eps], focal[:gamma=2], poly1[:epsilon=1], "
                        "mae, edl, edl:PATH (default %(default)s)")
    p.add_argument("--seed", type=int, default=TrainConfig.seed)
    p.add_argument("--out", default=None,
                   help="run folder (default runs/<model>/<loss>/seed<k>)")
    p.add_argument("--fresh", action="store_true",
                   help="delete this run's checkpoint/results in OUT and start over")
    p.add_argument("--stop-after", type=int, default=None, metavar="E",
                   help="stop this call after E epochs (resume later by rerunning)")
    add_recipe_args(p)
    p.set_defaults(func=_cli)
