"""edloss adapt: the real-data stage on a tiny CIFAR, resume after a kill, refusals before work."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from _cifar_fixtures import _one_thread, pretrained_edl_or_skip, tiny_cifar  # noqa: F401
from edloss.cli import main as cli_main
from edloss.lab import adapt as AD
from edloss.loss import EDLLoss


def tiny(data: Path, **overrides) -> AD.AdaptConfig:
    proxy = replace(AD.default_proxy(), data_dir=str(data), train_subset=64, val_size=32, reserve=32, batch_size=32,
                    epochs=1, eval_batch_size=64)
    settings = dict(population=3, parents=1, elites=1, generations=2, proxy=proxy)
    settings.update(overrides)
    return AD.AdaptConfig(**settings)


def test_adapt_end_to_end(tiny_cifar: Path, tmp_path: Path) -> None:
    pretrained_edl_or_skip()
    summary = AD.adapt(tiny(tiny_cifar), tmp_path, progress=False)
    records = [json.loads(line) for line in (tmp_path / AD.PROXIES_FILE).read_text().splitlines()]
    assert [(r["generation"], r["individual"]) for r in records] == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2), (1, -1)]
    assert all(r["fitness"] == pytest.approx(r["val_acc"] + 0.25 * r["synthetic_fitness"]) for r in records)
    assert len({r["proxy_seed"] for r in records if r["generation"] == 1}) == 1  # common random numbers
    start = EDLLoss.pretrained()
    gen0 = records[0]  # individual 0 of generation 0 is the starting loss itself
    assert gen0["synthetic_fitness"] == pytest.approx(records[-1]["synthetic_fitness"])
    adapted = EDLLoss.from_file(tmp_path / "loss")
    assert adapted.metadata["real_data_stage"] is True and start.metadata.get("real_data_stage") is False
    chosen = summary["chosen"]
    assert chosen["fitness"] == max(r["fitness"] for r in records if r["generation"] == 1 and r["individual"] >= 0)
    logits, target = torch.randn(16, 10), torch.randint(0, 10, (16,))
    assert torch.isfinite(adapted(logits, target))
    # nothing read the test set, and the reserved images were set aside: the proxies' result files say so
    result = json.loads((tmp_path / "proxies" / "gen0" / "ind0" / "run" / "result.json").read_text())
    assert result["test_acc"] is None and result["config"]["reserve"] == 32


def test_adapt_resumes_after_a_kill(tiny_cifar: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pretrained_edl_or_skip()
    cfg = tiny(tiny_cifar)
    straight = AD.adapt(cfg, tmp_path / "straight", progress=False)
    calls = {"n": 0}
    real_train = AD.train

    def dying_train(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:  # in the middle of generation 1
            raise KeyboardInterrupt
        return real_train(*args, **kwargs)

    monkeypatch.setattr(AD, "train", dying_train)
    with pytest.raises(KeyboardInterrupt):
        AD.adapt(cfg, tmp_path / "killed", progress=False)
    monkeypatch.setattr(AD, "train", real_train)
    calls["n"] = 0
    resumed = AD.adapt(cfg, tmp_path / "killed", progress=False)
    assert resumed["chosen"] == {**straight["chosen"], "seconds": resumed["chosen"]["seconds"]}
    a, b = EDLLoss.from_file(tmp_path / "straight" / "loss"), EDLLoss.from_file(tmp_path / "killed" / "loss")
    assert torch.equal(a.net.flat(), b.net.flat())
    with pytest.raises(ValueError, match="another config"):
        AD.adapt(replace(cfg, synthetic_weight=0.5), tmp_path / "killed", progress=False)


def test_bad_input_is_refused_before_work(tiny_cifar: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["adapt", "--data-dir", str(tiny_cifar), "--proxy-val", "32", "--reserve", "32"]
    cases = [(["--start", str(tmp_path / "nowhere")], "does not load"),
             (["--data-dir", str(tmp_path / "empty")], "cifar"),
             (["--proxy-images", "1"], "--proxy-images must be an integer >= 2"),
             (["--sigma", "-1"], "--sigma must be a finite number > 0"),
             (["--proxy-images", "64"], "no step would run"),
             (["--population", "0"], "population"),
             (["--synthetic-weight", "-1"], "synthetic_weight")]
    for extra, match in cases:
        out = tmp_path / f"out{len(list(tmp_path.iterdir()))}"
        argv = base + extra + ["--out", str(out)]
        if extra[0] == "--proxy-images" and extra[1] == "64":
            argv += ["--proxy-epochs", "1"]
        assert cli_main(argv) == 2, extra
        assert match.lower() in capsys.readouterr().err.lower(), extra
        assert not out.exists(), extra
    with pytest.raises(ValueError, match="test set"):
        replace(tiny(tiny_cifar), proxy=replace(tiny(tiny_cifar).proxy, evaluate_test=True))


def test_regulariser_scores_on_the_start_losses_own_objective_and_heldout_set() -> None:
    """A start pretrained on a non-default objective and held-out set is regularised on those,
    so the synthetic fitness adapt reports is the one pretraining reported for it."""
    from edloss.objective import ObjectiveConfig, heldout_batches

    default = EDLLoss.pretrained()
    config = {**default.metadata["config"], "heldout_seed": 7, "heldout_evals_per_block": 64,
              "objective": {**default.metadata["config"]["objective"], "classes": [2, 10]}}
    start = EDLLoss(default.net, scale=default.scale, metadata={**default.metadata, "config": config})
    objective = AD.synthetic_objective(start)
    assert objective.class_range == (2, 10)
    got = AD.synthetic_heldout(start, objective)
    want = heldout_batches(objective, 7, 64)
    assert len(got) == len(want) == 2
    assert all(torch.equal(a.logits, b.logits) for a, b in zip(got, want))
    assert not torch.equal(got[0].logits, heldout_batches(objective)[0].logits)
    plain = EDLLoss(default.net, scale=default.scale)  # no provenance: today's default set
    assert torch.equal(AD.synthetic_heldout(plain, ObjectiveConfig())[0].logits, heldout_batches(ObjectiveConfig())[0].logits)
