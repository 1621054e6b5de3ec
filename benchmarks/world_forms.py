"""Which learning-rate-invariant form of the students world predicts the *tuned* CIFAR matrix? (issue 34)

    python benchmarks/world_forms.py --threads 1 [--draws 3] [--regimes c10-limited-50 c100-budget]
    python benchmarks/world_forms.py --reuse-world --regimes c10-limited-50   # more CIFAR seeds, same world scores

The regime matrix (``edloss regimes``) gives every arm its own best learning rate on CIFAR. A world
whose fitness a search climbs should rank those tuned arms the same way. For each matrix regime
with records, each of its arms is scored in the world that stands for it (``WORLD_FOR``, with the
regime's own ``WORLD_KNOBS``: the noise regime's world has its labels wrong at the same rate), in four
forms:

* ``plain``: every student at the world's one rate (the world as the searches so far saw it);
* ``lr-grid``: every loss, CE too, at its best of 0.5 / 1 / 2x the world's rate on validation;
* ``normalized``: each student's logit gradient rescaled to CE's norm every step;
* ``lr-grid-wd``: ``lr-grid`` with coupled weight decay (1e-3) in the students' SGD, as CIFAR's recipe
  has, so a loss times g is judged as on CIFAR: a rate and a weight decay, not a step alone.

The CIFAR side is the tuned test accuracy of the arms with >= 3 seeds finished, once three arms
have them, else every arm's best validation accuracy over the grid (seed 0; said in the table).
Rerunning some regimes keeps the others' previous results in the JSON. Reported per regime and form:
Spearman's rho over the arms, and the near-pair sign agreement over every pair of arms whose CIFAR
difference exceeds the seed noise (pairs by test accuracy, >= 3 seeds a side) or, before the seeds
finish, over every pair (marked provisional); and the same over the *firm* pairs only, whose CIFAR
difference exceeds two standard errors (CIFAR itself sure of the sign); and each regime's noise
ceiling (``noise_ceiling``): what a world that knew CIFAR's true means would score, given the seeds.
Prints tables, writes ``benchmarks/results/world_forms.json``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import sys
from dataclasses import replace
from pathlib import Path

import torch
from scipy.stats import spearmanr

sys.path.insert(0, str(Path(__file__).parent))
from _common import print_table, write_results  # noqa: E402

from edloss.lab.world import REGIMES as WORLD_REGIMES  # noqa: E402
from edloss.lab.world import world_loss  # noqa: E402
from edloss.students import PRESETS, WorldConfig, reference_results, sample_tasks, score_module  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MATRIX = ROOT / "docs/figures/regimes"
PREVIOUS = ROOT / "benchmarks/results/world_forms.json"  # the last run: its world scores and the regimes not rerun
# each CIFAR regime's stand-in world: little data memorised, today's under-trained budget, K = 100
WORLD_FOR = {"c10-limited-50": "gaussian-small-data", "c10-limited-250": "gaussian-small-data",
             "c10-budget": "gaussian-default", "c10-full": "gaussian-long",
             "c100-budget": "gaussian-k100", "c100-limited": "gaussian-k100", "c10-noise-0.4": "gaussian-default",
             "c10-noise-0.6": "gaussian-default"}
# what a regime sets in its stand-in world beyond the preset: a noise regime's world is the one `edloss world-check`
# judges at that rate (its labels wrong at the regime's rate, classes balanced), taken from world-check's own table
WORLD_KNOBS = {"c10-noise-0.4": WORLD_REGIMES["noise-0.4"], "c10-noise-0.6": WORLD_REGIMES["noise-0.6"]}
FORMS = {"plain": {}, "lr-grid": {"lr_grid": (0.5, 1.0, 2.0)}, "normalized": {"normalize_gradient": True},
         # session 21: the lr-grid form with coupled weight decay in the students' SGD, as on CIFAR, so a loss's gain
         # changes its weight decay and not only its step (1e-3: CIFAR's lr x wd x steps / (1 - momentum) matched)
         "lr-grid-wd": {"lr_grid": (0.5, 1.0, 2.0), "weight_decay": 1e-3}}
MIN_SEEDS = 3


def cifar_side(regime: str) -> list[dict]:
    """Per arm of a recorded regime: spec, the CIFAR number the world should predict, its std and seeds.

    One source for every arm, so no pair compares a test mean with a validation number: tuned test
    accuracy of the arms with >= 3 seeds once at least three arms have them (arms still running are
    left out), else every arm's best seed-0 validation accuracy over the grid (provisional)."""
    summary = json.loads((MATRIX / regime / "summary.json").read_text())
    picks = next(iter(summary["tuning"]["picks"].values()))
    per_seed = {}  # the runs at each arm's pick, by seed: what a paired (seed-matched) noise estimate needs
    for run in summary["runs"]:
        if run["status"] == "finished":
            per_seed.setdefault(run["label"], {})[run["seed"]] = 100 * run["test_acc"]
    tested = [{"arm": row["label"], "spec": row["spec"], "cifar": row["test_mean"], "std": row["test_std"],
               "seeds": row["n"], "source": "test", "per_seed": per_seed.get(row["label"], {})}
              for row in summary["rows"] if row.get("n", 0) >= MIN_SEEDS]
    if len(tested) >= 3 or summary["tuning"].get("carried_from"):  # a carried grid's curves are another regime's
        return tested
    arms = []
    for row in summary["rows"]:
        curve = [v for v in picks.get(row["label"], {}).get("curve", {}).values() if v is not None]
        if curve:
            arms.append({"arm": row["label"], "spec": row["spec"], "cifar": max(curve), "std": None, "seeds": 1,
                         "source": "best val, seed 0"})
    return arms


def world_scores(world: WorldConfig, arms: list[dict], draws: int) -> dict[str, float]:
    """Each arm's accuracy over CE's students (points), averaged over ``draws`` task draws."""
    modules = {a["arm"]: world_loss(a["spec"]) for a in arms}  # candidate paths are relative to the repository (main chdirs there)
    totals = {a["arm"]: 0.0 for a in arms}
    for draw in range(draws):
        tasks = sample_tasks(world, torch.Generator().manual_seed(2000 + draw))
        reference = reference_results(tasks, world)
        for name, module in modules.items():
            totals[name] += 100 * score_module(module, tasks, world, reference)["accuracy_delta"] / draws
    return totals


def apart(a: dict, b: dict, diff: float, z: float = 1.0) -> bool:
    """Whether a CIFAR difference ``diff`` between arms ``a`` and ``b`` exceeds ``z`` standard errors of
    the difference of their means: the rule by which a pair counts."""
    return abs(diff) > z * math.sqrt(a["std"] ** 2 / a["seeds"] + b["std"] ** 2 / b["seeds"])


def agreement(arms: list[dict], scores: dict[str, float], z: float = 1.0) -> tuple[int, int, bool]:
    """(right, counted, provisional): pairs whose world difference has the CIFAR difference's sign,
    counting the pairs whose CIFAR difference exceeds ``z`` standard errors (the issue's rule: z = 1;
    z = 2: pairs whose sign CIFAR itself establishes, at about 95%)."""
    tested = all(a["source"] == "test" for a in arms)
    right = counted = 0
    for a, b in itertools.combinations(arms, 2):
        diff = a["cifar"] - b["cifar"]
        if tested and not apart(a, b, diff, z):
            continue
        counted += 1
        right += (scores[a["arm"]] - scores[b["arm"]]) * diff > 0
    return right, counted, not tested


def noise_ceiling(arms: list[dict], draws: int = 2000, seed: int = 0) -> tuple[float, float] | tuple[None, None]:
    """What a *perfect* world would score against this regime's CIFAR numbers, given their seed noise:
    (expected Spearman, expected fraction of counted pairs right). A gate above it cannot be passed
    however good the world, only with more seeds.

    A parametric bootstrap. The noise that can reorder arms is what is left of a run's accuracy once
    its arm and its seed are accounted for (a seed that is lucky for every arm reorders none): the
    residual of the arms x common-seeds table. The arms' true means are their measured means shrunk
    toward the grand mean by the share of their spread that is not that noise (method of moments);
    each redraw adds the noise back, a perfect world ranks by the true means, and pairs are counted by
    ``apart``, as ``agreement`` counts them."""
    if len(arms) < 3 or any(a["source"] != "test" for a in arms):
        return None, None
    common = sorted(set.intersection(*(set(a["per_seed"]) for a in arms)))
    if len(common) < 2:
        return None, None
    table = torch.tensor([[a["per_seed"][s] for s in common] for a in arms], dtype=torch.float64)
    residual = table - table.mean(1, keepdim=True) - table.mean(0, keepdim=True) + table.mean()
    sigma = math.sqrt(float((residual ** 2).sum()) / ((len(arms) - 1) * (len(common) - 1)))
    se = torch.tensor([sigma / math.sqrt(a["seeds"]) for a in arms], dtype=torch.float64)
    means = torch.tensor([a["cifar"] for a in arms], dtype=torch.float64)
    spread = float(means.var())
    shrink = math.sqrt(max(0.0, 1.0 - float((se ** 2).mean()) / spread)) if spread > 0 else 0.0
    true = means.mean() + shrink * (means - means.mean())
    generator = torch.Generator().manual_seed(seed)
    rhos, right, counted = [], 0, 0
    for _ in range(draws):
        measured = true + se * torch.randn(len(arms), generator=generator, dtype=torch.float64)
        rhos.append(float(spearmanr(true.tolist(), measured.tolist())[0]) if shrink > 0 else 0.0)
        for i, j in itertools.combinations(range(len(arms)), 2):
            diff = float(measured[i] - measured[j])
            if apart(arms[i], arms[j], diff):
                counted += 1
                right += diff * float(true[i] - true[j]) > 0
    return sum(rhos) / draws, (right / counted if counted else float("nan"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--draws", type=int, default=3)
    parser.add_argument("--reuse-world", action="store_true",
                        help="take each form's world scores from the previous JSON (deterministic: same draws, same "
                             "losses) and recompute only the CIFAR side, e.g. once more seeds finished; arms without "
                             "a stored score are scored")
    parser.add_argument("--regimes", nargs="+", choices=list(WORLD_FOR),
                        default=[r for r in WORLD_FOR if (MATRIX / r / "summary.json").is_file()])
    args = parser.parse_args()
    missing = [r for r in args.regimes if not (MATRIX / r / "summary.json").is_file()]
    if missing:
        parser.error(f"no matrix records for {', '.join(missing)} under {MATRIX}: run `edloss regimes {' '.join(missing)} "
                     "--out docs/figures/regimes` first")
    torch.set_num_threads(args.threads)
    os.chdir(ROOT)
    rows, detail = [], {}
    previous = json.loads(PREVIOUS.read_text()) if PREVIOUS.is_file() else {}  # read once: reuse, then keep
    stored = previous_detail(previous, args.draws) if args.reuse_world else {}
    for regime in args.regimes:
        arms = cifar_side(regime)
        rho_ceiling, pair_ceiling = noise_ceiling(arms)
        base = replace(WorldConfig(), **PRESETS[WORLD_FOR[regime]], **WORLD_KNOBS.get(regime, {}))
        for form, knobs in FORMS.items():
            known = {arm: score for arm, (spec, score) in stored.get(f"{regime}/{form}", {}).items()
                     if spec == next((a["spec"] for a in arms if a["arm"] == arm), None)}  # same label, same loss
            missing = [a for a in arms if a["arm"] not in known]
            scores = {**known, **(world_scores(replace(base, **knobs), missing, args.draws) if missing else {})}
            scores = {a["arm"]: scores[a["arm"]] for a in arms}
            rho = spearmanr([scores[a["arm"]] for a in arms], [a["cifar"] for a in arms])[0] if len(arms) > 2 else float("nan")
            right, counted, provisional = agreement(arms, scores)
            firm_right, firm_counted = agreement(arms, scores, z=2.0)[:2] if not provisional else (None, None)
            rows.append({"regime": regime, "world": WORLD_FOR[regime], "form": form, "arms": len(arms), "spearman": float(rho),
                         "pairs_right": right, "pairs_counted": counted, "firm_right": firm_right,
                         "firm_counted": firm_counted, "provisional": provisional,
                         "spearman_ceiling": rho_ceiling, "pairs_ceiling": pair_ceiling})
            detail[f"{regime}/{form}"] = {"world": scores, "cifar": {a["arm"]: a for a in arms}}
            print_table(rows[-1:], list(rows[-1]))
            print("   world:", "  ".join(f"{k} {v:+.2f}" for k, v in scores.items()), "| cifar:",
                  "  ".join(f"{a['arm']} {a['cifar']:.2f}" for a in arms), flush=True)
    rows, detail = keep_other_regimes(previous, rows, detail, args.regimes)
    print()
    print_table(rows, list(dict.fromkeys(key for row in rows for key in row)))  # rows kept from older runs may lack columns
    print(f"wrote {write_results('world_forms', {'rows': rows, 'detail': detail, 'draws': args.draws, 'forms': FORMS, 'world_for': WORLD_FOR, 'world_knobs': WORLD_KNOBS, 'presets': PRESETS, 'reused_world_scores': args.reuse_world})}")


def previous_detail(old: dict, draws: int) -> dict[str, dict[str, tuple[str | None, float]]]:
    """The previous run's (``old``) world scores per "regime/form" (arm -> (spec, score)), when it used the same
    draws, forms, stand-in worlds and presets: a world score depends only on the loss, the world and
    the draws, so it can be reused when only the CIFAR side changed. Not detected: a loss whose spec
    stayed while its weights changed (a new shipped default): rerun without --reuse-world then."""
    if old.get("draws") != draws or old.get("presets") != json.loads(json.dumps(PRESETS)):
        return {}  # another world: every score is made anew
    forms, knobs = json.loads(json.dumps(FORMS)), json.loads(json.dumps(WORLD_KNOBS))

    def same_world(key: str) -> bool:  # a regime keeps its scores while its stand-in world and form are unchanged
        regime, form = key.split("/")
        return (old.get("world_for", {}).get(regime) == WORLD_FOR.get(regime)
                and old.get("world_knobs", {}).get(regime) == knobs.get(regime)
                and old.get("forms", {}).get(form) == forms.get(form))

    return {key: {arm: (value["cifar"].get(arm, {}).get("spec"), score) for arm, score in value["world"].items()}
            for key, value in old.get("detail", {}).items() if same_world(key)}


def keep_other_regimes(old: dict, rows: list[dict], detail: dict, rerun: list[str]) -> tuple[list[dict], dict]:
    """The previous results (``old``) of the regimes not rerun this time, kept beside the new ones:
    rerunning one regime as its seeds finish does not erase the others."""
    kept = [r for r in old.get("rows", []) if r["regime"] not in rerun]
    kept_detail = {k: v for k, v in old.get("detail", {}).items() if k.split("/")[0] not in rerun}
    return kept + rows, {**kept_detail, **detail}


if __name__ == "__main__":
    main()
