"""The loss a pretraining search starts from (``edloss pretrain --start``, ``PretrainConfig.start``):
a shipped loss or a loss folder, whose network must be the run's. Generation 0 is drawn around
it, and under the students objective it competes with the search's candidates for the export."""

from __future__ import annotations

import warnings
from typing import Any

import torch

from edloss.configs import to_dict
from edloss.loss import EDLLoss
from edloss.loss_file import CONFIG_FILE, loss_folder
from edloss.shipped import is_shipped, shipped_names


def start_parameters(cfg: Any) -> torch.Tensor:
    """Flat parameters of ``cfg.start`` (a shipped name, a loss folder or its loss.json, or a run
    folder holding loss/: what ``edloss inspect`` takes), which must have this run's network
    (``cfg``: the run's ``PretrainConfig``)."""
    folder = None if is_shipped(cfg.start) else loss_folder(cfg.start)
    if not is_shipped(cfg.start) and folder is None:
        raise ValueError(f"start loss {cfg.start!r} is neither a shipped loss ({', '.join(shipped_names())}) nor a loss folder "
                         f"with {CONFIG_FILE} (nor its {CONFIG_FILE}, nor a run folder holding loss/)")
    with warnings.catch_warnings():  # only its parameters are used: a load-time advisory (v3's) is not this run's news
        warnings.simplefilter("ignore")
        loss = EDLLoss.pretrained(cfg.start) if folder is None else EDLLoss.from_file(folder)
    if to_dict(loss.net.config) != to_dict(cfg.lossnet):
        raise ValueError(f"start loss {cfg.start!r} has another network ({to_dict(loss.net.config)}) than this run's lossnet "
                         f"({to_dict(cfg.lossnet)}); set the lossnet section to match it")
    return loss.net.flat().detach().float()
