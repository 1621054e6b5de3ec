"""edloss.lab.models: every CIFAR ResNet builds, has the paper's size, and runs forward."""

from __future__ import annotations

import pytest
import torch

from _cifar_fixtures import _one_thread  # noqa: F401
from edloss.lab.models import BasicBlock, build_model, count_parameters, model_names

# parameter counts: He et al. 2016, table 6 (0.27M ... 1.7M), and the usual CIFAR ResNet-18
PAPER_PARAMS = {"resnet8": 0.0753e6,  # not in the paper: 6n+2 with n = 1 counted by hand (75,290)
                "resnet20": 0.27e6, "resnet32": 0.46e6, "resnet44": 0.66e6,
                "resnet56": 0.85e6, "resnet110": 1.7e6, "resnet18": 11.17e6}


@pytest.mark.parametrize("name", model_names())
def test_output_shape_and_size(name: str) -> None:
    torch.manual_seed(0)
    model = build_model(name, num_classes=10).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    assert count_parameters(model) == pytest.approx(PAPER_PARAMS[name], rel=0.03)


def test_names_are_forgiving_and_unknown_is_listed() -> None:
    assert count_parameters(build_model("ResNet-20")) == count_parameters(build_model("resnet20"))
    with pytest.raises(ValueError) as err:
        build_model("resnet19")
    assert all(name in str(err.value) for name in model_names())


def test_num_classes_and_training_step() -> None:
    model = build_model("resnet20", num_classes=100)
    out = model(torch.randn(4, 3, 32, 32))
    assert out.shape == (4, 100)
    out.logsumexp(1).mean().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_option_a_shortcuts_have_no_parameters() -> None:
    a, b = build_model("resnet20"), build_model("resnet20", shortcut="B")
    assert not any(isinstance(m, BasicBlock) and m.project is not None for m in a.modules())
    assert sum(isinstance(m, BasicBlock) and m.project is not None for m in b.modules()) == 2
    assert count_parameters(b) > count_parameters(a)
    with pytest.raises(ValueError, match="shortcut"):
        build_model("resnet18", shortcut="A")


def test_channels_last_matches_nchw() -> None:
    torch.manual_seed(0)
    model = build_model("resnet20").eval()
    x = torch.randn(2, 3, 32, 32)
    cl = build_model("resnet20", channels_last=True).eval()
    cl.load_state_dict(model.state_dict())
    with torch.no_grad():
        expected = model(x)
        got = cl(x.contiguous(memory_format=torch.channels_last))
    assert cl.stem[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(expected, got, atol=1e-4)


def test_same_seed_same_init() -> None:
    torch.manual_seed(5)
    a = build_model("resnet20").state_dict()
    torch.manual_seed(5)
    b = build_model("resnet20").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
