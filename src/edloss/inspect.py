"""``edloss inspect CKPT``: what a loss checkpoint is, where it came from and how it is shaped."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from edloss.loss import CONFIG_FILE, EDLLoss
from edloss.pretrain import loss_rows
from edloss.shapes import format_gradient_ratio_table, format_shape_table, gradient_ratio_table, shape_table


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


def add_cli(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("inspect", help="print a loss checkpoint's config, synthetic metrics and shape")
    p.add_argument("checkpoint", type=Path, help="loss folder (loss.json + loss.safetensors), a pretraining run folder, or 'default'")
    p.add_argument("--classes", type=int, default=10, help="class count for the shape table")
    p.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    """A damaged loss (bad checksum, non-finite weights) is refused by ``EDLLoss.from_file``: exit 2, one line."""
    if args.classes < 2:
        raise ValueError(f"--classes must be >= 2, got {args.classes}")
    if str(args.checkpoint) == "default" and not args.checkpoint.exists():
        loss = EDLLoss.pretrained()
    else:
        loss = EDLLoss.from_file(resolve_checkpoint(args.checkpoint))
    print(describe(loss, args.classes))
    return 0
