"""Which EDL arm ships as the default? The rule fixed before the candidates ran, applied to the records.

    python benchmarks/default_rule.py [--out docs/figures/regimes] [--margin 0.1]

Rule (session 20, written in ``benchmarks/regimes.sh``, now ``src/edloss/lab/regimes.py``, before the candidates' runs): for each EDL
arm and each calibration regime, the *validation* gap to the best baseline (validation accuracy
means over the regime's test seeds, each arm at its own pick; a baseline is a hand-designed arm);
an arm's score is its worst gap over the calibration regimes. A candidate replaces the default
(``edl``) only if its score beats the default's by more than ``--margin`` points; of several, the
largest score. The test set plays no part. Prints the table and writes
``benchmarks/results/default_rule.json``; the verdict is "pending" until every arm has every
calibration regime's seeds, baselines included: every baseline of the regime's arms (``Regime.arms``; the
weight-decay check adds baselines at gain 0.5), not only those its summary lists so far.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import print_table, write_results  # noqa: E402

from edloss.lab.grid import parse_arms  # noqa: E402
from edloss.lab.regimes import REGIMES, arms_for, is_baseline  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = "edl"
CANDIDATES = ("edl-gain2", "edl-gain0.5")


def validation_gaps(out: Path, arms: tuple[str, ...]) -> dict[str, dict[str, float | None]]:
    """{arm: {regime: validation gap to the best baseline, None while its seeds are unfinished}}."""
    gaps: dict[str, dict[str, float | None]] = {arm: {} for arm in arms}
    for regime in (r for r in REGIMES.values() if r.role == "calibration"):
        summary = json.loads((out / regime.name / "summary.json").read_text())
        rows = {r["label"]: r for r in summary["rows"]}
        done = {label: r for label, r in rows.items() if r.get("n") == len(regime.seeds) and r.get("val_mean") is not None}
        baselines = [r["val_mean"] for r in done.values() if is_baseline(r["spec"])]
        # a baseline still running, or not started (the regime's arms, not only those its summary lists yet),
        # could become the best one: no gap is final until every baseline is
        expected = {arm.label: arm.spec for arm in parse_arms(arms_for(regime, out))}
        expected.update({label: r["spec"] for label, r in rows.items()})
        pending = any(is_baseline(spec) and label not in done for label, spec in expected.items())
        for arm in arms:
            row = done.get(arm)
            gaps[arm][regime.name] = None if row is None or not baselines or pending else row["val_mean"] - max(baselines)
    return gaps


def verdict(gaps: dict[str, dict[str, float | None]], margin: float) -> dict[str, object]:
    """The rule: each arm's worst gap, and which arm ships (or "pending")."""
    worst = {arm: (None if any(g is None for g in by.values()) else min(by.values())) for arm, by in gaps.items()}
    if any(w is None for w in worst.values()):
        return {"worst": worst, "ships": "pending", "why": "some arm has not finished every calibration regime"}
    better = [arm for arm in CANDIDATES if worst[arm] > worst[DEFAULT] + margin]
    ships = max(better, key=lambda a: worst[a]) if better else DEFAULT
    why = (f"{ships}'s worst validation gap {worst[ships]:+.2f} beats the default's {worst[DEFAULT]:+.2f} by more than {margin}"
           if better else f"no candidate beats the default's worst gap {worst[DEFAULT]:+.2f} by more than {margin}")
    return {"worst": worst, "ships": ships, "why": why}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(ROOT / "docs/figures/regimes"))
    parser.add_argument("--margin", type=float, default=0.1)
    args = parser.parse_args()
    if not math.isfinite(args.margin) or args.margin < 0:
        parser.error(f"--margin must be a finite number >= 0 (points of validation accuracy), got {args.margin}")
    missing = [r.name for r in REGIMES.values() if r.role == "calibration" and not (Path(args.out) / r.name / "summary.json").is_file()]
    if missing:
        parser.error(f"no records of {', '.join(missing)} under {args.out}: run `edloss regimes calibration --out {args.out}` first")
    gaps = validation_gaps(Path(args.out), (DEFAULT, *CANDIDATES))
    result = verdict(gaps, args.margin)
    rows = [{"arm": arm, **{r: ("—" if g is None else f"{g:+.2f}") for r, g in by.items()},
             "worst": "—" if result["worst"][arm] is None else f"{result['worst'][arm]:+.2f}"} for arm, by in gaps.items()]
    print_table(rows, list(rows[0]))
    print(f"ships: {result['ships']} ({result['why']})")
    print(f"wrote {write_results('default_rule', {'gaps': gaps, **result, 'margin': args.margin})}")


if __name__ == "__main__":
    main()
