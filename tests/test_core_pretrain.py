import json
from dataclasses import replace

import pytest
import torch

from edloss import EDLLoss
from edloss.cli import build_parser, main
from edloss.evolve import ESConfig
from edloss.objective import ObjectiveConfig
from edloss.pretrain import PretrainConfig, Run, config_from_args, pretrain


def rows(path):
    return [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]


def test_resume_equals_an_uninterrupted_run(tmp_path, tiny_pretrain_config):
    cfg = tiny_pretrain_config
    straight, _ = pretrain(cfg, tmp_path / "straight", progress=False)

    run = Run(cfg, tmp_path / "killed")
    for _ in range(5):  # checkpoint_every = 2: the 5th generation is lost with the kill
        run.step()
    del run
    assert len(rows(tmp_path / "killed")) == 5
    resumed, _ = pretrain(cfg, tmp_path / "killed", progress=False)

    torch.testing.assert_close(resumed.net.flat(), straight.net.flat(), rtol=0, atol=0)
    a, b = rows(tmp_path / "straight"), rows(tmp_path / "killed")
    assert [r["generation"] for r in b] == list(range(cfg.es.generations))
    for x, y in zip(a, b):
        x.pop("seconds"), y.pop("seconds")
        assert x == y


def test_a_short_run_improves_heldout_fitness(tmp_path):
    cfg = PretrainConfig(
        objective=ObjectiveConfig(classes=(2, 20), evals_per_block=1024, blocks=2),
        es=ESConfig(population=24, parents=6, elites=2, generations=40, seed=1),
        heldout_every=39,
    )
    _, summary = pretrain(cfg, tmp_path, progress=False)
    first = rows(tmp_path)[0]["heldout_fitness_best"]  # best of the random initial population
    assert summary["heldout"]["fitness"] > first + 0.02
    # Poly-1 ranks and calibrates perfectly under the default severity: nothing can score higher
    assert summary["heldout"]["fitness"] <= summary["poly1_heldout"]["fitness"] + 1e-6


def test_run_folder_has_everything(tmp_path, tiny_pretrain_config):
    loss, summary = pretrain(tiny_pretrain_config, tmp_path, command="edloss pretrain --test", progress=False)
    for name in ("config.json", "checkpoint.pt", "metrics.jsonl", "metrics.csv", "summary.json", "loss_shape.png", "loss/loss.json", "loss/loss.safetensors"):
        assert (tmp_path / name).is_file(), name
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["seed"] == 3 and config["command"] == "edloss pretrain --test" and "torch" in config["versions"]
    back = EDLLoss.from_file(tmp_path / "loss")
    assert back.metadata["seed"] == 3 and back.metadata["real_data_stage"] is False
    assert len((tmp_path / "metrics.csv").read_text().splitlines()) == tiny_pretrain_config.es.generations + 1
    by_k = summary["heldout_by_k"]  # the held-out set's blocks one by one, beside CE and Poly-1
    lo, hi = tiny_pretrain_config.objective.class_range
    assert sorted(by_k, key=int) == [str(k) for k in sorted({min(max(k, lo), hi) for k in (2, 10, 100, 1000)})]
    for block in by_k.values():
        assert set(block) == {"edl", "cross_entropy", "poly1"} and -2 <= block["edl"]["fitness"] <= 1
    assert summary["heldout"]["fitness"] == pytest.approx(back.metadata["heldout_metrics"]["fitness"])


def test_resume_with_a_different_config_is_refused(tmp_path, tiny_pretrain_config):
    pretrain(tiny_pretrain_config, tmp_path, progress=False)
    changed = replace(tiny_pretrain_config, es=replace(tiny_pretrain_config.es, seed=4))
    with pytest.raises(ValueError, match=r"es.seed: 3 -> 4"):
        Run(changed, tmp_path)
    Run(changed, tmp_path, fresh=True)  # --fresh starts over


def test_corrupt_checkpoint_is_reported(tmp_path, tiny_pretrain_config):
    pretrain(tiny_pretrain_config, tmp_path, progress=False)
    (tmp_path / "checkpoint.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="unreadable"):
        Run(tiny_pretrain_config, tmp_path)


def test_cli_pretrain_then_inspect(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["pretrain", "--generations", "3", "--population", "8", "--classes", "2,12", "--seed", "5", "--out", str(out), "--quiet"])
    assert code == 0 and (out / "loss" / "loss.json").exists()
    assert main(["inspect", str(out)]) == 0
    text = capsys.readouterr().out
    assert "held-out synthetic metrics" in text and "p_y" in text and "seed 5" in text


def test_cli_reads_a_toml_config(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text('[es]\ngenerations = 2\npopulation = 6\nparents = 2\nelites = 1\n[objective]\nclasses = [3, 9]\nseverity = "tv"\n')
    assert main(["pretrain", "--config", str(config), "--out", str(tmp_path / "r"), "--quiet"]) == 0
    saved = json.loads((tmp_path / "r" / "config.json").read_text())["config"]
    assert saved["objective"]["severity"] == "tv" and saved["objective"]["classes"] == [3, 9]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--population", "1"], "population"),
        (["--mutation", "levy"], "invalid choice"),
        (["--classes", "1,5"], "classes"),
        (["--classes", "a,b"], "--classes"),
        (["--features", "p_y,bogus"], "unknown feature"),
        (["--severity", "rank"], "not valid for the expectation"),
        (["--config", "/nonexistent.toml"], "does not exist"),
    ],
)
def test_invalid_configuration_fails_before_the_run(tmp_path, capsys, argv, message):
    out = tmp_path / "never"
    try:
        code = main(["pretrain", "--out", str(out), "--quiet", *argv])
    except SystemExit as exit_:  # argparse's own errors
        code = exit_.code
    assert code == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_unknown_config_key_is_named(tmp_path, capsys):
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"es": {"generation": 3}}))
    assert main(["pretrain", "--config", str(config), "--out", str(tmp_path / "r"), "--quiet"]) == 2
    assert "unknown key(s) ['generation'] in config.es" in capsys.readouterr().err


@pytest.mark.parametrize("section, key, value, message", [
    ("objective", "calibration_weight", "high", "config.objective.calibration_weight must be a number, got 'high'"),
    ("es", "population", 6.5, "config.es.population must be an integer, got 6.5"),
    ("es", "mutation", 3, "config.es.mutation must be a string, got 3"),
    ("objective", "soft", "yes", "config.objective.soft must be true or false, got 'yes'"),
])
def test_wrongly_typed_config_value_is_named(section, key, value, message, tmp_path, capsys):
    config = tmp_path / "c.json"
    config.write_text(json.dumps({section: {key: value}}))
    assert main(["pretrain", "--config", str(config), "--out", str(tmp_path / "r"), "--quiet"]) == 2
    assert message in capsys.readouterr().err


def test_per_sample_objective_runs(tmp_path):
    assert main(["pretrain", "--objective", "per_sample", "--generations", "2", "--population", "6", "--classes", "5", "--out", str(tmp_path), "--quiet"]) == 0
    objective = json.loads((tmp_path / "config.json").read_text())["config"]["objective"]
    assert objective["severity"] == "one_minus_py" and objective["calibration_weight"] == 0.0  # the paper's reading: ranking only
    config = tmp_path / "per_sample.json"  # the same when the kind comes from a config file
    config.write_text(json.dumps({"objective": {"kind": "per_sample"}}))
    args = build_parser().parse_args(["pretrain", "--config", str(config)])
    assert config_from_args(args).objective.calibration_weight == 0.0


def test_pretrain_for_label_noise_gives_a_bounded_monotone_loss(tmp_path):
    """`--label-noise ETA`: the regime is described to the synthetic world; the network defaults
    to the bounded form, which is monotone and pulls a confidently contradicted label with a
    vanishing gradient (as forward correction, GCE and MAE do)."""
    import json

    import torch

    from edloss import EDLLoss
    from edloss.cli import main

    out = tmp_path / "noisy"
    code = main(["pretrain", "--label-noise", "0.4", "--generations", "3", "--population", "8", "--classes", "2,20",
                 "--out", str(out), "--quiet", "--threads", "1"])
    assert code == 0
    meta = json.loads((out / "loss" / "loss.json").read_text())
    assert meta["lossnet"]["form"] == "bounded" and "noise_rate" not in meta["lossnet"]
    assert meta["provenance"]["config"]["objective"]["label_noise"] == 0.4
    assert meta["provenance"]["config"]["objective"]["severity"] == "tv"  # bounded, as the regime asks
    loss = EDLLoss.from_file(out / "loss", reduction="sum")
    z = torch.zeros(1, 10)
    z[0, 1] = 1e4  # the label says class 0, the model is sure of class 1
    z.requires_grad_(True)
    loss(z, torch.tensor([0])).backward()
    assert -1e-6 < z.grad[0, 0].item() <= 0  # bounded: no pull, and never the wrong way
    assert main(["pretrain", "--label-noise", "1.5", "--out", str(tmp_path / "bad"), "--quiet"]) == 2


def test_initial_population_offsets_only_the_corrected_forms_output_bias():
    """The shipped losses' generation 0 is untouched (their commands still regenerate them bit for
    bit); the corrected form starts with its correction nearly off, at forward correction."""
    import torch

    from edloss import evolve
    from edloss.lossnet import CORRECTION_OFF, LossNetConfig, init_scale
    from edloss.pretrain import PretrainConfig, initial_state

    plain = PretrainConfig()
    assert torch.equal(initial_state(plain).population, evolve.init(plain.es, init_scale(plain.lossnet)).population)
    corrected = PretrainConfig(lossnet=LossNetConfig(form="corrected", noise_rate=0.4),
                               objective=ObjectiveConfig(label_noise=0.4))
    shifted = initial_state(corrected).population - evolve.init(corrected.es, init_scale(corrected.lossnet)).population
    torch.testing.assert_close(shifted[:, -1], torch.full_like(shifted[:, -1], CORRECTION_OFF))
    assert not shifted[:, :-1].any()


def test_corrected_form_from_a_config_takes_the_regimes_rate(tmp_path):
    """lossnet.form = "corrected" with --label-noise: its base is forward correction at that rate;
    a base at another rate than the regime's is refused."""
    import json

    from edloss.cli import main

    config = tmp_path / "corrected.json"
    config.write_text(json.dumps({"lossnet": {"form": "corrected"}}))
    out = tmp_path / "run"
    assert main(["pretrain", "--config", str(config), "--label-noise", "0.3", "--generations", "2", "--population", "8",
                 "--classes", "2,20", "--out", str(out), "--quiet", "--threads", "1"]) == 0
    assert json.loads((out / "loss" / "loss.json").read_text())["lossnet"]["noise_rate"] == 0.3
    config.write_text(json.dumps({"lossnet": {"form": "corrected", "noise_rate": 0.5}}))
    assert main(["pretrain", "--config", str(config), "--label-noise", "0.3", "--out", str(tmp_path / "bad"), "--quiet"]) == 2


def test_label_noise_defaults_to_a_bounded_severity_an_explicit_one_wins():
    import argparse

    from edloss.pretrain import add_cli, config_from_args

    parser = argparse.ArgumentParser()
    add_cli(parser.add_subparsers())
    parse = lambda *a: config_from_args(parser.parse_args(["pretrain", *a]))  # noqa: E731
    assert parse("--label-noise", "0.4").objective.severity == "tv"
    assert parse("--label-noise", "0.4", "--severity", "kl_disagreement").objective.severity == "kl_disagreement"
    assert parse().objective.severity == "kl_disagreement"  # clean labels: today's default
    assert parse("--label-noise", "0").objective.severity == "kl_disagreement"
