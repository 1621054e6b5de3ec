"""Every flag of every ``edloss`` subcommand, given an out-of-range value: a one-line error naming it,
a non-zero exit, no traceback, nothing written, and no work started (issue 21.8).

Each case runs ``edloss.cli.main`` in this process with an otherwise valid, tiny command line, in
an empty working folder. The functions that start the real work are replaced by a sentinel, so a
value that slips through validation fails here at once instead of training for hours. A flag
added to a parser without a case here fails ``test_every_flag_has_a_case``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from _cifar_fixtures import _one_thread, tiny_cifar  # noqa: F401
from edloss.cli import build_parser, main

TRAIN_BASE = ["--epochs", "1", "--train-subset", "64", "--val-size", "32", "--batch-size", "32", "--quiet",
              "--threads", "1", "--data-dir", "{data}", "--device", "cpu"]
RECIPE = {  # the flags train and compare share (add_recipe_args)
    "--dataset": ["cifar1000"], "--data-dir": ["{missing}"], "--val-size": ["-1", "x"],
    "--train-subset": ["1", "0"], "--label-noise": ["1", "-0.1", "nan"], "--noise-seed": ["-1"],
    "--imbalance": ["0.5", "0", "nan", "inf", "x", "1e9"],
    "--epochs": ["0", str(10**20)], "--batch-size": ["1", "0"], "--lr": ["0", "nan", "inf", "-1"],
    "--momentum": ["1", "-0.1"], "--weight-decay": ["-1", "inf"], "--schedule": ["linear"],
    "--warmup-epochs": ["-1", "5", "nan"], "--eval-batch-size": ["0"], "--device": ["tpu", "cuda:99"],
    "--threads": ["0", "-2"], "--val-every": ["0", "x"],
}
CASES: dict[str, tuple[list[str], dict[str, list[str]]]] = {
    "train": (["--out", "{out}", *TRAIN_BASE], {
        **RECIPE, "--model": ["resnet9999"], "--loss": ["nope", "focal:gamma=-1", "edl:{missing}"],
        "--seed": ["-1", str(2**32)], "--out": ["{file}", "{file}/under"], "--stop-after": ["0"],
    }),
    "compare": (["--out", "{out}", "--losses", "ce", "--seeds", "0", *TRAIN_BASE], {
        **RECIPE, "--losses": ["nope", "a=ce a=poly1", "edl:{missing}"], "--versus": ["ce nope", "ce ce"],
        "--seeds": ["-1", "0 0", str(2**32)], "--models": ["resnet9999", "resnet8 resnet8"],
        "--out": ["{file}", "{file}/under"], "--ray": ["not-an-address"],
        "--lr-grid": ["0,1", "1", "1,1", "nan,2", "-1,2"], "--tune-seeds": ["-1", "0 0"],
        "--carry-picks": ["{missing}", "{file}", "{folder}"],
        "--wd-grid": ["1,2", "0,1 --lr-grid 0.5,1", "nan,1 --lr-grid 0.5,1", "1,1 --lr-grid 0.5,1",
                      "1,2 --lr-grid 0.5,1 --weight-decay 0"],
    }),
    "pretrain": (["--out", "{out}", "--generations", "2", "--population", "6", "--classes", "2,8", "--quiet",
                  "--threads", "1"], {
        "--config": ["{missing}", "{file}", "{folder}"], "--out": ["{file}", "{file}/under"],
        "--seed": ["-1", str(2**64)], "--generations": ["0", str(10**20)], "--population": ["1"],
        "--mutation": ["bogus"], "--sigma": ["0", "1e300", "nan"], "--objective": ["bogus"],
        "--severity": ["bogus"], "--classes": ["1", "5,2", "x"], "--features": ["bogus"],
        "--label-noise": ["1.5", "-1", "nan"], "--threads": ["0"], "--ray-actors": ["0", "2"],
        "--ray": ["not-an-address"], "--start": ["{missing}", "bogus", "v3"],
        "--imbalance": ["0.5", "nan", "1e9"],
    }),
    "world-check": (["--out", "{out}", "--regimes", "clean", "--repeats", "1", "--no-ranking", "--quiet", "--threads", "1"], {
        "--world": ["{missing}", "{file}", "{folder}"], "--family": ["bogus"], "--regimes": ["bogus"],
        "--repeats": ["0", "1000"], "--out": ["{file}", "{file}/under"], "--threads": ["0"],
        "--lr-grid": ["", "1", "0,1", "nan,1", "-1,1", "1,1", "x,1", "1,500"],
    }),
    "inspect": (["default"], {
        "checkpoint": ["{missing}"], "--classes": ["1", "0", str(10**9)], "--beside": ["bogus"],
        "--figure": ["{file}/under.png"],
    }),
    "ablate": (["--out", "{out}", "--seeds", "0", "--arms", "chaotic", "--generations", "2", "--population", "6",
                "--quiet", "--threads", "1"], {
        "--out": ["{file}", "{file}/under"], "--arms": ["bogus", "chaotic chaotic"], "--seeds": ["-1", "0 0"],
        "--sigmas": ["0", "-1", "nan", "1e300"], "--generations": ["0", str(10**20)], "--population": ["1"],
        "--heldout-every": ["0"], "--cmaes-sigmas": ["0"], "--levels": ["nan"], "--train-levels": ["inf"],
        "--smooth-window": ["0"], "--heldout-smooth": ["0"], "--config": ["{missing}", "{folder}"],
        "--jobs": ["0"], "--threads": ["0"], "--ray": ["not-an-address"], "--compare-args": ["--bogus 1"],
        "--evals-per-generation": ["0", "-5"],
    }),
    "adapt": (["--out", "{out}", "--data-dir", "{data}", "--proxy-images", "128", "--proxy-val", "32",
               "--reserve", "32", "--proxy-epochs", "1", "--population", "3", "--parents", "1", "--generations", "1",
               "--quiet"], {
        "--start": ["{missing}", "bogus"], "--out": ["{file}", "{file}/under"], "--mutation": ["bogus"],
        "--population": ["1"], "--parents": ["0", "9"], "--generations": ["0", str(10**20)],
        "--sigma": ["0", "1e300"], "--synthetic-weight": ["-1", "nan"], "--seed": ["-1"],
        "--data-dir": ["{missing}"], "--dataset": ["bogus"], "--proxy-model": ["bogus"], "--proxy-images": ["1"],
        "--proxy-epochs": ["0"], "--proxy-val": ["0"], "--reserve": ["0"], "--threads": ["0"],
    }),
    "report": (["{missing}"], {"runs": ["{missing}"], "--out": ["{file}"], "--threads": ["0", "-1"]}),
    "regimes": (["c10-budget", "--out", "{out}", "--data-dir", "{data}", "--arms", "ce", "--quiet", "--threads", "1",
                 "--device", "cpu"], {
        "regimes": ["bogus"], "--arms": ["nope", "a=ce a=poly1", "edl:{missing}"], "--lr-grid": ["0,1", "1", "x,2"], "--wd-grid": ["0,1", "1", "x,2"],
        "--per-class": ["0", "99999"], "--steps": ["0", "-3"], "--out": ["{file}", "{file}/under"],
        "--data-dir": ["{missing}"], "--device": ["tpu"], "--threads": ["0"],
    }),
}
# Flags with no value to get wrong: switches.
SWITCHES = {"--help", "--fresh", "--quiet", "--download", "--balanced-subset", "--no-augment", "--no-nesterov",
            "--channels-last", "--no-channels-last", "--compile", "--no-amp", "--summary-only", "--no-ranking",
            "--list", "--matrix-only", "--normalize-gradient", "--no-compile", "--cpu-amp", "--no-cpu-amp", "--backfill"}
# The functions where a command's real work begins: reaching one means the bad value was accepted.
# (report has none: build_report checks its inputs itself, before it writes, and the sweep checks nothing is written)
WORK = ["edloss.lab.train._train_locked", "edloss.lab.compare._compare_locked", "edloss.pretrain.pretrain",
        "edloss.lab.ablate.ablate", "edloss.lab.fitness_noise.run", "edloss.lab.adapt.adapt", "edloss.inspect.describe",
        "edloss.lab.world.world_check"]


class ReachedWork(AssertionError):
    """A bad value passed every check and the command started its work."""


def _cases() -> list[tuple[str, str, str]]:
    return [(command, flag, value) for command, (_, flags) in CASES.items()
            for flag, values in flags.items() for value in values]


def _fill(text: str, paths: dict[str, Path]) -> str:
    return text.format(**{k: str(v) for k, v in paths.items()})


def _argv(command: str, flag: str, value: str, paths: dict[str, Path]) -> list[str]:
    base, _ = CASES[command]
    values = [_fill(v, paths) for v in value.split(" ")]
    if not flag.startswith("-"):  # a positional argument: it replaces the base's
        return [command, *values]
    base = [_fill(a, paths) for a in base]
    return [command, *base, flag, *values]


def _files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*")}


@pytest.mark.parametrize("command, flag, value", _cases())
def test_out_of_range_values_are_one_line_errors(command: str, flag: str, value: str, tiny_cifar: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import importlib

    for target in WORK:
        module, name = target.rsplit(".", 1)
        try:
            owner = importlib.import_module(module)
        except ModuleNotFoundError:
            continue
        if hasattr(owner, name):
            monkeypatch.setattr(owner, name, lambda *a, _t=target, **k: (_ for _ in ()).throw(ReachedWork(_t)))
    work = tmp_path / "work"
    work.mkdir()
    (work / "afile").write_text("not a folder")
    (work / "afolder").mkdir()
    monkeypatch.chdir(work)
    paths = {"data": tiny_cifar, "out": work / "out", "missing": work / "nowhere", "file": work / "afile",
             "folder": work / "afolder"}
    before = _files(work)
    argv = _argv(command, flag, value, paths)
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse: usage, then one "error:" line
        code = exit_.code
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert code not in (0, None), f"{argv} was accepted"
    assert "Traceback" not in err and lines, err
    if code == 2 and lines[0].startswith("usage:"):
        assert lines[-1].startswith(f"edloss {command}: error: argument"), err
    else:
        assert len(lines) == 1 and lines[0].startswith(f"edloss {command}: error: "), err
    assert _files(work) == before, f"{argv} wrote {sorted(map(str, _files(work) - before))}"


def _flags(parser: argparse.ArgumentParser) -> dict[str, list[str]]:
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    out = {}
    for name, p in sub.choices.items():
        out[name] = [o for a in p._actions for o in (a.option_strings or [a.dest])]
    return out


def test_every_flag_has_a_case() -> None:
    """A new flag needs an out-of-range case above (or, for a switch, a place in SWITCHES)."""
    missing = [f"{command} {flag}" for command, flags in _flags(build_parser()).items() for flag in flags
               if flag not in SWITCHES and flag not in CASES.get(command, ([], {}))[1] and flag != "-h"]
    assert not missing, f"flags without an out-of-range case in tests/test_cli_sweep.py: {missing}"
