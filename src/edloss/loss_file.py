"""The loss file format: a checkpoint is a folder with two files,

* ``loss.safetensors``: the network's weights (safetensors: no pickle, so loading one is safe);
* ``loss.json``: format name and version, the network's architecture, the scale that anchors the
  gradient at the uniform prediction to cross-entropy's, two sha256 sums (of the weights, and of
  the weights together with every other field that decides behaviour: architecture, scale and,
  from format 3 on, the provenance, which holds the noise rate ``from_file(noise_rate=...)``
  checks and the notes a load warns with), the provenance and, for a loss told the class prior
  (format 4), ``prior``: its class counts and tau, which a load restores.

Here: reading one back with every check (``read_checkpoint``, what ``EDLLoss.from_file`` calls),
writing one (``write_checkpoint``, what ``EDLLoss.save`` calls), the checksums, and what a
loss's provenance says (the noise rate it was pretrained for, whether it was evolved for the prior).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from edloss._version import __version__
from edloss.checks import _is_rate, _prior_strength, log_prior
from edloss.files import atomic_write_bytes, atomic_write_json
from edloss.lossnet import LossNet, LossNetConfig

FORMAT_NAME = "edloss-loss"
FORMAT_VERSION = 4  # 2: definition_sha256 covers the architecture and scale too; 3: the provenance too; 4: the prior
PRIORLESS_FORMAT_VERSION = 3  # what a loss without a prior is saved as: every edloss since format 3 reads it
WEIGHTS_FILE = "loss.safetensors"
CONFIG_FILE = "loss.json"
PRETRAIN_NOISE_MAX = 0.99  # the largest --label-noise pretraining takes
NOT_MONOTONE = "not_monotone"  # a provenance field: where the loss was measured to push a logit the wrong way


def read_checkpoint(path: str | os.PathLike[str], noise_rate: float | None = None,
                    allow_unverified: bool = False) -> tuple[Path, dict[str, Any], LossNet]:
    """A checkpoint folder (or its loss.json / loss.safetensors) read back, verifying both
    checksums, the field types and that every weight is finite: its folder, its loss.json and its
    network (see ``EDLLoss.from_file``, which builds the loss from them)."""
    if isinstance(path, bool) or not isinstance(path, (str, os.PathLike)) or not str(path).strip():
        raise TypeError(f"path must name a checkpoint folder (holding {CONFIG_FILE} and {WEIGHTS_FILE}), got {path!r}")
    if not isinstance(allow_unverified, bool):
        raise TypeError(f"allow_unverified must be True or False, got {allow_unverified!r}")
    folder = _checkpoint_folder(Path(path))
    meta = _read_config(folder / CONFIG_FILE, allow_unverified)
    if noise_rate is not None:
        if not _is_rate(noise_rate) or not 0 <= noise_rate <= PRETRAIN_NOISE_MAX:
            raise ValueError(f"noise_rate must be a number in [0, {PRETRAIN_NOISE_MAX}] (the share of wrong labels the loss "
                             f"was pretrained for), got {noise_rate!r}")
        trained = pretrained_noise_rate(meta)
        if abs(trained - noise_rate) > 1e-9:
            raise ValueError(f"{folder} was pretrained for label noise {trained:g}, not {noise_rate!r}; "
                             f"pretrain one with `edloss pretrain --label-noise {noise_rate}`, or use "
                             "EDLLoss.pretrained(noise_rate=...) for the shipped ones")
    blob = _read_bytes(folder / WEIGHTS_FILE)
    digest = hashlib.sha256(blob).hexdigest()
    if digest != meta["sha256"]:
        raise ValueError(
            f"checksum mismatch for {folder / WEIGHTS_FILE}: the weights were modified or truncated "
            f"after saving (sha256 {digest[:12]}..., expected {meta['sha256'][:12]}...). "
            "Re-export the loss with `edloss pretrain` or restore the original files."
        )
    if meta["format_version"] >= 2 and definition_digest(meta, blob) != meta["definition_sha256"]:
        covered = "architecture, scale or provenance" if meta["format_version"] >= 3 else "architecture or scale"
        raise ValueError(
            f"{folder / CONFIG_FILE} was edited after saving: its {covered} no longer match "
            "definition_sha256, so the file would define a different loss. Restore the original loss.json."
        )
    try:
        tensors = load_safetensors(blob)
    except Exception as err:  # noqa: BLE001 - any parse failure means a corrupt file
        raise ValueError(f"{folder / WEIGHTS_FILE} is not a valid safetensors file ({err})") from err
    try:  # files written before the monotone form existed hold free-form networks
        config = LossNetConfig(**{"form": "free", **meta["lossnet"]})
    except (TypeError, ValueError) as err:
        raise ValueError(f"{folder / CONFIG_FILE}: invalid field 'lossnet': {err}") from err
    net = LossNet(config)
    theta = tensors.get("theta")
    if theta is None or not torch.isfinite(theta).all():
        raise ValueError(f"{folder / WEIGHTS_FILE} holds no 'theta' tensor or non-finite weights; the loss cannot be used")
    if theta.dim() != 1:
        raise ValueError(f"{folder / WEIGHTS_FILE}: 'theta' must be a flat vector, got shape {tuple(theta.shape)}")
    try:
        net.load_flat(theta)
    except ValueError as err:
        raise ValueError(f"{folder / WEIGHTS_FILE} does not match its loss.json architecture: {err}") from err
    return folder, meta, net


def write_checkpoint(folder: Path, net: LossNet, scale: float, metadata: dict[str, Any],
                     prior: dict[str, Any] | None = None) -> Path:
    """Write ``loss.safetensors`` and ``loss.json`` into ``folder`` (see ``EDLLoss.save``); ``prior``:
    the class counts and tau of a loss told the prior (format 4), else None (format 3)."""
    blob = save_safetensors({"theta": net.flat().float().contiguous()})
    meta = {
        "format": FORMAT_NAME,
        # a loss told a prior is format 4, which an edloss that cannot restore the prior refuses
        "format_version": FORMAT_VERSION if prior is not None else PRIORLESS_FORMAT_VERSION,
        "edloss_version": __version__,
        "lossnet": lossnet_fields(net.config),
        "scale": float(scale),
        "sha256": hashlib.sha256(blob).hexdigest(),
    }
    if prior is not None:
        meta["prior"] = prior
    provenance = json.loads(json.dumps(metadata))  # the digest covers what a load will read back
    meta["definition_sha256"] = definition_digest({**meta, "provenance": provenance}, blob)
    meta["provenance"] = provenance
    atomic_write_bytes(folder / WEIGHTS_FILE, blob)
    atomic_write_json(folder / CONFIG_FILE, meta)
    return folder


def pretrained_noise_rate(meta: dict[str, Any]) -> float:
    """The label-noise rate a checkpoint was pretrained for (0 for clean labels, or where the
    provenance does not record one as a number): the ranking objective's ``label_noise``, or for
    a loss evolved in the students world (``objective.kind = "students"``) its world's."""
    provenance = meta.get("provenance", {})
    config = provenance.get("config", {}) if isinstance(provenance, dict) else {}
    config = config if isinstance(config, dict) else {}
    objective = config.get("objective", {}) if isinstance(config.get("objective"), dict) else {}
    source = config.get("world", {}) if objective.get("kind") == "students" else objective
    rate = source.get("label_noise", 0.0) if isinstance(source, dict) else 0.0
    return float(rate) if _is_rate(rate) else 0.0


def evolved_with_prior(metadata: dict[str, Any]) -> bool:
    """Whether a loss's provenance says it was evolved to score the logit-adjusted prediction
    (a prior-aware students world: ``longtail-k10``, any ``edloss pretrain --imbalance`` output)."""
    config = metadata.get("config") if isinstance(metadata, dict) else None
    world = config.get("world") if isinstance(config, dict) else None
    objective = config.get("objective") if isinstance(config, dict) else None
    kind = objective.get("kind") if isinstance(objective, dict) else None
    return kind == "students" and isinstance(world, dict) and world.get("prior_aware") is True


def definition_digest(meta: dict[str, Any], blob: bytes) -> str:
    """sha256 of everything that decides behaviour: format, architecture, scale, weights and, from
    format 3 on, the provenance (``from_file(noise_rate=...)`` checks the rate recorded there, and a
    load warns with its notes: an edited provenance would pass a loss off as another)."""
    keys = ("format", "format_version", "lossnet", "scale") + (("provenance",) if meta["format_version"] >= 3 else ())
    keys += ("prior",) if meta["format_version"] >= 4 else ()
    definition = {key: meta.get(key) for key in keys}
    canonical = json.dumps(definition, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(canonical + b"\0" + blob).hexdigest()


def lossnet_fields(cfg: LossNetConfig) -> dict[str, Any]:
    """The architecture as loss.json stores it."""
    return {"features": list(cfg.features), "hidden": list(cfg.hidden), "activation": cfg.activation, "form": cfg.form,
            **({"noise_rate": cfg.noise_rate} if cfg.form == "corrected" else {})}


def definition_tensor(cfg: LossNetConfig, scale: float, prior: tuple[list[int], float] | None = None) -> torch.Tensor:
    """sha256 of the architecture, scale and (for a loss told a prior) class counts and tau as 32
    uint8: a state-dict entry (a tensor, so a state dict stays loadable with ``weights_only`` and
    savable as safetensors) that names the function the weights belong to. Integer, so
    ``.half()`` leaves it alone. A prior-blind loss hashes as before the prior existed, so its
    saved state dicts stay loadable."""
    fields: dict[str, Any] = {"lossnet": lossnet_fields(cfg), "scale": float(scale)}
    if prior is not None:
        fields["prior"] = {"class_counts": list(prior[0]), "prior_strength": float(prior[1])}
    canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"))
    return torch.frombuffer(bytearray(hashlib.sha256(canonical.encode()).digest()), dtype=torch.uint8)


def loss_folder(path: str | os.PathLike[str]) -> Path | None:
    """The loss folder a path names, as ``edloss inspect`` reads it: a loss folder, its
    ``loss.json`` or ``loss.safetensors``, or a run folder holding ``loss/``; None where none is."""
    path = Path(path)
    folder = path.parent if path.name in (WEIGHTS_FILE, CONFIG_FILE) and path.is_file() else path
    for candidate in (folder, folder / "loss"):
        if (candidate / CONFIG_FILE).is_file():
            return candidate
    return None


def _checkpoint_folder(path: Path) -> Path:
    folder = path.parent if path.name in (WEIGHTS_FILE, CONFIG_FILE) else path
    if not folder.is_dir():
        raise FileNotFoundError(f"no EDL loss checkpoint at {path}: expected a folder holding {CONFIG_FILE} and {WEIGHTS_FILE}")
    return folder


def _read_bytes(path: Path) -> bytes:
    if path.is_dir():
        raise ValueError(f"{path} is a folder, not a file; a checkpoint folder holds the files {CONFIG_FILE} and {WEIGHTS_FILE}")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file {path} is missing; a checkpoint folder holds {CONFIG_FILE} and {WEIGHTS_FILE}")
    return path.read_bytes()


FIELD_TYPES: dict[str, tuple[type, ...]] = {"format": (str,), "format_version": (int,), "lossnet": (dict,), "scale": (float, int), "sha256": (str,)}


def _read_config(path: Path, allow_unverified: bool = False) -> dict[str, Any]:
    """Parse loss.json and check every field that defines the loss: presence, type, range. A
    format-1 file (no definition checksum) only with ``allow_unverified``."""
    try:
        meta = json.loads(_read_bytes(path))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON (truncated or edited?): {err}") from err
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
        raise ValueError(f"{path} is not an edloss loss checkpoint (format {meta.get('format') if isinstance(meta, dict) else None!r})")
    for key, types in FIELD_TYPES.items():
        if key not in meta:
            raise ValueError(f"{path} lacks the field {key!r}; the checkpoint is incomplete")
        value = meta[key]
        if isinstance(value, bool) or not isinstance(value, types):
            raise ValueError(f"{path}: field {key!r} must be {' or '.join(t.__name__ for t in types)}, got {type(value).__name__} {value!r}")
    version = meta["format_version"]
    if version > FORMAT_VERSION or version < 1:
        raise ValueError(f"{path} has format version {version}; this edloss reads 1..{FORMAT_VERSION} (newer: pip install -U edloss)")
    if version >= 2 and not isinstance(meta.get("definition_sha256"), str):
        raise ValueError(f"{path}: field 'definition_sha256' must be a string (format version {version} requires it)")
    if not isinstance(meta.get("provenance", {}), dict):
        raise ValueError(f"{path}: field 'provenance' must be a dict, got {type(meta['provenance']).__name__}")
    if version == 1 and not allow_unverified:
        raise ValueError(f"{path} is format version 1: no checksum covers its architecture, scale or provenance, so an edit "
                         "would load silently. If you trust it, load it with EDLLoss.from_file(path, allow_unverified=True) "
                         "and re-save it with loss.save(path)")
    if version == 1:
        warnings.warn(f"{path} is format version 1, loaded unverified (allow_unverified=True); re-save it with loss.save()", stacklevel=4)
    if version == 2:
        warnings.warn(f"{path} is format version 2: its provenance (the noise rate it was pretrained for) is not checksummed; "
                      "re-save it with loss.save()", stacklevel=4)
    if not (math.isfinite(meta["scale"]) and meta["scale"] > 0):
        raise ValueError(f"{path}: field 'scale' must be a finite positive number, got {meta['scale']!r}")
    if "prior" in meta or version >= 4:
        _check_prior_field(path, meta.get("prior"), version)
    return meta


def _check_prior_field(path: Path, prior: Any, version: int) -> None:
    """loss.json's ``prior`` (format 4): the class counts and tau the loss was saved with."""
    if version < 4:
        raise ValueError(f"{path}: field 'prior' needs format version 4 (found {version}); the file was edited")
    if prior is None:
        return
    if not isinstance(prior, dict) or set(prior) != {"class_counts", "prior_strength"}:
        raise ValueError(f"{path}: field 'prior' must be an object with 'class_counts' and 'prior_strength', got {prior!r}")
    try:
        log_prior(prior["class_counts"])
        _prior_strength(prior["prior_strength"])
    except ValueError as err:
        raise ValueError(f"{path}: invalid field 'prior': {err}") from None
