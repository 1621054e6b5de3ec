"""A pretraining run's export: the chosen loss network, its scale anchored to cross-entropy's
gradient at the uniform prediction, saved as ``loss/`` with ``summary.json`` (its held-out
metrics beside cross-entropy's, Poly-1's and, under label noise, forward-corrected CE's, per class
count too), ``metrics.csv`` and ``loss_shape.png``."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch

from edloss.configs import to_dict, versions
from edloss.files import atomic_write_json
from edloss.loss import EDLLoss
from edloss.lossnet import LossNet
from edloss.objectives import objective_for
from edloss.objectives.ranking import ObjectiveConfig, evaluate, ranking_heldout
from edloss.penalties import anchor_gradient_norm, ce_anchor_norm, cross_entropy_penalty, forward_corrected_penalty, poly1_penalty, population_penalty
from edloss.pretrain_config import PretrainConfig
from edloss.pretrain_folder import write_csv
from edloss.shapes import plot_shapes, shape_table


def export_candidates(cfg: PretrainConfig, candidates: torch.Tensor, heldout: Any, out: Path, command: str, wall_seconds: float,
                      summary_extra: dict[str, Any] | None = None, **kwargs: Any) -> tuple[EDLLoss, dict[str, Any], int]:
    """``export_best`` for any objective: the objective shortlists the candidates first (under the
    students objective the one with the best held-out world fitness, ``world.select``'s worlds,
    else the search's, the start loss among them, whose ranking metrics are then recorded on the
    ranking held-out set); the export picks the best of the shortlist on the ranking held-out set."""
    shortlist, chosen, picked = objective_for(cfg).shortlist(candidates, heldout)
    ranking_set = heldout if picked is None else ranking_heldout(cfg)  # the objective chose on its own held-out set
    loss, summary, best = export_best(cfg, shortlist, ranking_set, out, command, wall_seconds,
                                      summary_extra={**(summary_extra or {}), **chosen}, **kwargs)
    return loss, summary, best if picked is None else picked


def export_best(
    cfg: PretrainConfig,
    candidates: torch.Tensor,
    heldout: list,
    out: Path,
    command: str,
    wall_seconds: float,
    summary_extra: dict[str, Any] | None = None,
    provenance_extra: dict[str, Any] | None = None,
    label: str | None = None,
) -> tuple[EDLLoss, dict[str, Any], int]:
    """Save the candidate with the best held-out fitness as ``out/loss`` (scale anchored to CE),
    with ``summary.json``, ``metrics.csv`` and ``loss_shape.png``; returns it, the summary and its index."""
    metrics = evaluate(population_penalty(candidates, cfg.lossnet), candidates.shape[0], heldout, cfg.objective, all_metrics=True)
    best = int(torch.argmax(metrics["fitness"]))
    chosen = candidates[best]
    norm = float(anchor_gradient_norm(population_penalty(chosen[None], cfg.lossnet), 1)[0])
    scale = ce_anchor_norm() / max(norm, 1e-12)
    scores = {name: float(value[best]) for name, value in metrics.items()}
    ce, poly1 = ({name: float(v[0]) for name, v in evaluate(ref, 1, heldout, cfg.objective, all_metrics=True).items()}
                 for ref in (cross_entropy_penalty, poly1_penalty))
    references = {"edl": population_penalty(chosen[None], cfg.lossnet), "cross_entropy": cross_entropy_penalty, "poly1": poly1_penalty}
    summary_extra = dict(summary_extra or {})
    if cfg.objective.label_noise > 0:  # the fair rival under noise: it knows the rate too
        references["forward_corrected"] = forward_corrected_penalty(cfg.objective.label_noise)
        fc = evaluate(references["forward_corrected"], 1, heldout, cfg.objective, all_metrics=True)
        summary_extra["forward_corrected_heldout"] = {name: float(v[0]) for name, v in fc.items()}
    summary_extra["heldout_by_k"] = heldout_by_k(references, heldout, cfg.objective)
    provenance = {"command": command, "seed": cfg.es.seed, "config": to_dict(cfg), "heldout_metrics": scores, "versions": versions(), "real_data_stage": False}
    loss = EDLLoss(LossNet.from_flat(chosen, cfg.lossnet), scale=scale, metadata={**provenance, **(provenance_extra or {})})
    loss.save(out / "loss")
    summary = {"seed": cfg.es.seed, **(summary_extra or {}), "heldout": scores, "cross_entropy_heldout": ce, "poly1_heldout": poly1, "scale": scale,
               "wall_seconds": wall_seconds, "shape": shape_table(loss_rows(loss))}
    atomic_write_json(out / "summary.json", summary)
    write_csv(out / "metrics.jsonl", out / "metrics.csv")
    try:
        plot_shapes({label or f"EDL ({cfg.es.mutation}, seed {cfg.es.seed})": loss_rows(loss)}, out / "loss_shape.png")
    except ModuleNotFoundError as err:  # the figure needs the lab extra; the loss itself does not
        if err.name != "matplotlib":
            raise
        print(f"note: {out / 'loss_shape.png'} not drawn: matplotlib is missing (pip install 'edloss[lab]')", file=sys.stderr)
    return loss, summary, best


def heldout_by_k(penalties: dict[str, Any], heldout: list, objective: ObjectiveConfig) -> dict[str, dict[str, dict[str, float]]]:
    """Fitness, value and calibration of each penalty on each held-out block (one class count K each).

    The pooled held-out numbers weigh blocks by their pair counts, and one block can dominate: under
    label noise the K = 2 block, where the labels carry least information, decided the pooled
    ranking of losses while K = 10 (CIFAR-10's) ranked them the other way."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for batch in heldout:
        k = str(batch.logits.shape[-1])
        out[k] = {name: {m: float(v[0]) for m, v in evaluate(penalty, 1, [batch], objective).items()
                         if m in ("fitness", "value", "calibration")} for name, penalty in penalties.items()}
    return out


def loss_rows(loss: EDLLoss):
    """A per-row view of an EDLLoss, for shape tables and plots."""
    unreduced = EDLLoss(loss.net, scale=float(loss.scale), reduction="none", check_inputs=False)
    return lambda logits, target: unreduced(logits, target)
