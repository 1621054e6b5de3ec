"""The grid's vocabulary: arms (labelled loss specs), runs (model x arm x seed in a folder),
and the checks a grid passes before anything trains. Shared by ``compare`` (which runs grids),
``tuning`` (which adds learning rates) and ``summary`` (which reads them back)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from edloss.lab.losses import build_loss_from_spec, parse_loss_arm, spec_definition
from edloss.lab.recipe import RESUME_IGNORED, TrainConfig, config_diff
from edloss.lab.runfiles import CHECKPOINT, definition_diff, read_result

DEFAULT_LOSSES = ("ce", "label_smoothing", "focal", "poly1", "edl")
DEFAULT_SEEDS = (0, 1, 2)
SEED_FIELD = "{seed}"


@dataclass(frozen=True)
class Arm:
    """One loss of the comparison: a folder-safe label and the spec that builds it."""

    label: str
    spec: str

    def spec_for(self, seed: int) -> str:
        """The spec a run of this seed trains with: ``{seed}`` replaced by the seed."""
        return self.spec.replace(SEED_FIELD, str(seed))


@dataclass(frozen=True)
class GridRun:
    model: str
    arm: Arm
    seed: int
    config: TrainConfig
    out_dir: Path


def parse_arms(texts: list[str] | tuple[str, ...]) -> list[Arm]:
    """``["ce", "edl-chaotic=edl:runs/x/loss"]`` -> arms; duplicate labels are an error."""
    arms = [Arm(*parse_loss_arm(t)) for t in texts]
    labels = [a.label for a in arms]
    dupes = sorted({x for x in labels if labels.count(x) > 1})
    if dupes:
        raise ValueError(f"duplicate loss labels {dupes}; name arms LABEL=SPEC, "
                         "e.g. edl-chaotic=edl:runs/a/loss edl-gauss=edl:runs/b/loss")
    if not arms:
        raise ValueError("no losses given; e.g. --losses ce focal edl")
    return arms


def plan(recipe: TrainConfig, arms: list[Arm], seeds: list[int], models: list[str],
         out_dir: Path) -> list[GridRun]:
    """All runs in execution order: seed outermost, so a partial grid covers every loss."""
    return [GridRun(model, arm, seed, replace(recipe, model=model, loss=arm.spec_for(seed), seed=seed),
                    out_dir / model / arm.label / f"seed{seed}")
            for seed in seeds for model in models for arm in arms]


def _mismatches(runs: list[GridRun]) -> list[str]:
    """Runs whose folders hold results or checkpoints of another config, or of another loss
    under the same spec (an ``edl:PATH`` whose PATH was overwritten since)."""
    import torch

    problems = []
    definitions: dict[str, str | None] = {}
    for run in runs:
        saved = read_result(run.out_dir)
        if saved is None and (run.out_dir / CHECKPOINT).is_file():
            try:
                saved = torch.load(run.out_dir / CHECKPOINT, map_location="cpu", weights_only=True)
            except Exception:
                saved = None  # train() explains unreadable checkpoints itself
        if not isinstance(saved, dict) or not isinstance(saved.get("config"), dict):
            continue  # nothing saved yet, or damaged: train() names it with the way out
        spec = run.config.loss
        if spec not in definitions:
            definitions[spec] = spec_definition(spec)
        diff = config_diff(saved["config"], asdict(run.config)) or definition_diff(saved, spec, definitions[spec])
        if diff:
            problems.append(f"{run.out_dir}: {'; '.join(diff)}")
    return problems


def _check_arms(arms: list[Arm], seeds: list[int]) -> None:
    """Build every loss once (every seed's, for ``{seed}`` specs), so a missing EDL checkpoint
    fails now, not hours into the grid."""
    for arm in arms:
        for spec in dict.fromkeys(arm.spec_for(seed) for seed in seeds):
            try:
                build_loss_from_spec(spec)
            except (ValueError, TypeError, FileNotFoundError) as err:
                raise type(err)(f"loss {arm.label}={spec}: {err}") from None


def check_grid(seeds: list[int], models: list[str]) -> None:
    """Each seed and model at most once: a repeat would count one run as several (``--seeds 0 0 0``
    showed "3 seeds, ± 0.00" from a single run), as ``ablate`` refuses too."""
    if not seeds:
        raise ValueError("no seeds given; e.g. --seeds 0 1 2")
    for flag, values in (("--seeds", list(seeds)), ("--models", list(models))):
        repeated = sorted({str(v) for v in values if values.count(v) > 1})
        if repeated:
            raise ValueError(f"{flag} repeats {', '.join(repeated)} ({' '.join(map(str, values))}): each run would be "
                             "counted once per repeat; give each at most once")


RECIPE_EXCLUDED = frozenset({"model", "loss", "seed"})  # what varies inside a grid


def summary_recipe(recipe: TrainConfig, runs: list[GridRun]) -> TrainConfig:
    """The recipe the runs present were trained with, for ``--summary-only``: the summary states the
    recipe above the numbers, so it must be theirs, not whatever flags the rewrite was given. A
    flag set away from its default that contradicts the runs is refused, as are runs of
    different recipes; flags left at their defaults take the runs' values."""
    defaults, flags = asdict(TrainConfig()), asdict(recipe)
    keys = [k for k in flags if k not in RECIPE_EXCLUDED | RESUME_IGNORED]
    saved = [(run, read_result(run.out_dir)) for run in runs]
    saved = [(run.out_dir, {k: result["config"].get(k, defaults[k]) for k in keys}
              | _base_values({k: result["config"][k] for k in keys if k in result["config"]}, run.config, recipe))
             for run, result in saved
             if result and isinstance(result.get("config"), dict)]  # a result without one cannot say its recipe
    if not saved:
        return recipe
    first_dir, first = saved[0]
    for folder, other in saved[1:]:
        diff = config_diff(first, other)
        if diff:
            raise ValueError(f"{first_dir} and {folder} were trained with different recipes ({'; '.join(diff)}); "
                             "one summary states one recipe: compare them in separate --out folders")
    conflicts = [f"--{k.replace('_', '-')} {flags[k]!r} (the runs: {first[k]!r})" for k in keys
                 if flags[k] != defaults[k] and flags[k] != first[k]]
    if conflicts:
        raise ValueError(f"--summary-only: the runs in the grid were not trained with {', '.join(conflicts)}; "
                         "drop those flags (the summary takes the recipe from the runs) or give the runs' values")
    return replace(recipe, **first)


def _base_values(saved: dict[str, Any], planned: TrainConfig, recipe: TrainConfig) -> dict[str, Any]:
    """A tuned run's saved rate and weight decay divided by the multipliers its folder planned, so
    the runs of one tuned grid state one base recipe (a rate of 0.05 in ``lr0.5/`` is a base 0.1)."""
    out = dict(saved)
    for key in ("lr", "weight_decay"):
        base, scaled = getattr(recipe, key), getattr(planned, key)
        if key in out and base and scaled and scaled != base and isinstance(out[key], (int, float)):
            out[key] = float(f"{out[key] * base / scaled:.12g}")
    return out


def check_versus(versus: list[tuple[str, str]], arms: list[Arm]) -> None:
    """Every ``--versus`` pair names two different arms of the grid."""
    labels = [a.label for a in arms]
    for a, b in versus:
        unknown = [x for x in (a, b) if x not in labels]
        if unknown:
            raise ValueError(f"--versus {a} {b}: no arm labelled {', '.join(unknown)}; the arms are {', '.join(labels)}")
        if a == b:
            raise ValueError(f"--versus {a} {b}: name two different arms")
