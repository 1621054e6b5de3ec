"""``edloss report RUN_DIR... [--out DIR]``: a markdown report with PNG figures.

Accepts, in any mix:

* an ablation folder (``edloss ablate``; holds ``ablation.json``): setup, final held-out metrics
  per arm and sigma, generations to each fitness level, the tests between arms, convergence
  curves with bands over seeds, time-to-level curves and the per-seed final metrics; its
  ``compare/`` grid (from the printed ``edloss compare`` command) is picked up when present;
* a pretraining run (``edloss pretrain``; holds ``config.json`` and ``metrics.jsonl``);
* a comparison grid (``edloss compare``; holds ``summary.json``): accuracy table with Δ vs
  cross-entropy and a bar chart.

Every learned loss found (each ablation arm's best, each finished pretraining run) is drawn
beside cross-entropy, focal loss and label smoothing: the loss and its gradient norm against
p_y, and a heat map over (p_y, largest other probability).

Unfinished inputs are reported as such (what is missing) and contribute what they have; a folder
that is none of the above is named in the report and skipped. The statistics are recomputed from
the run folders, so a report of a running ablation shows the runs finished so far.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from edloss.lab.report_figures import (_ce_rows, _edl_rows, heatmap_grid, plot_accuracy,  # noqa: F401 (heatmap_grid: importable here)
                                       plot_convergence, plot_final_metrics, plot_heatmap, plot_reliability,
                                       plot_run_curve, plot_time_to_level, reference_losses)
from edloss.lab.summary import format_delta, format_p, long_tail_table, plot_per_class, versus_table
from edloss.files import atomic_write_bytes, prepare_output_folder, read_jsonl

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
MAIN_TEST_METRICS = ("final_fitness", "final_kendall_tau", "final_gradient", "heldout_auc")


# ---------------------------------------------------------------------- inputs
@dataclass
class Source:
    """One input folder: what it is, whether it is finished, and what it holds."""

    path: Path
    kind: str  # ablation | pretrain | compare | invalid
    status: str = ""
    notes: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def inspect_source(path: Path) -> Source:
    """Classify a folder and load what can be loaded from it."""
    path = Path(path)
    if not path.exists():
        return Source(path, "invalid", "does not exist")
    if not path.is_dir():
        return Source(path, "invalid", "is a file, not a run folder")
    ablation = _read_json(path / "ablation.json")
    if isinstance(ablation, dict) and ablation.get("format") == "edloss-ablation":
        return _ablation_source(path, ablation)
    summary = _read_json(path / "summary.json")
    if isinstance(summary, dict) and "rows" in summary and "recipe" in summary:
        return _compare_source(path, summary)
    config = _read_json(path / "config.json")
    if isinstance(config, dict) and isinstance(config.get("config"), dict) and "es" in config["config"]:
        return _pretrain_source(path, config)
    hint = ""
    if any((path / arm).is_dir() for arm in ("chaotic", "gaussian", "cmaes")):
        hint = " (it has arm folders but no ablation.json: rerun edloss ablate with the same --out to rewrite it)"
    return Source(path, "invalid", "is not a run: expected ablation.json (edloss ablate), summary.json of a compare grid "
                                   "(edloss compare) or config.json + metrics.jsonl (edloss pretrain)" + hint)


def _ablation_source(path: Path, saved: dict[str, Any]) -> Source:
    from edloss.lab.ablate_config import AblationConfig
    from edloss.lab.ablate_summary import best_losses, collect
    from edloss.configs import from_dict

    try:
        cfg = from_dict(AblationConfig, saved["config"])
    except (KeyError, ValueError, TypeError) as err:
        return Source(path, "invalid", f"has an ablation.json this version cannot read ({err})")
    try:
        collected = collect(path, cfg)  # fresh from the run folders: a running ablation shows what has finished
    except ValueError as err:  # a damaged metrics line in one of its runs
        return Source(path, "invalid", f"has a damaged run file: {err}")
    st = collected["status"]
    source = Source(path, "ablation", data={**saved, **collected, "cfg": cfg, "best": best_losses(collected["groups"])})
    if st["complete"]:
        source.status = f"finished ({st['finished']} runs)"
    else:
        source.status = f"unfinished: {st['finished']} of {st['planned']} runs finished"
        if st["unfinished"]:
            source.notes.append(f"{len(st['unfinished'])} run(s) started but not finished, e.g. {st['unfinished'][0]}")
        if st["missing"]:
            source.notes.append(f"{len(st['missing'])} run(s) not started")
        source.notes.append("statistics and figures below use the finished runs only; rerun the ablation's command to finish it")
    compare_dir = path / "compare"
    if compare_dir.is_dir():
        source.data["compare_dir"] = compare_dir
    return source


def _compare_source(path: Path, summary: dict[str, Any]) -> Source:
    runs = summary.get("runs", [])
    done = sum(r.get("status") == "finished" for r in runs)
    diverged = sum(r.get("status") == "diverged" for r in runs)
    source = Source(path, "compare", data=summary)
    if runs and done + diverged == len(runs):
        source.status = f"finished ({done} runs" + (f", {diverged} diverged)" if diverged else ")")
    else:
        source.status = f"unfinished: {done} of {len(runs)} runs finished" + (f", {diverged} diverged" if diverged else "")
        source.notes.append("the accuracy table uses finished seeds only")
    return source


def resume_command(command: str) -> str:
    """The command that resumes a run: its own command without ``--fresh``, which would delete
    the checkpoint instead of continuing from it."""
    try:
        words = shlex.split(command)
    except ValueError:  # unbalanced quotes: leave the text alone, minus the flag
        return " ".join(w for w in command.split() if w != "--fresh")
    return shlex.join(w for w in words if w != "--fresh")


def _pretrain_source(path: Path, config: dict[str, Any]) -> Source:
    try:
        rows = read_jsonl(path / "metrics.jsonl")  # no repair: the run may still be writing
    except ValueError as err:
        return Source(path, "invalid", f"has a damaged metrics file: {err}")
    planned = int(config["config"]["es"].get("generations", 0))
    summary = _read_json(path / "summary.json")
    finished = isinstance(summary, dict) and (path / "loss" / "loss.json").is_file()
    source = Source(path, "pretrain", data={"config": config, "rows": rows, "summary": summary if finished else None})
    if finished:
        source.status = f"finished ({len(rows)} generations)"
    else:
        source.status = f"unfinished: {len(rows)} of {planned} generations, no exported loss yet"
        command = config.get("command")
        source.notes.append("its curve is drawn from the generations done; loss figures need the exported loss"
                            + (f" (resume with: `{resume_command(command)}`)" if command else ""))
    return source


# ---------------------------------------------------------------------- markdown
def _pm(d: dict[str, Any] | None, digits: int = 4) -> str:
    if not d or d.get("mean") is None:
        return "—"
    if d.get("std") is None:  # a single seed has no spread
        return f"{d['mean']:.{digits}f}"
    return f"{d['mean']:.{digits}f} ± {d['std']:.{digits}f}"


def _p(p: float | None) -> str:
    if p is None:
        return "—"
    return f"{p:.2g}" if p >= 0.001 else f"{p:.1e}"


def _slug(path: Path) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", path.resolve().name or "root").strip("_") or "run"


def _image(path: Path | None, out: Path, alt: str) -> list[str]:
    return [f"![{alt}]({path.relative_to(out).as_posix()})", ""] if path else []


def _ablation_markdown(src: Source, out: Path, prefix: str) -> tuple[list[str], dict[str, LossFn]]:
    d, cfg = src.data, src.data["cfg"]
    base = cfg.base
    budget = d.get("budget", {})
    lines = [f"## Ablation: `{src.path}`", "", f"Status: {src.status}.", ""]
    lines += [f"- {n}" for n in src.notes] + ([""] if src.notes else [])
    if d.get("command"):
        lines += ["Command:", "", f"```\n{d['command']}\n```", ""]
    lines += [
        f"Setup: arms {', '.join(cfg.arms)}; seeds {', '.join(map(str, cfg.seeds))} ({len(cfg.seeds)} per arm and sigma); "
        f"ES sigmas {', '.join(f'{s:g}' for s in cfg.sigmas)}"
        + (f"; CMA-ES sigma₀ from {', '.join(f'{s:g}' for s in cfg.cmaes_sigmas)} (divided by √2, then adapted)" if "cmaes" in cfg.arms else "")
        + f". Budget per run: {base.es.generations} generations × population {base.es.population} "
        f"= {base.es.generations * base.es.population} fitness evaluations, each on {base.objective.blocks} fresh synthetic "
        f"blocks of {base.objective.evals_per_block} loss evaluations (objective {base.objective.kind}/{base.objective.severity}), "
        f"the same batches for every arm of a seed. ES: {base.es.parents} parents, {base.es.elites} elites, "
        f"{budget.get('sigma_schedule', base.es.schedule)}; Gaussian step {budget.get('gaussian_step', '')}. "
        f"Held-out synthetic set evaluated every {base.heldout_every} generations.", ""]
    groups = d["groups"]
    lines += ["### Final held-out synthetic metrics of the exported loss", "",
              "Mean ± sample std over seeds. *Run mean* is the held-out fitness averaged over the run (higher = better and sooner).", "",
              "| arm | σ | seeds | fitness | value | gradient | Kendall τ | run mean | wall time (s) |", "|---|---|---|---|---|---|---|---|---|"]
    for g in groups:
        f = g["final"]
        wall = g["wall_seconds"]["mean"]
        lines.append(f"| {g['arm']} | {g['sigma']:g} | {g['n']} | {_pm(f['fitness'])} | {_pm(f['value_hard'])} | {_pm(f['gradient'])} | "
                     f"{_pm(f['kendall_tau'])} | {_pm(g['heldout_auc'])} | {'—' if wall is None else f'{wall:.1f}'} |")
    lines += ["", "### Generations to reach a fitness level", "",
              f"Median generation (seeds that reached it / seeds). Held-out: running mean of {cfg.heldout_smooth} held-out "
              f"evaluations ({cfg.heldout_smooth * base.heldout_every} generations); training: running mean of "
              f"{cfg.smooth_window} generations of the best training fitness (best of the population on a fresh batch, "
              "biased upwards, hence higher levels). A median of — means fewer than half the seeds reached it.", ""]
    keys = [f"heldout_{lv:g}" for lv in cfg.levels] + [f"train_smoothed_{lv:g}" for lv in cfg.train_levels]
    header = [f"held-out ≥ {lv:g}" for lv in cfg.levels] + [f"training ≥ {lv:g}" for lv in cfg.train_levels]
    lines += ["| arm | σ | " + " | ".join(header) + " |", "|---|---|" + "---|" * len(header)]
    for g in groups:
        cells = []
        for key in keys:
            s = g["gens_to_level"][key]
            cells.append(f"{'—' if s['median'] is None else format(s['median'], 'g')} ({s['reached']}/{g['n']})")
        lines.append(f"| {g['arm']} | {g['sigma']:g} | " + " | ".join(cells) + " |")
    lines += ["", "### Tests between arms", "",
              "Per σ and pair of arms: difference of means a − b with a bootstrap 95% interval (10,000 resamples), "
              "Mann–Whitney U two-sided p (and Holm-adjusted within the metric over all σ and pairs), and a Wilcoxon "
              "signed-rank p on same-seed pairs (same initial population and batches). For generations-to-level a seed that "
              "never reached the level counts as the budget; lower is better there. All metrics and levels are in "
              "`ablation.json`.", "",
              "| σ | a vs b | metric | mean a | mean b | a − b [95% CI] | MW p | MW p (Holm) | Wilcoxon p | better mean |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    shown = set(MAIN_TEST_METRICS) | {f"gens_to_heldout_{lv:g}" for lv in cfg.levels}
    for t in d["tests"]:
        if t["metric"] not in shown:
            continue
        bs, mw, wx = t["bootstrap"], t["mann_whitney"], t["wilcoxon_paired"]
        digits = 1 if t["metric"].startswith("gens_to") else 4
        ci = "—" if bs["diff"] is None else f"{bs['diff']:+.{digits}f} [{bs['lo']:+.{digits}f}, {bs['hi']:+.{digits}f}]"
        ma, mb = t["a_stats"]["mean"], t["b_stats"]["mean"]
        lines.append(f"| {t['sigma']:g} | {t['a']} vs {t['b']} | {t['metric']} | {'—' if ma is None else f'{ma:.{digits}f}'} | "
                     f"{'—' if mb is None else f'{mb:.{digits}f}'} | {ci} | {_p(mw['p'])} | {_p(mw.get('p_holm'))} | {_p(wx['p'])} | "
                     f"{t.get('better_mean') or '—'} |")
    lines += ["", *verdict(d["tests"], cfg), ""]
    figures = [
        (plot_convergence(groups, out / f"{prefix}convergence.png", f"convergence per arm, {len(cfg.seeds)} seeds"), "convergence curves per arm"),
        (plot_time_to_level(groups, list(cfg.levels), cfg.heldout_smooth, base.es.generations, out / f"{prefix}time_to_level.png"), "fraction of seeds at each level"),
        (plot_final_metrics(groups, out / f"{prefix}final_metrics.png"), "final held-out metrics per seed"),
    ]
    lines += ["### Figures", ""]
    for path, alt in figures:
        lines += _image(path, out, alt)
    losses: dict[str, LossFn] = {}
    best = d.get("best", {})
    if best:
        lines += ["### Best loss of each arm", "", "Best held-out fitness over all of the arm's σ and seeds; these are the losses "
                  "for the CIFAR-10 check.", "", "| arm | σ | seed | held-out fitness | run |", "|---|---|---|---|---|"]
        for arm, info in best.items():
            lines.append(f"| {arm} | {info['sigma']:g} | {info['seed']} | {info['heldout_fitness']:.4f} | `{info['run']}` |")
            try:
                losses[f"EDL {arm} (σ={info['sigma']:g}, seed {info['seed']})"] = _edl_rows(Path(info["run"]) / "loss")
            except (OSError, ValueError) as err:
                lines.append(f"| {arm} | | | | loss unreadable: {err} |")
        lines.append("")
    if d.get("compare_command"):
        lines += ["Downstream check (CIFAR-10, same recipe and budget for every arm):", "", f"```\n{d['compare_command']}\n```", ""]
    return lines, losses


def verdict(tests: list[dict[str, Any]], cfg: Any, alpha: float = 0.05) -> list[str]:
    """One sentence per sigma on chaotic vs Gaussian, as measured (no claim beyond the p-values)."""
    out = []
    for metric, what in (("final_fitness", "final held-out fitness"), ("heldout_auc", "run-mean held-out fitness"),
                         *((f"gens_to_heldout_{lv:g}", f"generations to held-out {lv:g}") for lv in cfg.levels)):
        for t in tests:
            if t["metric"] != metric or {t["a"], t["b"]} != {"chaotic", "gaussian"}:
                continue
            p = t["mann_whitney"]["p"]
            if p is None:
                continue
            ma, mb = t["a_stats"]["mean"], t["b_stats"]["mean"]
            word = "significant" if p < alpha else "not significant"
            out.append(f"- σ = {t['sigma']:g}, {what}: {t['a']} {ma:.4g} vs {t['b']} {mb:.4g} "
                       f"(better mean: {t.get('better_mean') or 'tie'}; Mann–Whitney p = {_p(p)}, {word} at {alpha}).")
    if out:
        out.insert(0, f"**Chaotic vs Gaussian, as measured** ({len(cfg.seeds)} seeds per arm):")
        out.insert(1, "")
    return out


def _pretrain_markdown(src: Source, out: Path, prefix: str) -> tuple[list[str], dict[str, LossFn]]:
    cfg = src.data["config"]
    es = cfg["config"]["es"]
    lines = [f"## Pretraining run: `{src.path}`", "", f"Status: {src.status}.", ""]
    lines += [f"- {n}" for n in src.notes] + ([""] if src.notes else [])
    if cfg.get("command"):
        lines += ["Command:", "", f"```\n{cfg['command']}\n```", ""]
    lines += [f"Mutation {es.get('mutation')}, seed {es.get('seed')}, population {es.get('population')}, "
              f"{es.get('generations')} generations, σ {es.get('sigma_init')} → {es.get('sigma_final')} ({es.get('schedule')}).", ""]
    summary = src.data["summary"]
    losses: dict[str, LossFn] = {}
    if summary:
        h, ce = summary["heldout"], summary["cross_entropy_heldout"]
        lines += ["| held-out metric | this loss | cross-entropy |", "|---|---|---|"]
        for key in ("fitness", "value_hard", "gradient", "kendall_tau"):
            if key in h:
                lines.append(f"| {key} | {h[key]:.4f} | {ce.get(key, float('nan')):.4f} |")
        lines.append("")
        try:
            losses[f"EDL {src.path.name}"] = _edl_rows(src.path / "loss")
        except (OSError, ValueError) as err:
            lines += [f"Its loss could not be read: {err}", ""]
    lines += _image(plot_run_curve(src.data["rows"], out / f"{prefix}curve.png", f"{src.path.name}: fitness per generation"), out, "fitness per generation")
    return lines, losses


def _compare_markdown(src: Source, out: Path, prefix: str, synthetic: dict[str, float] | None = None) -> list[str]:
    s = src.data
    lines = [f"## CIFAR comparison grid: `{src.path}`", "", f"Status: {src.status}.", ""]
    lines += [f"- {n}" for n in src.notes] + ([""] if src.notes else [])
    r = s.get("recipe", {})
    if r:
        lines += [f"Recipe: {r.get('dataset')}, {r.get('epochs')} epochs, batch {r.get('batch_size')}, lr {r.get('lr')}, "
                  f"{r.get('schedule')} schedule, training images: {r.get('train_subset') or 'all'}; seeds "
                  f"{', '.join(map(str, s.get('seeds', [])))}.", ""]
    has_synth = bool(synthetic) and any(row["label"] in synthetic for row in s.get("rows", []))
    head = ("| model | loss | spec | seeds | test acc (%) | val acc (%) | Δ vs CE | vs CE | vs Poly-1 | test NLL | ECE (%) |"
            + (" held-out fitness of the loss |" if has_synth else ""))
    lines += ["Accuracy in percent, mean ± std over finished seeds; Δ vs CE in points of test accuracy, paired by seed "
              "(summaries written before pairing: difference of means); p: two-sided Wilcoxon signed-rank, paired by seed; "
              "NLL and top-label ECE (15 bins) on the test set.", "",
              head, "|---|---|---|---|---|---|---|---|---|---|---|" + ("---|" if has_synth else "")]
    for row in s.get("rows", []):
        delta = format_delta(row)
        test = _pm({"mean": row.get("test_mean"), "std": row.get("test_std")}, 2)
        val = _pm({"mean": row.get("val_mean"), "std": row.get("val_std")}, 2)
        seeds = f"{row.get('n', 0)}" + (f" (+{row['diverged']} diverged)" if row.get("diverged") else "")
        cell = ""
        if has_synth:
            cell = f" {synthetic[row['label']]:.4f} |" if row["label"] in synthetic else " — |"
        nll = "—" if row.get("nll_mean") is None else f"{row['nll_mean']:.3f}"
        ece = _pm({"mean": row.get("ece_mean"), "std": row.get("ece_std")}, 2)
        lines.append(f"| {row['model']} | {row['label']} | `{row['spec']}` | {seeds} | {test} | {val} | {delta} | "
                     f"{format_p(row, 'ce')} | {format_p(row, 'poly1')} | {nll} | {ece} |{cell}")
    lines.append("")
    for model in s.get("models", []):
        lines += long_tail_table(s, model)
        lines += versus_table(s, model)
    if has_synth:
        lines += agreement(s.get("rows", []), synthetic) + [""]
    lines += _image(plot_accuracy(s, out / f"{prefix}accuracy.png"), out, "test accuracy per loss")
    lines += _image(plot_reliability(src.path, s, out / f"{prefix}reliability.png"), out, "reliability diagram")
    if s.get("recipe", {}).get("imbalance") is not None:
        lines += _image(plot_per_class(s, out / f"{prefix}per_class_accuracy.png"), out, "test accuracy per class")
    return lines


def agreement(rows: list[dict[str, Any]], synthetic: dict[str, float]) -> list[str]:
    """Does the order of the arms by held-out synthetic fitness match their order by test accuracy?"""
    pairs = [(synthetic[r["label"]], r["test_mean"]) for r in rows if r["label"] in synthetic and r.get("test_mean") is not None]
    if len(pairs) < 2:
        return ["Synthetic vs downstream: fewer than two EDL arms have finished CIFAR runs; no ordering to compare yet."]
    concordant = discordant = 0
    for (s1, a1), (s2, a2) in ((pairs[i], pairs[j]) for i in range(len(pairs)) for j in range(i + 1, len(pairs))):
        sign = (s1 - s2) * (a1 - a2)
        concordant += sign > 0
        discordant += sign < 0
    total = len(pairs) * (len(pairs) - 1) // 2
    tau = (concordant - discordant) / total
    return [f"Synthetic vs downstream: over the {len(pairs)} EDL arms, Kendall τ between held-out synthetic fitness and "
            f"mean test accuracy is {tau:+.2f} ({concordant} of {total} pairs ordered alike). With this few arms and seeds it "
            "is a description, not a test."]


def build_report(paths: list[Path], out: Path, progress: bool = True) -> dict[str, Any]:
    """Write ``out/report.md`` and its figures; returns what was built and what was skipped."""
    out = Path(out)
    sources = [inspect_source(Path(p)) for p in paths]
    seen = {s.path.resolve() for s in sources}
    for s in list(sources):  # an ablation's compare/ grid joins the report unless given already
        extra = s.data.get("compare_dir") if s.kind == "ablation" else None
        if extra and Path(extra).resolve() not in seen:
            found = inspect_source(Path(extra))
            if found.kind == "compare":
                sources.append(found)
                seen.add(Path(extra).resolve())
    usable = [s for s in sources if s.kind != "invalid"]
    if not usable:  # one line naming every input, not a note per input and then the error
        raise ValueError("nothing to report: " + "; ".join(f"{s.path} {s.status}" for s in sources))
    for s in sources:
        if s.kind == "invalid":
            _say(True, f"edloss report: {s.path} {s.status}; skipped")
        elif s.status.startswith("unfinished"):
            _say(progress, f"edloss report: {s.path} ({s.kind}) is {s.status}; reporting the finished parts")
    out = prepare_output_folder(out)
    lines = ["# EDL report", "", "| input | kind | status |", "|---|---|---|"]
    lines += [f"| `{s.path}` | {s.kind} | {s.status} |" for s in sources]
    lines.append("")
    skipped = [s for s in sources if s.kind == "invalid"]
    if skipped:
        lines += ["Skipped:", ""] + [f"- `{s.path}` {s.status}" for s in skipped] + [""]
    losses: dict[str, LossFn] = {}
    synthetic: dict[str, float] = {}
    body: list[str] = []
    multiple = len(usable) > 1
    for i, s in enumerate(usable):
        prefix = f"{i + 1}_{_slug(s.path)}_" if multiple else ""
        if s.kind == "ablation":
            part, found = _ablation_markdown(s, out, prefix)
            losses.update(found)
            synthetic.update({arm: info["heldout_fitness"] for arm, info in s.data.get("best", {}).items()})
        elif s.kind == "pretrain":
            part, found = _pretrain_markdown(s, out, prefix)
            losses.update(found)
        else:
            continue
        body += part
    for i, s in enumerate(usable):
        if s.kind == "compare":
            prefix = f"{i + 1}_{_slug(s.path)}_" if multiple else ""
            body += _compare_markdown(s, out, prefix, synthetic)
    figures: list[Path] = []
    if losses:
        body += ["## Learned losses beside cross-entropy, focal loss and label smoothing", "",
                 "Left: loss against p_y at K = 10 with the remaining mass spread evenly; right: its gradient norm "
                 "with respect to the logits. EDL losses are scale-anchored: their gradient norm at the uniform "
                 "prediction equals cross-entropy's.", ""]
        from edloss.shapes import plot_shapes

        shapes = plot_shapes({**reference_losses(), **losses}, out / "loss_shapes.png")
        heat = plot_heatmap({"cross-entropy": _ce_rows, **reference_losses(), **losses}, out / "loss_heatmap.png")
        figures += [shapes, heat]
        body += _image(shapes, out, "loss and gradient norm against p_y")
        body += ["Loss over (p_y, largest other probability) at K = 10, other classes sharing the rest evenly "
                 "(white: impossible predictions). A proper loss grows towards the lower left (true class unlikely) and, "
                 "at fixed p_y, its shape along the vertical says how it treats a single strong rival versus spread-out mass.", ""]
        body += _image(heat, out, "loss heat map over p_y and max other probability")
    text = "\n".join(lines + body).rstrip() + "\n"
    atomic_write_bytes(out / "report.md", text.encode())
    pngs = sorted(p.name for p in out.glob("*.png"))
    _say(progress, f"wrote {out / 'report.md'} with {len(pngs)} figure(s)")
    return {"report": str(out / "report.md"), "figures": pngs, "sources": [(str(s.path), s.kind, s.status) for s in sources]}


def _say(progress: bool, message: str) -> None:
    if progress:
        print(message, file=sys.stderr, flush=True)


def add_cli(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="markdown report with figures from ablation, pretraining and compare folders",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", type=Path, metavar="RUN_DIR", help="ablation folders, pretraining runs, compare grids")
    p.add_argument("--out", help="report folder (default: RUN_DIR/report for one input, runs/report for several)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default %(default)s)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    if args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    torch.set_num_threads(args.threads)
    if args.out is not None:
        prepare_output_folder(args.out)  # a bad --out fails before any reading or drawing
        out = Path(args.out)
    else:
        out = args.runs[0] / "report" if len(args.runs) == 1 else Path("runs/report")
    result = build_report(args.runs, out, progress=not args.quiet)
    if not args.quiet:
        print(result["report"])
    skipped = [s for s in result["sources"] if s[1] == "invalid"]
    return 1 if skipped else 0
