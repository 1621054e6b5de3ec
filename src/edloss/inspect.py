"""``edloss inspect CKPT``: what a loss checkpoint is, where it came from and how it is shaped."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from edloss.loss import CONFIG_FILE, EDLLoss
from edloss.pretrain_export import loss_rows
from edloss.shapes import (LossFn, TABLE_POINTS, format_gradient_ratio_table, format_shape_table, gradient_ratio_table,
                            loss_profile, plot_shapes, shape_table)


def resolve_checkpoint(path: Path) -> Path:
    """Accept a loss folder, its files, or a pretraining run folder holding ``loss/``."""
    if path.is_dir() and not (path / CONFIG_FILE).exists():
        if (path / "loss" / CONFIG_FILE).exists():
            return path / "loss"
        if (path / "config.json").is_file() and (path / "metrics.jsonl").exists():
            raise FileNotFoundError(f"{path} is a pretraining run with no exported loss yet: loss/ is written when "
                                    "the run finishes (rerun its command, without --fresh, to finish it)")
    return path


def describe(loss: EDLLoss, k: int = 10) -> str:
    cfg = loss.net.config
    meta = loss.metadata
    lines = [
        f"loss network: features {list(cfg.features)}, hidden {list(cfg.hidden)}, {cfg.activation}, {cfg.num_params} parameters",
        f"scale: {float(loss.scale):.6g} (gradient norm at the uniform prediction matched to cross-entropy's)",
    ]
    if meta.get("command"):
        lines.append(f"made by: {meta['command']}  (seed {meta.get('seed')}; real-data stage: {meta.get('real_data_stage', False)})")
    if meta.get("versions"):
        lines.append("versions: " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items() if k != "platform"))
    config = meta.get("config")
    if config:
        lines.append("pretraining config:")
        lines += [f"  {section}: {json.dumps(value)}" for section, value in config.items()]
    if meta.get("heldout_metrics"):
        lines.append("held-out synthetic metrics: " + ", ".join(f"{k} {v:.4f}" for k, v in meta["heldout_metrics"].items()))
    rows = loss_rows(loss)
    lines.append(f"shape at K = {k} (remaining mass spread evenly):")
    lines.append(format_shape_table(shape_table(rows, k)))
    lines.append(f"gradient norm / cross-entropy's on synthetic predictions at K = {k}, by p_y:")
    lines.append(format_gradient_ratio_table(gradient_ratio_table(rows, k)))
    return "\n".join(lines)


def reference_losses(specs: list[str], classes: int = 10) -> dict[str, LossFn]:
    """Lab losses by spec (``gce``, ``sce``, ``forward:0.4``, ``label=spec``), as per-row loss functions.

    The registry's losses return the batch mean, so each row is evaluated on its own: the value
    is then that row's loss and the gradient that row's gradient. Long-tail losses, which read the
    training set's class counts, are told balanced counts at K = ``classes`` (a shape has no
    training set): logit adjustment, balanced softmax and CB-CE are then CE, LDAM keeps its margin."""
    from edloss.lab.grid import parse_arms  # the lab extra: only when references are asked for

    def per_row(fn: LossFn) -> LossFn:
        def rows(z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            if t.shape[0] > 512:  # only summed (gradient tables): N x the mean is the sum of the rows' losses
                return (fn(z, t) * t.shape[0]).reshape(1)
            return torch.stack([fn(z[i : i + 1], t[i : i + 1]) for i in range(t.shape[0])])
        return rows

    from edloss.lab.losses import build_loss_from_spec

    def build(spec: str) -> LossFn:
        loss = build_loss_from_spec(spec)
        if hasattr(loss, "set_class_counts"):
            loss.set_class_counts([1000] * classes)
        return loss

    return {arm.label: per_row(build(arm.spec)) for arm in parse_arms(specs)}


def compare_shapes(name: str, loss: EDLLoss, references: dict[str, LossFn], k: int) -> str:
    """The loss beside the references: values at a few p_y, and gradient-norm ratios to CE by p_y bin."""
    losses = {name: loss_rows(loss), **references}
    p = torch.tensor(TABLE_POINTS, dtype=torch.float64)
    profiles = {label: loss_profile(fn, p, k) for label, fn in losses.items()}
    width = max(10, *(len(label) + 1 for label in losses))
    lines = [f"loss value by p_y at K = {k}:", f"{'p_y':>8}" + "".join(f"{label:>{width}}" for label in losses)]
    for i, point in enumerate(TABLE_POINTS):
        lines.append(f"{point:>8.3g}" + "".join(f"{float(profiles[label][0][i]):>{width}.4g}" for label in losses))
    lines.append(f"gradient norm / cross-entropy's by p_y bin (synthetic predictions, K = {k}):")
    tables = {label: gradient_ratio_table(fn, k) for label, fn in losses.items()}
    bins = tables[name]["bins"]
    lines.append(f"{'':>{width}}" + "".join(f"{b['p_y_from']:g}-{b['p_y_to']:g}".rjust(10) for b in bins) + "    cosine")
    for label, table in tables.items():
        lines.append(f"{label:>{width}}" + "".join(f"{b['ratio']:10.2f}" for b in table["bins"]) + f"{table['cosine']:10.3f}")
    return "\n".join(lines)


def add_cli(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("inspect", help="print a loss checkpoint's config, synthetic metrics and shape")
    p.add_argument("checkpoint", type=Path, help="loss folder (loss.json + loss.safetensors), a pretraining run folder, or a shipped "
                   "loss's name (default, v3, noise-0.4, noise-0.4-k10, ...)")
    p.add_argument("--classes", type=int, default=10, help="class count for the shape table")
    p.add_argument("--beside", nargs="+", metavar="SPEC", default=[],
                   help="lab losses to set beside it (e.g. gce sce forward:0.4 poly1; needs edloss[lab]): values and "
                        "gradient ratios in one table")
    p.add_argument("--figure", type=Path, help="also write the shape figure (PNG) of the loss and the --beside losses")
    p.set_defaults(func=_main)


MAX_CLASSES = 100_000  # the shape tables hold a (points, K) grid: 1e9 classes would take all memory


def check_figure_path(path: Path) -> None:
    """A --figure onto a folder or under a file fails now, before the tables are computed and printed."""
    if path.is_dir():
        raise ValueError(f"--figure {path} is a folder; give a .png file path")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(f"--figure {path} lies under {parent}, which is a file, not a folder")
            return


def _main(args: argparse.Namespace) -> int:
    """A damaged loss (bad checksum, non-finite weights) is refused by ``EDLLoss.from_file``: exit 2, one line."""
    if not 2 <= args.classes <= MAX_CLASSES:
        raise ValueError(f"--classes must be in [2, {MAX_CLASSES}], got {args.classes}")
    if args.figure:
        check_figure_path(args.figure)
    if not args.checkpoint.exists() and len(args.checkpoint.parts) == 1:  # a bare name: a shipped loss (a folder wins)
        loss = EDLLoss.pretrained(str(args.checkpoint))  # an unknown one is refused listing the shipped names
    else:
        loss = EDLLoss.from_file(resolve_checkpoint(args.checkpoint))
    references = reference_losses(args.beside, args.classes) if args.beside else {}
    print(describe(loss, args.classes))
    name = Path(args.checkpoint).name or "EDL"
    if references:
        print(compare_shapes(name, loss, references, args.classes))
    if args.figure:
        plot_shapes({name: loss_rows(loss), **references}, args.figure, args.classes)
        print(f"wrote {args.figure}")
    return 0
