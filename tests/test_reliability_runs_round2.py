"""Runs that mean what they say (issue 23) and CIFAR labels that are what they claim (issue 21.6):
a --fresh that waits for the lock, resumed and reused runs checked against the loss definition,
summaries labelled with the runs' own recipe, repeated seeds, and one-line errors for the damaged
files and values a hostile user tried."""

from __future__ import annotations

import argparse
import errno
import json
import pickle
import subprocess
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from _cifar_fixtures import _one_thread, tiny_cifar, tiny_config  # noqa: F401
from edloss.cli import build_parser, main
from edloss.evolve import ESConfig
from edloss.lab import adapt as AD
from edloss.lab import compare as C
from edloss.lab import data as D
from edloss.lab.losses import build_loss_from_spec, parse_loss_spec, spec_definition
from edloss.lab.train import DEFINITION_KEY, TrainConfig, train
from edloss.loss import EDLLoss
from edloss.lossnet import LossNet, LossNetConfig
from test_reliability_runs import PRIMED, PYTHON, _env, _wait_for


# ---------------------------------------------------------------------- CIFAR labels (issue 21.6)
def _batch(path: Path, labels: list, extra: dict | None = None) -> Path:
    batch = {b"batch_label": b"x", b"labels": labels, b"data": np.zeros((len(labels), 3072), np.uint8), **(extra or {})}
    path.write_bytes(pickle.dumps(batch, protocol=2))
    return path


@pytest.mark.parametrize("labels, what", [([0, 3.7, 1], "3.7"), ([0, 2**70], f"outside 0..9 (e.g. {2**70})"), ([0, float("nan")], "nan"),
                                          (["1", "2"], "integer class indices")])
def test_non_integer_or_huge_labels_are_refused_naming_the_file(tmp_path: Path, labels: list, what: str) -> None:
    path = _batch(tmp_path / "data_batch_1", labels)
    with pytest.raises(ValueError, match="data_batch_1") as err:
        D.load_batch(path, "labels", 10)
    assert what in str(err.value)


def test_integral_float_labels_still_load(tmp_path: Path) -> None:
    _, y = D.load_batch(_batch(tmp_path / "b", [0.0, 3.0, 9.0]), "labels", 10)
    assert y.tolist() == [0, 3, 9]


def test_a_batch_with_bytes_and_text_label_keys_is_refused(tmp_path: Path) -> None:
    path = _batch(tmp_path / "data_batch_1", [0, 1], {"labels": [5, 6]})
    with pytest.raises(ValueError, match="data_batch_1.*'labels'.*both as bytes and as text"):
        D.load_batch(path, "labels", 10)


# ---------------------------------------------------------------------- 1. adapt --fresh waits for the lock
def _adapt_argv(data: Path, out: Path, generations: int, *extra: str) -> list[str]:
    return ["adapt", "--data-dir", str(data), "--proxy-images", "128", "--proxy-val", "32", "--reserve", "32",
            "--proxy-epochs", "1", "--population", "3", "--parents", "1", "--generations", str(generations),
            "--out", str(out), "--quiet", "--threads", "1", *extra]


def test_adapt_fresh_into_a_running_adaptation_deletes_nothing(tiny_cifar: Path, tmp_path: Path) -> None:
    """A real second process: before the fix it deleted state.pt, proxies.jsonl and proxies/ and
    only then found the folder locked, and the running adaptation died or lost generations."""
    out, generations = tmp_path / "adapt", 6  # ~10 s: the first is still running when the second tries
    second = subprocess.Popen([PYTHON, "-c", PRIMED, *_adapt_argv(tiny_cifar, out, generations, "--fresh")],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    first = subprocess.Popen([PYTHON, "-m", "edloss", *_adapt_argv(tiny_cifar, out, generations)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    try:
        _wait_for(lambda: (out / "state.pt").is_file(), first)  # generation 0 finished and saved
        _, err = second.communicate("go\n", timeout=60)
        assert first.poll() is None, "the first run ended before the second tried: the test proved nothing"
        assert second.returncode == 2 and "in use" in err and len(err.strip().splitlines()) == 1, err
        assert (out / "state.pt").is_file() and (out / "proxies" / "gen0").is_dir()
        assert first.wait(timeout=300) == 0, first.stderr.read()
    finally:
        for proc in (first, second):
            if proc.poll() is None:
                proc.kill()
    records = [json.loads(line) for line in (out / "proxies.jsonl").read_text().splitlines()]
    expected = [(g, i) for g in range(generations) for i in range(3)] + [(generations - 1, -1)]
    assert [(r["generation"], r["individual"]) for r in records] == expected  # every proxy once, none lost


# ---------------------------------------------------------------------- 7. values and files a hostile user tried
def _cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(argv)
    return code, capsys.readouterr().err


def _adapt_args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["adapt", *argv])


def test_adapt_population_2_is_not_blamed_on_a_parents_never_passed() -> None:
    cfg = AD.config_from_args(_adapt_args("--population", "2"))
    assert (cfg.population, cfg.parents) == (2, 2)
    with pytest.raises(ValueError, match=r"--parents must be at most --population \(4\), got 5"):
        AD.config_from_args(_adapt_args("--population", "4", "--parents", "5"))


@pytest.mark.parametrize("flag, value, message", [("--generations", str(10**20), "--generations must be in"),
                                                   ("--sigma", "1e300", "--sigma must be a finite number > 0 and <= 100"),
                                                   ("--sigma", "inf", "--sigma must be a finite number")])
def test_adapt_bounds_generations_and_sigma(flag: str, value: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        AD.config_from_args(_adapt_args(flag, value))


@pytest.mark.parametrize("argv, message", [(["--generations", str(10**20)], "generations must be in"),
                                           (["--sigma", "1e300"], "sigma_init must be"),
                                           (["--config", "CONFIG_DIR"], "is a folder"),
                                           (["--config", "BINARY"], "not a text file")])
def test_pretrain_refuses_huge_budgets_sigmas_and_unreadable_configs(argv: list[str], message: str, tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "conf").mkdir()
    (tmp_path / "binary.json").write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff\xfe")
    argv = [{"CONFIG_DIR": str(tmp_path / "conf"), "BINARY": str(tmp_path / "binary.json")}.get(a, a) for a in argv]
    code, err = _cli(["pretrain", *argv, "--out", str(tmp_path / "run"), "--quiet"], capsys)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "run").exists()  # refused before the folder was made
    for bad in (10**20, 10**6 + 1):
        with pytest.raises(ValueError, match="generations"):
            ESConfig(generations=bad)


# ---------------------------------------------------------------------- 2, 3. the loss a run trained with
def _loss_at(folder: Path, seed: int) -> Path:
    """A (random) EDL loss saved at ``folder``: another seed, another loss under the same path."""
    torch.manual_seed(seed)
    return Path(EDLLoss(LossNet(LossNetConfig())).save(folder))


def test_a_resumed_run_refuses_a_loss_file_that_changed(tiny_config: TrainConfig, tmp_path: Path) -> None:
    loss = _loss_at(tmp_path / "A" / "loss", seed=0)
    config = replace(tiny_config, loss=f"edl:{loss}", epochs=2)
    assert train(config, tmp_path / "run", progress=False, stop_after=1)["status"] == "incomplete"
    _loss_at(loss, seed=1)  # re-pretrained at the same path
    with pytest.raises(ValueError, match="another loss.*definition sha256.*--fresh"):
        train(config, tmp_path / "run", progress=False)
    assert len((tmp_path / "run" / "epochs.jsonl").read_text().splitlines()) == 1  # nothing trained on
    _loss_at(loss, seed=0)  # the original loss back: the run resumes
    assert train(config, tmp_path / "run", progress=False)["status"] == "finished"


def test_a_finished_run_is_reused_only_for_the_same_loss(tiny_config: TrainConfig, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    loss = _loss_at(tmp_path / "A" / "loss", seed=0)
    config = replace(tiny_config, loss=f"edl:{loss}")
    first = train(config, tmp_path / "run", progress=False)
    assert first[DEFINITION_KEY] == spec_definition(config.loss) and len(first[DEFINITION_KEY]) == 64
    assert train(config, tmp_path / "run", progress=False) == first  # same loss: reused
    grid = tmp_path / "grid"
    C.compare(config, [f"a=edl:{loss}"], [0], grid, progress=False)
    _loss_at(loss, seed=1)
    with pytest.raises(ValueError, match="another loss"):
        train(config, tmp_path / "run", progress=False)
    trained: list[Path] = []
    monkeypatch.setattr(C, "train", lambda cfg, out, *a, **k: trained.append(out))
    with pytest.raises(ValueError, match=r"seed0: the loss .* is not the one the run trained with"):
        C.compare(config, [f"a=edl:{loss}"], [0], grid, progress=False)
    assert trained == [] and not C.is_finished(grid / "resnet20" / "a" / "seed0", replace(config, seed=0))
    assert train(config, tmp_path / "run", progress=False, resume=False)["status"] == "finished"  # --fresh


def test_formula_losses_store_no_definition_and_older_runs_are_still_reused(tiny_config: TrainConfig,
                                                                            tmp_path: Path) -> None:
    result = train(tiny_config, tmp_path, progress=False)
    assert result[DEFINITION_KEY] is None
    stored = json.loads((tmp_path / "result.json").read_text())
    del stored[DEFINITION_KEY]  # a run written before the field existed
    (tmp_path / "result.json").write_text(json.dumps(stored))
    assert train(tiny_config, tmp_path, progress=False)["wall_seconds"] == result["wall_seconds"]


def _pretrain(out: Path, *extra: str) -> list[str]:
    return ["pretrain", "--generations", "2", "--population", "6", "--classes", "2,8", "--out", str(out), "--quiet", *extra]


@pytest.mark.parametrize("saved", [[1, 2], {"version": 1, "state": {}}, {"version": 1, "config": "{}"}])
def test_a_damaged_pretraining_checkpoint_says_delete_it_or_fresh(saved: object, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    out.mkdir()
    torch.save(saved, out / "checkpoint.pt")
    code, err = _cli(_pretrain(out), capsys)
    assert code == 2 and "checkpoint.pt is damaged" in err and "--fresh" in err and len(err.strip().splitlines()) == 1, err
    assert main(_pretrain(out, "--fresh")) == 0  # and --fresh is the way out


def test_pretrain_on_a_full_disk_names_the_file_and_how_to_resume(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    real = Path.write_bytes

    def full_disk(self: Path, data: bytes) -> int:
        if self.name.startswith(".checkpoint.pt.tmp"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, data)

    monkeypatch.setattr(Path, "write_bytes", full_disk)
    code, err = _cli(_pretrain(tmp_path / "run"), capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "checkpoint.pt" in err and "free some disk space" in err and "rerun the same command" in err


@pytest.mark.parametrize("saved", [[1, 2], {"format": "edloss-train-checkpoint", "epoch": 1}])
def test_a_damaged_training_checkpoint_says_delete_it_or_fresh(saved: object, tiny_config: TrainConfig,
                                                              tmp_path: Path) -> None:
    torch.save(saved, tmp_path / "checkpoint.pt")
    with pytest.raises(ValueError, match=r"checkpoint.pt .*delete it or rerun with --fresh"):
        train(tiny_config, tmp_path, progress=False)


def test_a_result_json_holding_a_list_says_delete_it_or_fresh(tiny_config: TrainConfig, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "result.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"result.json is not a training result .*delete it or rerun with --fresh"):
        train(tiny_config, tmp_path, progress=False)
    grid = tmp_path / "grid"
    (grid / "resnet20" / "ce" / "seed0").mkdir(parents=True)
    (grid / "resnet20" / "ce" / "seed0" / "result.json").write_text("[]")
    code, err = _cli(["compare", "--losses", "ce", "--seeds", "0", "--out", str(grid), "--data-dir", tiny_config.data_dir,
                      "--epochs", "1", "--quiet"], capsys)
    assert code == 2 and "delete it or rerun with --fresh" in err and len(err.strip().splitlines()) == 1, err


# ---------------------------------------------------------------------- 4, 5. summaries that say what the runs were
def test_summary_only_takes_the_recipe_from_the_runs(tiny_config: TrainConfig, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    grid = tmp_path / "grid"
    C.compare(replace(tiny_config, lr=0.05, epochs=1), ["ce"], [0], grid, progress=False)
    base = ["compare", "--summary-only", "--losses", "ce", "--seeds", "0", "--out", str(grid)]
    assert main(base) == 0  # every recipe flag at its default: the runs' recipe is the summary's
    recipe = json.loads((grid / "summary.json").read_text())["recipe"]
    assert (recipe["epochs"], recipe["lr"], recipe["batch_size"]) == (1, 0.05, 32)
    assert "1 epochs, batch 32, SGD lr 0.05" in (grid / "summary.md").read_text()
    before = (grid / "summary.md").read_text()
    code, err = _cli(base + ["--epochs", "200", "--lr", "0.5"], capsys)
    assert code == 2 and "--epochs 200 (the runs: 1)" in err and "--lr 0.5 (the runs: 0.05)" in err, err
    assert len(err.strip().splitlines()) == 1 and (grid / "summary.md").read_text() == before
    assert main(base + ["--epochs", "1", "--lr", "0.05"]) == 0  # the runs' own values are fine


def test_summary_only_refuses_runs_of_two_recipes(tiny_config: TrainConfig, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    grid = tmp_path / "grid"
    C.compare(tiny_config, ["ce"], [0], grid, progress=False)
    C.compare(replace(tiny_config, lr=0.01), ["ce"], [1], tmp_path / "other", progress=False)
    (tmp_path / "other" / "resnet20" / "ce" / "seed1").rename(grid / "resnet20" / "ce" / "seed1")
    code, err = _cli(["compare", "--summary-only", "--losses", "ce", "--seeds", "0", "1", "--out", str(grid)], capsys)
    assert code == 2 and "different recipes (lr: 0.05 in the saved run, 0.01 now)" in err, err


@pytest.mark.parametrize("extra", [["--seeds", "0", "0", "0"], ["--seeds", "1", "2", "1"],
                                   ["--models", "resnet8", "resnet8", "--seeds", "0"]])
@pytest.mark.parametrize("summary_only", [False, True])
def test_compare_refuses_repeated_seeds_and_models(extra: list[str], summary_only: bool, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["compare", "--losses", "ce", "--out", str(tmp_path / "grid"), "--quiet", *extra]
    code, err = _cli(argv + (["--summary-only"] if summary_only else []), capsys)
    assert code == 2 and "repeats" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "grid" / "summary.md").exists()


def test_a_loss_path_holding_an_equals_sign_is_a_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    _loss_at(Path("my=loss"), seed=0)
    assert parse_loss_spec("edl:my=loss") == ("edl", {"checkpoint": "my=loss"})
    assert isinstance(build_loss_from_spec("edl:my=loss"), EDLLoss)
    assert parse_loss_spec("edl:new=run/loss") == ("edl", {"checkpoint": "new=run/loss"})  # not there yet: still a path
    assert parse_loss_spec("edl:check_inputs=false") == ("edl", {"check_inputs": False})  # EDL's own options stay options
    assert parse_loss_spec("edl:checkpoint=my=loss,fused=false") == ("edl", {"checkpoint": "my=loss", "fused": False})
