import json
import warnings

import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, given
from hypothesis import strategies as st

from edloss import EDLLoss
from edloss.features import MONOTONE_FEATURES
from edloss.lossnet import LossNet, LossNetConfig, init_scale


def make_loss(seed: int = 0, **kwargs) -> EDLLoss:
    cfg = LossNetConfig()
    theta = torch.randn(cfg.num_params, generator=torch.Generator().manual_seed(seed)) * init_scale(cfg)
    return EDLLoss(LossNet.from_flat(theta, cfg), scale=1.7, **kwargs)


@given(
    k=st.integers(2, 1000),
    n=st.integers(1, 8),
    magnitude=st.sampled_from([1e-3, 1.0, 30.0, 1e3, 1e4]),
    seed=st.integers(0, 2**16),
)
def test_loss_and_gradient_are_finite_for_any_logits(k, n, magnitude, seed):
    g = torch.Generator().manual_seed(seed)
    logits = ((torch.rand(n, k, generator=g) * 2 - 1) * magnitude).requires_grad_(True)
    target = torch.randint(0, k, (n,), generator=g)
    loss = make_loss(seed % 7)(logits, target)
    loss.backward()
    assert torch.isfinite(loss) and loss >= 0
    assert torch.isfinite(logits.grad).all()


@given(k=st.integers(2, 50), n=st.integers(1, 30), seed=st.integers(0, 2**16))
def test_reductions_are_consistent(k, n, seed):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, k, generator=g) * 5
    target = torch.randint(0, k, (n,), generator=g)
    none = make_loss(reduction="none")(logits, target)
    assert none.shape == (n,)
    torch.testing.assert_close(make_loss(reduction="sum")(logits, target), none.sum())
    torch.testing.assert_close(make_loss(reduction="mean")(logits, target), none.mean())


def test_extreme_logits_mirror_cross_entropy_support():
    logits = torch.tensor([[1e4, -1e4, 0.0], [-1e4, 1e4, 0.0]], requires_grad=True)
    loss = make_loss()(logits, torch.tensor([0, 0]))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()


def test_ignore_index_rows_do_not_count():
    logits = torch.randn(6, 4)
    target = torch.tensor([0, 1, -100, 3, -100, 2])
    full = make_loss(reduction="none")(logits, target)
    assert (full[target == -100] == 0).all()
    keep = target != -100
    torch.testing.assert_close(make_loss()(logits, target), make_loss()(logits[keep], target[keep]))


def test_drop_in_for_cross_entropy_in_a_training_step():
    torch.manual_seed(0)
    model = torch.nn.Linear(5, 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(64, 5), torch.randint(0, 3, (64,))
    criterion = make_loss()
    loss = criterion(model(x), y)
    loss.backward()
    opt.step()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_low_precision_logits(dtype):
    model = torch.nn.Linear(8, 10)
    x, y = torch.randn(16, 8), torch.randint(0, 10, (16,))
    with torch.autocast("cpu", dtype=dtype):
        logits = model(x)
        loss = make_loss()(logits, y)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    torch.testing.assert_close(loss, make_loss()(logits.float(), y), rtol=0, atol=0)


def test_torch_compile_matches_eager():
    loss_fn = make_loss()
    compiled = torch.compile(loss_fn)
    logits, y = torch.randn(32, 10), torch.randint(0, 10, (32,))
    torch.testing.assert_close(compiled(logits, y), loss_fn(logits, y), rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------ bad input
@pytest.mark.parametrize(
    "logits, target, error, match",
    [
        (torch.randn(4), torch.zeros(4, dtype=torch.long), ValueError, r"shape \(\)"),
        (torch.randn(4, 3, 2), torch.zeros(4, dtype=torch.long), ValueError, r"shape \(4, 2\)"),
        (torch.randn(4, 3), torch.zeros(4), ValueError, "input's shape"),
        (torch.randn(4, 3), torch.zeros(4, dtype=torch.bool), TypeError, "class indices"),
        (torch.randn(4, 3), torch.zeros(5, dtype=torch.long), ValueError, "shape"),
        (torch.randn(4, 3), torch.tensor([0, 1, 3, 0]), ValueError, r"\[0, 3\)"),
        (torch.randn(4, 3), torch.tensor([0, -1, 2, 0]), ValueError, r"\[0, 3\)"),
        (torch.tensor([[0.0, float("nan")], [1.0, 2.0]]), torch.tensor([0, 1]), ValueError, "NaN or Inf"),
        (torch.tensor([[0.0, float("inf")], [1.0, 2.0]]), torch.tensor([0, 1]), ValueError, "NaN or Inf"),
        (torch.randint(0, 3, (4, 3)), torch.zeros(4, dtype=torch.long), TypeError, "floating-point"),
        (torch.randn(4, 1), torch.zeros(4, dtype=torch.long), ValueError, "at least 2 classes"),
        (torch.randn(0, 3), torch.zeros(0, dtype=torch.long), ValueError, "empty"),
    ],
)
def test_bad_inputs_get_clear_errors(logits, target, error, match):
    with pytest.raises(error, match=match):
        make_loss()(logits, target)


def test_probabilities_instead_of_logits_warn():
    probs = torch.randn(8, 5).softmax(1)
    with pytest.warns(UserWarning, match="looks? like probabilities"):
        make_loss()(probs, torch.zeros(8, dtype=torch.long))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        make_loss()(torch.randn(8, 5), torch.zeros(8, dtype=torch.long))


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="reduction"):
        make_loss(reduction="avg")
    with pytest.raises(ValueError, match="scale"):
        EDLLoss(LossNet(LossNetConfig()), scale=float("nan"))


# ------------------------------------------------------------------ checkpoints
def test_save_and_load_round_trip(tmp_path):
    loss = make_loss(3)
    loss.metadata = {"seed": 3}
    loss.save(tmp_path / "ckpt")
    back = EDLLoss.from_file(tmp_path / "ckpt")
    logits, y = torch.randn(10, 7), torch.randint(0, 7, (10,))
    torch.testing.assert_close(back(logits, y), loss(logits, y))
    assert back.metadata == {"seed": 3}
    assert EDLLoss.from_file(tmp_path / "ckpt" / "loss.json").scale == loss.scale


def test_tampered_checkpoint_is_refused(tmp_path):
    make_loss().save(tmp_path)
    blob = bytearray((tmp_path / "loss.safetensors").read_bytes())
    blob[-3] ^= 0xFF
    (tmp_path / "loss.safetensors").write_bytes(bytes(blob))
    with pytest.raises(ValueError, match="checksum mismatch"):
        EDLLoss.from_file(tmp_path)


def test_truncated_checkpoint_is_refused(tmp_path):
    make_loss().save(tmp_path)
    text = (tmp_path / "loss.json").read_text()
    (tmp_path / "loss.json").write_text(text[: len(text) // 2])
    with pytest.raises(ValueError, match="not valid JSON"):
        EDLLoss.from_file(tmp_path)
    make_loss().save(tmp_path)
    blob = (tmp_path / "loss.safetensors").read_bytes()
    (tmp_path / "loss.safetensors").write_bytes(blob[:40])
    with pytest.raises(ValueError, match="checksum mismatch"):
        EDLLoss.from_file(tmp_path)


def test_newer_format_version_is_refused(tmp_path):
    make_loss().save(tmp_path)
    meta = json.loads((tmp_path / "loss.json").read_text())
    meta["format_version"] = 99
    (tmp_path / "loss.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="pip install -U edloss"):
        EDLLoss.from_file(tmp_path)


def test_missing_checkpoint_says_what_it_expects(tmp_path):
    with pytest.raises(FileNotFoundError, match="loss.json"):
        EDLLoss.from_file(tmp_path / "nowhere")
    (tmp_path / "half").mkdir()
    make_loss().save(tmp_path / "half")
    (tmp_path / "half" / "loss.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="missing"):
        EDLLoss.from_file(tmp_path / "half")


def test_not_a_checkpoint(tmp_path):
    (tmp_path / "loss.json").write_text(json.dumps({"hello": 1}))
    with pytest.raises(ValueError, match="not an edloss loss checkpoint"):
        EDLLoss.from_file(tmp_path)


def test_shipped_default_loads_and_trains():
    loss = EDLLoss.pretrained()
    assert loss.metadata["command"].startswith("edloss pretrain")
    logits = torch.randn(32, 10, requires_grad=True)
    y = torch.randint(0, 10, (32,))
    value = loss(logits, y)
    value.backward()
    # gradient at the uniform prediction is anchored to cross-entropy's
    z = torch.zeros(1, 10, requires_grad=True)
    loss(z, torch.tensor([0])).backward()
    ce_z = torch.zeros(1, 10, requires_grad=True)
    F.cross_entropy(ce_z, torch.tensor([0])).backward()
    assert z.grad.norm().item() == pytest.approx(ce_z.grad.norm().item(), rel=1e-3)
    with pytest.raises(FileNotFoundError, match="available"):
        EDLLoss.pretrained("no-such-loss")


@given(
    k=st.integers(2, 300),
    n=st.integers(1, 16),
    magnitude=st.sampled_from([1e-3, 1.0, 10.0, 100.0]),
    features=st.lists(st.sampled_from(["log_kpy", "margin", "logit_margin", "log_krival", "entropy", "p_y", "rank"]), min_size=1, max_size=7, unique=True).filter(lambda f: f != ["rank"]),
    activation=st.sampled_from(["tanh", "softsign", "relu"]),
    form=st.sampled_from(["free", "monotone", "corrected"]),
    seed=st.integers(0, 2**16),
)
def test_closed_form_gradient_equals_autograd(k, n, magnitude, features, activation, form, seed):
    if form != "free":
        features = [f for f in features if f in MONOTONE_FEATURES] or ["log_kpy"]
    cfg = LossNetConfig(features=tuple(features), activation=activation, form=form,
                        noise_rate=0.3 if form == "corrected" else 0.0)
    g = torch.Generator().manual_seed(seed)
    net = LossNet.from_flat(torch.randn(cfg.num_params, generator=g) * init_scale(cfg), cfg)
    logits = (torch.randn(n, k, generator=g) * magnitude).requires_grad_(True)
    target = torch.randint(0, k, (n,), generator=g)
    weights = torch.rand(n, generator=g)  # a non-uniform upstream gradient
    grads = []
    for fused in (True, False):
        loss = EDLLoss(net, scale=0.7, reduction="none", fused=fused)(logits, target)
        grads.append((loss, torch.autograd.grad((loss * weights).sum(), logits)[0]))
    torch.testing.assert_close(grads[0][0], grads[1][0], rtol=1e-5, atol=1e-6)
    # Where two wrong classes tie for best in float32, both paths take a valid but different
    # subgradient (max vs topk tie-breaking); gradients are only comparable without ties.
    wrong = logits.detach().log_softmax(1).scatter(1, target[:, None], float("-inf"))
    best2 = wrong.topk(min(2, k - 1), dim=1).values
    assume(k == 2 or bool((best2[:, 0] > best2[:, -1]).all()))
    torch.testing.assert_close(grads[0][1], grads[1][1], rtol=1e-4, atol=1e-6)
