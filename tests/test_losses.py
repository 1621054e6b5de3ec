"""edloss.lab.losses: each baseline matches its formula; specs and arms parse; EDL plugs in."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from _cifar_fixtures import _one_thread, make_edl_checkpoint, pretrained_edl_or_skip  # noqa: F401
from edloss.lab.losses import (LOSSES, build_loss, build_loss_from_spec, loss_names, parse_loss_arm,
                           parse_loss_spec, register_loss)


@pytest.fixture
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(16, 10, generator=g) * 3, torch.randint(0, 10, (16,), generator=g)


def _p_y(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return logits.softmax(1).gather(1, target[:, None]).squeeze(1)


def test_registry_names() -> None:
    assert loss_names()[:10] == ["ce", "label_smoothing", "focal", "poly1", "mae", "gce", "sce", "nce_rce", "forward", "edl"]


def test_baselines_match_their_formulas(batch) -> None:
    z, y = batch
    p_y = _p_y(z, y)
    ce = -p_y.log()
    assert torch.allclose(build_loss("ce")(z, y), ce.mean(), atol=1e-5)
    smooth = 0.9 * ce + 0.1 * (-z.log_softmax(1)).mean(1)
    assert torch.allclose(build_loss("label_smoothing")(z, y), smooth.mean(), atol=1e-5)
    assert torch.allclose(build_loss("focal")(z, y), ((1 - p_y) ** 2 * ce).mean(), atol=1e-5)
    assert torch.allclose(build_loss("focal", gamma=0)(z, y), ce.mean(), atol=1e-5)
    assert torch.allclose(build_loss("poly1")(z, y), (ce + 1 - p_y).mean(), atol=1e-5)
    mae = (z.softmax(1) - F.one_hot(y, 10)).abs().sum(1)
    assert torch.allclose(build_loss("mae")(z, y), mae.mean(), atol=1e-5)


def test_noise_robust_baselines_match_their_formulas(batch) -> None:
    z, y = batch
    p = z.softmax(1)
    p_y = _p_y(z, y)
    assert torch.allclose(build_loss("gce")(z, y), ((1 - p_y ** 0.7) / 0.7).mean(), atol=1e-5)
    onehot = F.one_hot(y, 10).float().clamp_min(1e-4)  # the reference code's clamped label
    rce = -(p * onehot.log()).sum(1)
    assert torch.allclose(build_loss("sce")(z, y), (0.1 * -p_y.log() + rce).mean(), atol=1e-4)
    nce = p_y.log() / p.log().sum(1)
    assert torch.allclose(build_loss("nce_rce")(z, y), (nce + rce).mean(), atol=1e-4)
    eta = 0.4
    t = torch.full((10, 10), eta / 9).fill_diagonal_(1 - eta)  # symmetric noise: T_ij = P(noisy j | true i)
    noisy_p = p @ t  # (T^T p) for every row
    forward = -noisy_p.gather(1, y[:, None]).squeeze(1).log()
    assert torch.allclose(build_loss("forward", eta=eta)(z, y), forward.mean(), atol=1e-5)
    assert torch.allclose(build_loss("forward", eta=0.0)(z, y), (-p_y.log()).mean(), atol=1e-5)


@pytest.mark.parametrize("name", ["ce", "label_smoothing", "focal", "poly1", "mae", "gce", "sce", "nce_rce", "forward"])
def test_scalar_and_differentiable(name: str, batch) -> None:
    z, y = batch
    z = z.clone().requires_grad_(True)
    loss = build_loss(name)(z, y)
    assert loss.shape == () and torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0
    # bf16 logits (autocast) are computed in float32
    assert build_loss(name)(z.detach().bfloat16(), y).dtype == torch.float32


def test_errors_list_valid_choices() -> None:
    with pytest.raises(ValueError) as err:
        build_loss("hinge")
    assert all(name in str(err.value) for name in ("ce", "focal", "edl"))
    with pytest.raises(ValueError, match="gamma"):
        build_loss("focal", gama=3)
    with pytest.raises(ValueError, match="eps"):
        build_loss("label_smoothing", eps=1.5)
    for spec in ("ce:foo=1", "mae:foo=1", "ce:gain=2,foo=1"):  # no __init__ of their own: no options at all
        with pytest.raises(ValueError, match=r"has no option foo; its options: none"):
            build_loss_from_spec(spec)


def test_option_ranges_are_named() -> None:
    """Poly-1 with epsilon < -1 rises in p_y near 1 (d/dp = -1/p - epsilon): refused, with why."""
    with pytest.raises(ValueError, match=r"poly1 epsilon must be a number >= -1, got -5: .*stops decreasing in p_y"):
        build_loss_from_spec("poly1:epsilon=-5")
    p = torch.linspace(0.01, 1, 100)
    loss = -p.log() + -1.0 * (1 - p)  # the boundary case stays non-increasing
    assert build_loss_from_spec("poly1:-1").epsilon == -1 and bool((loss[1:] <= loss[:-1] + 1e-6).all())
    for spec, match in [("focal:gamma=nan", "focal gamma must be a number >= 0, got nan"),
                        ("focal:gamma=abc", "focal gamma must be a number >= 0, got 'abc'"),
                        ("label_smoothing:eps=inf", r"label_smoothing eps must be a number in \[0, 1\)"),
                        ("poly1:epsilon=true", "poly1 epsilon must be a number >= -1, got True")]:
        with pytest.raises(ValueError, match=match):
            build_loss_from_spec(spec)


def test_parse_loss_spec() -> None:
    assert parse_loss_spec("ce") == ("ce", {})
    assert parse_loss_spec("focal:gamma=3") == ("focal", {"gamma": 3})
    assert parse_loss_spec("focal:3.5") == ("focal", {"gamma": 3.5})
    assert parse_loss_spec("label-smoothing:eps=0.2") == ("label_smoothing", {"eps": 0.2})
    assert parse_loss_spec("edl") == ("edl", {})
    assert parse_loss_spec("edl:runs/x=1,y/loss") == ("edl", {"checkpoint": "runs/x=1,y/loss"})
    assert parse_loss_spec("edl:checkpoint=a/b,check_inputs=false") == (
        "edl", {"checkpoint": "a/b", "check_inputs": False})
    assert build_loss_from_spec("poly1:epsilon=2").epsilon == 2.0
    with pytest.raises(ValueError, match="key=value"):
        parse_loss_spec("focal:gamma=2,3")
    with pytest.raises(ValueError, match="empty loss name"):
        parse_loss_spec(":x")


def test_parse_loss_arm() -> None:
    assert parse_loss_arm("ce") == ("ce", "ce")
    assert parse_loss_arm("edl-chaotic=edl:runs/x/loss") == ("edl-chaotic", "edl:runs/x/loss")
    assert parse_loss_arm("f3=focal:gamma=3") == ("f3", "focal:gamma=3")
    label, spec = parse_loss_arm("focal:gamma=3")
    assert spec == "focal:gamma=3" and "/" not in label and ":" not in label
    assert "/" not in parse_loss_arm("edl:runs/x/loss")[0]
    with pytest.raises(ValueError, match="label"):
        parse_loss_arm("bad label=ce")


def test_register_loss(batch) -> None:
    register_loss("double_ce", lambda scale=2.0: _Scaled(scale), primary="scale")
    try:
        z, y = batch
        assert torch.allclose(build_loss_from_spec("double_ce:3")(z, y), 3 * F.cross_entropy(z, y))
    finally:
        LOSSES.pop("double_ce")


class _Scaled(torch.nn.Module):
    def __init__(self, scale: float) -> None:
        super().__init__()
        self.scale = scale

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.scale * F.cross_entropy(z, y)


def test_edl_from_checkpoint(batch, tmp_path: Path) -> None:
    folder = make_edl_checkpoint(tmp_path / "loss")
    z, y = batch
    z = z.clone().requires_grad_(True)
    loss_fn = build_loss("edl", checkpoint=str(folder))
    same = build_loss_from_spec(f"edl:{folder}")
    loss = loss_fn(z, y)
    assert loss.shape == () and torch.isfinite(loss)
    assert torch.equal(loss.detach(), same(z, y).detach())
    loss.backward()
    assert torch.isfinite(z.grad).all()
    with pytest.raises(FileNotFoundError):
        build_loss_from_spec(f"edl:{tmp_path / 'missing'}")


def test_edl_pretrained(batch) -> None:
    reference = pretrained_edl_or_skip()
    z, y = batch
    loss = build_loss("edl")(z, y)
    assert loss.shape == () and torch.isfinite(loss)
    assert torch.equal(loss, reference(z, y))
    # a sensible loss ranks a confident right answer below a confident wrong one
    right = F.one_hot(y, 10).float() * 8
    wrong = F.one_hot((y + 1) % 10, 10).float() * 8
    assert build_loss("edl")(right, y) < build_loss("edl")(wrong, y)


def test_gain_scales_any_loss_and_keeps_its_hooks(batch, tmp_path: Path) -> None:
    """``gain=G`` is the loss times G (so its gradient too); hooks such as set_class_counts pass
    through; the EDL network's definition is still what a resumed run checks; bad gains are named."""
    from edloss.lab.losses import Gained, spec_definition

    z, y = batch
    for spec in ("ce", "gce", "poly1"):
        plain, gained = build_loss_from_spec(spec), build_loss_from_spec(f"{spec}:gain=0.25")
        assert isinstance(gained, Gained)
        assert torch.allclose(gained(z, y), 0.25 * plain(z, y), rtol=1e-6)
    assert torch.allclose(build_loss_from_spec("focal:gamma=3,gain=2")(z, y), 2 * build_loss("focal", gamma=3)(z, y))
    assert parse_loss_spec("edl:gain=0.5") == ("edl", {"gain": 0.5})  # an option, not a checkpoint path
    la = build_loss_from_spec("logit_adjusted:gain=2")
    counts = [100, 50, 20, 10, 5, 5, 5, 5, 5, 5]
    la.set_class_counts(counts)
    reference = build_loss("logit_adjusted")
    reference.set_class_counts(counts)
    assert torch.allclose(la(z, y), 2 * reference(z, y))
    folder = make_edl_checkpoint(tmp_path / "loss")
    assert spec_definition(f"edl:checkpoint={folder},gain=0.5") == spec_definition(f"edl:{folder}") is not None
    for bad in ("0", "-1", "nan", "x", "true"):
        with pytest.raises(ValueError, match="gain must be a positive number"):
            build_loss_from_spec(f"ce:gain={bad}")


def test_gradient_ratio_table_against_cross_entropy():
    """CE against itself is 1 everywhere; Poly-1 adds eps * p_y (1 - p_y) per logit, so its ratio grows with p_y."""
    from edloss.shapes import cross_entropy, format_gradient_ratio_table, gradient_ratio_table

    same = gradient_ratio_table(cross_entropy, k=10, truths=250)
    assert all(b["ratio"] == pytest.approx(1.0) for b in same["bins"]) and same["cosine"] == pytest.approx(1.0)
    assert sum(b["count"] for b in same["bins"]) == 250 * 8  # predictions_per_truth

    def poly1(logits, target):
        logp = F.log_softmax(logits, 1).gather(1, target[:, None]).squeeze(1)
        return -logp + 1 - logp.exp()

    ratios = [b["ratio"] for b in gradient_ratio_table(poly1, k=10, truths=250)["bins"]]
    assert ratios[0] == pytest.approx(1.0, abs=0.02) and ratios == sorted(ratios) and 1.8 < ratios[-1] <= 2.0
    assert "mean cosine" in format_gradient_ratio_table(same)


def test_inspect_sets_lab_losses_beside_the_loss(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`edloss inspect --beside`: values and gradient ratios of the baselines in one table, and the figure."""
    from edloss.cli import main as cli_main

    figure = tmp_path / "shapes.png"
    assert cli_main(["inspect", "noise-0.4-k10", "--classes", "10"]) == 0  # any shipped loss by name
    assert "--label-noise 0.4" in capsys.readouterr().out
    assert cli_main(["inspect", "no-such-loss"]) == 2  # a bare unknown name: the shipped names listed
    assert "no shipped loss named 'no-such-loss'; available: ['default'" in capsys.readouterr().err
    assert cli_main(["inspect", "default", "--beside", "gce", "fc=forward:0.4", "--figure", str(figure)]) == 0
    out = capsys.readouterr().out.split("loss value by p_y")[1]  # the side-by-side section
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines()[1:] if line.strip()}
    # forward correction at K = 10, eta = 0.4, p_y = 0.5: -log((1 - eta - eta/9) p_y + eta/9)
    k, eta = 10, 0.4
    expected = -math.log((1 - eta - eta / (k - 1)) * 0.5 + eta / (k - 1))
    header = next(line.split() for line in out.splitlines() if line.split()[:1] == ["p_y"] and "fc" in line)
    assert float(rows["0.5"][header.index("fc") - 1]) == pytest.approx(expected, rel=1e-3)
    assert "gce" in rows and "fc" in rows and len(rows["fc"]) == 8  # 7 bins and the cosine
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
