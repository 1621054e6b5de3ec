"""edloss.lab.train: smoke runs for every loss, exact resume, refusals, NaN stop, the CLI."""

from __future__ import annotations

import json
import math
import re
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from _cifar_fixtures import (_one_thread, make_edl_checkpoint, pretrained_edl_or_skip,  # noqa: F401
                             shared_data_dir, tiny_cifar, tiny_config)
from edloss.cli import main as cli_main
from edloss.lab.losses import LOSSES, loss_names, register_loss
from edloss.lab.train import (CHECKPOINT, EPOCHS, RESULT, TrainConfig, TrainingDiverged, lr_factor,
                          train)


def _epochs(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / EPOCHS).read_text().splitlines()]


def _without_seconds(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]


def test_lr_schedules() -> None:
    cosine = [lr_factor(s, 100, "cosine", 0) for s in range(100)]
    assert cosine[0] == 1 and all(a > b for a, b in zip(cosine, cosine[1:])) and 0 < cosine[-1] < 0.01
    warm = [lr_factor(s, 100, "cosine", 10) for s in range(100)]
    assert warm[0] == pytest.approx(0.1) and warm[9] == 1 and warm[10] == 1
    one = [lr_factor(s, 100, "onecycle", 25) for s in range(100)]
    assert max(one) == 1 and one.index(1.0) == 24 and 0 < one[-1] < 0.05
    step = [lr_factor(s, 200, "step", 5) for s in range(200)]  # the CIFAR-LT recipe: x0.01 at 160 and 180 of 200
    assert step[0] == pytest.approx(0.2) and step[4] == step[159] == 1
    assert step[160] == step[179] == pytest.approx(0.01) and step[180] == step[199] == pytest.approx(1e-4)


def test_config_validation(tiny_config: TrainConfig, tmp_path: Path) -> None:
    """Every recipe field is checked before any work, naming the option and its valid range."""
    for bad, match in [(dict(epochs=0), "epochs"), (dict(lr=-1.0), "lr"),
                       (dict(schedule="linear"), "cosine"), (dict(model="vgg"), "resnet20"),
                       (dict(loss="hinge"), "focal"), (dict(train_subset=1), "subset"),
                       (dict(epochs="3"), "--epochs must be an integer >= 1, got '3'"),
                       (dict(epochs=True), "--epochs must be an integer"),
                       (dict(lr=math.nan), "--lr must be a finite number > 0"),
                       (dict(lr=math.inf), "--lr must be a finite number > 0"),
                       (dict(weight_decay=math.inf), "--weight-decay must be a finite number >= 0"),
                       (dict(weight_decay=-1e-4), "--weight-decay"),
                       (dict(val_size=-5), "--val-size must be an integer >= 0"),
                       (dict(warmup_epochs=math.nan), "--warmup-epochs"),
                       (dict(balanced_subset=True, train_subset=None), "--balanced-subset needs --train-subset"),
                       (dict(dataset="mnist"), "cifar10, cifar100"),
                       (dict(device="tpu"), r"--device 'tpu'.*valid: auto, cpu, cuda, cuda:N"),
                       (dict(loss="poly1:epsilon=-5"), "poly1 epsilon must be a number >= -1"),
                       (dict(loss="focal:gamma=-1"), "focal gamma must be a number >= 0")]:
        with pytest.raises(ValueError, match=match):
            replace(tiny_config, **bad).validate()
    for stop_after in (0, -1, 1.5):
        with pytest.raises(ValueError, match="--stop-after must be an integer >= 1"):
            train(tiny_config, tmp_path / "run", progress=False, stop_after=stop_after)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("loss", [name for name in loss_names() if name != "edl"])
def test_one_epoch_smoke_every_loss(loss: str, tiny_config: TrainConfig, tmp_path: Path) -> None:
    result = train(replace(tiny_config, loss=loss), tmp_path, progress=False)
    assert result["status"] == "finished" and result["epochs_completed"] == 1
    assert 0 <= result["test_acc"] <= 1 and math.isfinite(result["final_train_loss"])
    saved = json.loads((tmp_path / RESULT).read_text())
    assert saved["config"]["loss"] == loss and saved["versions"]["torch"] == torch.__version__
    source = saved["versions"]["source"]  # the git commit of a checkout; an installed wheel has its version only
    assert source == "not a git checkout" or re.fullmatch(r"[0-9a-f]{12}(\+dirty)?", source), source
    assert saved["test_acc"] == result["test_acc"] and saved["seed"] == 0
    rows = _epochs(tmp_path)
    assert len(rows) == 1 and set(rows[0]) == {"epoch", "train_loss", "train_acc", "val_loss",
                                               "val_acc", "lr", "seconds"}
    assert (tmp_path / CHECKPOINT).is_file()
    # calibration next to accuracy: NLL, top-label ECE over 15 bins, the reliability bins
    reliability = saved["test_reliability"]
    assert saved["test_nll"] == saved["test_loss"] and 0 <= saved["test_ece"] <= 1
    assert sum(reliability["count"]) == saved["num_test"] and len(reliability["count"]) == 15
    hits = sum(a * n for a, n in zip(reliability["accuracy"], reliability["count"]) if n)
    assert hits / saved["num_test"] == pytest.approx(saved["test_acc"])
    assert not Path(saved["data_path"]).is_absolute()


def test_smoke_cifar100(tmp_path: Path) -> None:
    from _cifar_fixtures import write_cifar

    write_cifar(tmp_path / "data", "cifar100", per_batch=20, test=40)
    config = TrainConfig(dataset="cifar100", data_dir=str(tmp_path / "data"), epochs=1,
                         batch_size=32, val_size=20, train_subset=64, device="cpu")
    result = train(config, tmp_path / "run", progress=False)
    assert result["status"] == "finished" and result["num_test"] == 40
    ckpt = torch.load(tmp_path / "run" / CHECKPOINT, weights_only=True)
    assert ckpt["model"]["fc.weight"].shape == (100, 64)


def test_smoke_edl_checkpoint(tiny_config: TrainConfig, tmp_path: Path) -> None:
    folder = make_edl_checkpoint(tmp_path / "loss")
    result = train(replace(tiny_config, loss=f"edl:{folder}"), tmp_path / "run", progress=False)
    assert result["status"] == "finished" and "EDLLoss" in result["loss"]


def test_smoke_edl_pretrained(tiny_config: TrainConfig, tmp_path: Path) -> None:
    pretrained_edl_or_skip()
    result = train(replace(tiny_config, loss="edl"), tmp_path, progress=False)
    assert result["status"] == "finished" and math.isfinite(result["final_train_loss"])


def test_resume_reproduces_the_uninterrupted_run(tiny_config: TrainConfig, tmp_path: Path) -> None:
    config = replace(tiny_config, epochs=2, schedule="onecycle")
    straight = train(config, tmp_path / "a", progress=False)
    partial = train(config, tmp_path / "b", progress=False, stop_after=1)
    assert partial["status"] == "incomplete" and not (tmp_path / "b" / RESULT).exists()
    assert len(_epochs(tmp_path / "b")) == 1
    resumed = train(config, tmp_path / "b", progress=False)
    assert _without_seconds(_epochs(tmp_path / "a")) == _without_seconds(_epochs(tmp_path / "b"))
    for key in ("test_acc", "test_loss", "final_val_acc", "final_val_loss", "final_train_loss"):
        assert straight[key] == resumed[key], key
    a = torch.load(tmp_path / "a" / CHECKPOINT, weights_only=True)
    b = torch.load(tmp_path / "b" / CHECKPOINT, weights_only=True)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    # a finished run is returned, not retrained
    again = train(config, tmp_path / "b", progress=False)
    assert again == json.loads((tmp_path / "b" / RESULT).read_text())


def test_same_seed_same_numbers_and_paired_init(tiny_config: TrainConfig, tmp_path: Path) -> None:
    one = train(tiny_config, tmp_path / "one", progress=False)
    two = train(tiny_config, tmp_path / "two", progress=False)
    assert _without_seconds(_epochs(tmp_path / "one")) == _without_seconds(_epochs(tmp_path / "two"))
    assert one["test_acc"] == two["test_acc"]


def test_config_mismatch_is_refused(tiny_config: TrainConfig, tmp_path: Path) -> None:
    config = replace(tiny_config, epochs=2)
    train(config, tmp_path, progress=False, stop_after=1)
    with pytest.raises(ValueError) as err:
        train(replace(config, lr=0.01, batch_size=16), tmp_path, progress=False)
    message = str(err.value)
    assert "lr: 0.05" in message and "batch_size: 32" in message and "--fresh" in message
    # a different data folder is not a different config
    train(replace(config, data_dir=config.data_dir + "/"), tmp_path, progress=False)
    with pytest.raises(ValueError, match="epochs: 2 in the saved run, 3 now"):
        train(replace(config, epochs=3), tmp_path, progress=False)
    assert train(replace(config, epochs=3), tmp_path, progress=False, resume=False)["status"] == "finished"


class _NanAfter(torch.nn.Module):
    """Cross-entropy until ``steps`` calls, NaN afterwards."""

    def __init__(self, steps: int = 2) -> None:
        super().__init__()
        self.steps, self.calls = steps, 0

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        loss = F.cross_entropy(logits, target)
        return loss * math.nan if self.calls > self.steps else loss


def test_nan_stops_and_keeps_last_good_checkpoint(tiny_config: TrainConfig, tmp_path: Path) -> None:
    register_loss("nan_test", _NanAfter, primary="steps")
    try:
        config = replace(tiny_config, loss="nan_test:2", epochs=3)  # 2 steps/epoch: epoch 2 fails
        with pytest.raises(TrainingDiverged, match="epoch 2.*checkpoint of epoch 1"):
            train(config, tmp_path, progress=False)
        ckpt = torch.load(tmp_path / CHECKPOINT, weights_only=True)
        assert ckpt["epoch"] == 1 and len(_epochs(tmp_path)) == 1
        result = json.loads((tmp_path / RESULT).read_text())
        assert result["status"] == "diverged" and result["diverged_epoch"] == 2
        with pytest.raises(TrainingDiverged, match="--fresh"):
            train(config, tmp_path, progress=False)
    finally:
        LOSSES.pop("nan_test")


def test_cli_train(tiny_config: TrainConfig, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    base = ["train", "--data-dir", tiny_config.data_dir, "--epochs", "1", "--batch-size", "32",
            "--val-size", "32", "--train-subset", "64", "--eval-batch-size", "64",
            "--device", "cpu", "--out", str(tmp_path), "--quiet"]
    assert cli_main(base + ["--loss", "focal:gamma=1", "--schedule", "onecycle"]) == 0
    out = json.loads(capsys.readouterr().out)
    result = json.loads((tmp_path / RESULT).read_text())
    assert out["test_acc"] == result["test_acc"]
    assert result["config"]["loss"] == "focal:gamma=1" and result["config"]["schedule"] == "onecycle"
    assert result["config"]["nesterov"] and result["config"]["weight_decay"] == 5e-4
    assert cli_main(base + ["--loss", "ce"]) == 2
    assert "loss: 'focal:gamma=1' in the saved run, 'ce' now" in capsys.readouterr().err
    assert cli_main(base + ["--model", "resnet7"]) == 2
    assert "valid names" in capsys.readouterr().err
    assert cli_main(base + ["--data-dir", str(tmp_path / "nope"), "--out", str(tmp_path / "x")]) == 2
    assert "--download" in capsys.readouterr().err


def test_real_cifar10_slice_trains(tmp_path: Path) -> None:
    """A few steps on real CIFAR-10: the full loader, splits and one ResNet-20 epoch."""
    root = shared_data_dir()
    if root is None:
        pytest.skip("real CIFAR-10 not found in ../shared/data or $EDLOSS_DATA")
    from edloss.lab.data import BatchLoader, load_splits
    from edloss.lab.models import build_model
    from edloss.lab.train import evaluate

    splits = load_splits("cifar10", root, train_subset=200, balanced=True)
    assert splits.val_x.shape[0] == 5000 and splits.test_x.shape[0] == 10_000
    assert torch.bincount(splits.train_y).tolist() == [20] * 10
    assert torch.allclose(splits.mean, torch.tensor([0.4913, 0.4821, 0.4465]), atol=3e-3)
    torch.manual_seed(0)
    model = build_model("resnet20")
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    loader = BatchLoader(splits.train_x, splits.train_y, 50, splits.mean, splits.std, train=True,
                         generator=torch.Generator().manual_seed(0))
    losses = []
    for _ in range(2):
        model.train()
        for x, y in loader:
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    val = BatchLoader(splits.val_x[:200], splits.val_y[:200], 100, splits.mean, splits.std,
                      train=False)
    val_loss, val_acc = evaluate(model, val)
    assert math.isfinite(val_loss) and 0 <= val_acc <= 1


def test_label_noise_changes_training_labels_only_and_is_saved(tiny_config: TrainConfig, tmp_path: Path) -> None:
    noisy = replace(tiny_config, label_noise=0.5, noise_seed=3)
    result = train(noisy, tmp_path / "noisy", progress=False)
    assert result["status"] == "finished"
    saved = json.loads((tmp_path / "noisy" / "noise.json").read_text())
    assert saved["label_noise"] == 0.5 and saved["noise_seed"] == 3 and len(saved["flipped"]) > 0
    clean = train(tiny_config, tmp_path / "clean", progress=False)  # same seed, clean labels
    assert not (tmp_path / "clean" / "noise.json").exists()
    assert clean["num_val"] == result["num_val"] and clean["num_test"] == result["num_test"]
    for bad, match in (({"label_noise": 1.0}, "--label-noise"), ({"label_noise": -0.1}, "--label-noise"),
                       ({"noise_seed": 1.5}, "--noise-seed")):
        with pytest.raises(ValueError, match=match):
            replace(tiny_config, **bad).validate()


def test_best_validation_epoch_weights_are_tested(tiny_config: TrainConfig, tmp_path: Path) -> None:
    """best_val_test_acc is the test accuracy of the weights after the best validation epoch:
    checked against each epoch's checkpoint, tested by hand (resuming reproduces the run)."""
    from edloss.lab.train import _build, autocast_on, evaluate

    config = replace(tiny_config, epochs=4, lr=0.5)
    result = train(config, tmp_path / "straight", progress=False)
    per_epoch = []
    for _ in range(config.epochs - 1):
        train(config, tmp_path / "sliced", progress=False, stop_after=1)
        run = _build(config)
        run.model.load_state_dict(torch.load(tmp_path / "sliced" / CHECKPOINT, weights_only=True)["model"])
        per_epoch.append(evaluate(run.forward, run.test_loader, autocast_on(config, run.device)))
    resumed = train(config, tmp_path / "sliced", progress=False)
    per_epoch.append((result["test_nll"], result["test_acc"]))
    best = result["best_val_epoch"]
    assert best < config.epochs, "pick a config whose best validation epoch is not the last one"
    assert result["best_val_test_nll"] == pytest.approx(per_epoch[best - 1][0], rel=1e-6)
    assert result["best_val_test_acc"] == per_epoch[best - 1][1]
    assert resumed["best_val_test_acc"] == result["best_val_test_acc"]


def test_runs_of_older_versions_still_count_as_finished(tiny_config: TrainConfig, tmp_path: Path) -> None:
    """A config field added later (with the default that keeps the old behaviour) is absent from
    older runs' files; they still resume and are not retrained."""
    result = train(tiny_config, tmp_path, progress=False)
    stored = json.loads((tmp_path / RESULT).read_text())
    for added in ("label_noise", "noise_seed"):
        del stored["config"][added]
    (tmp_path / RESULT).write_text(json.dumps(stored))
    assert train(tiny_config, tmp_path, progress=False)["wall_seconds"] == result["wall_seconds"]
    with pytest.raises(ValueError, match="label_noise"):  # a real difference is still refused
        train(replace(tiny_config, label_noise=0.5), tmp_path, progress=False)


def test_cpu_bf16_autocast_is_a_recorded_choice_that_changes_the_numbers(tiny_config: TrainConfig, tmp_path: Path) -> None:
    """``cpu_amp`` trains under bf16 autocast on the CPU (the loss still gets float32 logits); the
    choice is part of the config, so a float32 run does not resume as a bf16 one, and runs saved
    before the field existed resume as float32."""
    from edloss.lab.recipe import autocast_on

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert not autocast_on(tiny_config, cpu) and autocast_on(replace(tiny_config, cpu_amp=True), cpu)
    assert autocast_on(tiny_config, cuda) and not autocast_on(replace(tiny_config, amp=False, cpu_amp=True), cuda)
    bf16 = train(replace(tiny_config, cpu_amp=True), tmp_path / "bf16", progress=False)
    fp32 = train(tiny_config, tmp_path / "fp32", progress=False)
    assert bf16["config"]["cpu_amp"] is True and fp32["config"]["cpu_amp"] is False
    assert math.isfinite(bf16["test_acc"]) and _without_seconds(_epochs(tmp_path / "bf16")) != _without_seconds(_epochs(tmp_path / "fp32"))
    with pytest.raises(ValueError, match="cpu_amp: False in the saved run, True now"):
        train(replace(tiny_config, cpu_amp=True, epochs=tiny_config.epochs + 1), tmp_path / "fp32", progress=False)
    saved = json.loads((tmp_path / "fp32" / RESULT).read_text())
    del saved["config"]["cpu_amp"]  # a run of an older version
    (tmp_path / "fp32" / RESULT).write_text(json.dumps(saved))
    assert train(tiny_config, tmp_path / "fp32", progress=False)["status"] == "finished"
