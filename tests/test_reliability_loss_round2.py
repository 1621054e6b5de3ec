"""The loss library under a hostile user, round two (issues 21 and 23, the loss-side items).

* a -inf mask with a one-hot probability target gives the class-index result, not NaN (21.1);
* second-order gradients through the fused path equal the autograd path's (21.2), and
  torch.func transforms, forward-mode AD and the meta device route there (23.7);
* load_state_dict refuses another loss's definition (21.3);
* .half() keeps the class weights exact (21.4);
* v3 says it is not monotone (21.5); ignore_index with probability targets raises as CE (21.7);
* the provenance is checksummed, a format-1 file needs allow_unverified=True (23.6);
* bad arguments, files and architectures get one-line errors naming the value (21.8, 23.7).
"""

from __future__ import annotations

import hashlib
import io
import json
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from edloss import EDLLoss
from edloss.loss import CONFIG_FILE, NOT_MONOTONE, WEIGHTS_FILE, definition_digest, shipped_names
from edloss.lossnet import LossNet, LossNetConfig, init_scale, population_forward


def random_loss(seed: int = 0, **kwargs) -> EDLLoss:
    """A loss with random weights: mixed signs (free form) make inf - inf reachable."""
    cfg = kwargs.pop("cfg", LossNetConfig(form="free", features=("log_kpy", "logit_margin", "entropy"), activation="tanh"))
    theta = torch.randn(cfg.num_params, generator=torch.Generator().manual_seed(seed)) * init_scale(cfg) * 3
    return EDLLoss(LossNet.from_flat(theta, cfg), scale=0.9, **kwargs)


def value_and_grad(loss: EDLLoss, x: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.detach().clone().requires_grad_(True)
    out = loss(x, target)
    out.sum().backward()
    return out.detach(), x.grad


def one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message, f"a multi-line error: {message!r}"
    return message


# ---------------------------------------------------------------------- 21.1: -inf mask, soft target
@pytest.mark.parametrize("make", [EDLLoss.pretrained, random_loss], ids=["default", "free-form"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_minus_inf_mask_with_a_one_hot_probability_target_gives_the_class_index_result(make, reduction):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 5, generator=g, dtype=torch.float64) * 3
    x[:, 3] = -float("inf")  # class 3 masked out, as CE allows for class indices
    x[0, 1] = -float("inf")
    y = torch.tensor([0, 2, 4, 1, 0, 2])
    loss = make(reduction=reduction)
    a, ga = value_and_grad(loss, x, y)
    b, gb = value_and_grad(loss, x, F.one_hot(y, 5).to(x.dtype))
    assert torch.isfinite(b).all() and torch.isfinite(gb).all()
    torch.testing.assert_close(b, a)
    torch.testing.assert_close(gb, ga)


def test_probability_mass_on_a_minus_inf_logit_is_an_error_naming_the_row():
    x = torch.randn(3, 4)
    x[1, 2] = -float("inf")
    target = torch.full((3, 4), 0.25)  # row 1 puts mass on its masked class: an infinite loss
    with pytest.raises(ValueError, match=r"rows \[1\].*target's logit is -Inf"):
        EDLLoss.pretrained()(x, target)


# ---------------------------------------------------------------------- 21.2: second order
def gradient_penalty_grads(fused: bool, reduction: str) -> list[torch.Tensor]:
    """A gradient penalty ||d loss / d input||^2 through a small model: its parameter gradient."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 10)).double()
    inputs = torch.randn(12, 4, dtype=torch.float64, requires_grad=True)
    target = torch.randint(0, 10, (12,))
    loss = EDLLoss.pretrained(fused=fused, reduction=reduction)(model(inputs), target)
    (grad,) = torch.autograd.grad(loss.sum(), inputs, create_graph=True)
    (loss.sum() + grad.pow(2).sum()).backward()
    return [p.grad for p in model.parameters()]


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_second_order_gradients_through_the_fused_path_equal_the_autograd_paths(reduction):
    for fused, plain in zip(gradient_penalty_grads(True, reduction), gradient_penalty_grads(False, reduction)):
        torch.testing.assert_close(fused, plain, rtol=1e-9, atol=1e-12)


def test_hessian_through_the_fused_path_equals_the_autograd_paths():
    x = torch.randn(3, 5, dtype=torch.float64)
    y = torch.tensor([0, 3, 1])
    hessians = [torch.autograd.functional.hessian(lambda z, f=fused: EDLLoss.pretrained(fused=f)(z, y), x)
                for fused in (True, False)]
    assert hessians[1].abs().max() > 0.01
    torch.testing.assert_close(hessians[0], hessians[1], rtol=1e-9, atol=1e-12)


# ---------------------------------------------------------------------- 23.7: transforms, meta device
@pytest.mark.parametrize("check_inputs", [True, False])
def test_torch_func_transforms_route_to_the_autograd_path(check_inputs):
    x = torch.randn(4, 6)
    y = torch.tensor([0, 5, 2, 2])
    loss = EDLLoss.pretrained(check_inputs=check_inputs)  # fused=True, the default
    _, expected = value_and_grad(EDLLoss.pretrained(fused=False), x, y)
    torch.testing.assert_close(torch.func.grad(lambda z: loss(z, y))(x), expected)
    batch = torch.randn(3, 4, 6)
    torch.testing.assert_close(torch.func.vmap(lambda z: loss(z, y))(batch), torch.stack([loss(b, y) for b in batch]))
    torch.testing.assert_close(torch.func.jacrev(lambda z: loss(z, y))(x), expected)
    hessian = torch.func.hessian(lambda z: loss(z, y))(x.double())
    torch.testing.assert_close(hessian, torch.autograd.functional.hessian(lambda z: EDLLoss.pretrained(fused=False)(z, y), x.double()))


def test_forward_mode_ad_routes_to_the_autograd_path():
    x = torch.randn(4, 6, dtype=torch.float64)
    y = torch.tensor([0, 5, 2, 2])
    tangent = torch.randn(4, 6, dtype=torch.float64)
    _, grad = value_and_grad(EDLLoss.pretrained(fused=False), x, y)
    loss = EDLLoss.pretrained()
    _, jvp = torch.func.jvp(lambda z: loss(z, y), (x,), (tangent,))
    torch.testing.assert_close(jvp, (grad * tangent).sum())
    with torch.autograd.forward_ad.dual_level():
        dual = torch.autograd.forward_ad.make_dual(x.clone().requires_grad_(True), tangent)
        out = loss(dual, y)
        torch.testing.assert_close(torch.autograd.forward_ad.unpack_dual(out).tangent, (grad * tangent).sum())


@pytest.mark.parametrize("soft", [False, True])
def test_meta_device_gives_shapes(soft):
    loss = EDLLoss.pretrained(reduction="none", weight=torch.ones(5)).to("meta")
    x = torch.randn(2, 5, 7, device="meta", requires_grad=True)
    target = torch.randn(2, 5, 7, device="meta") if soft else torch.zeros(2, 7, dtype=torch.long, device="meta")
    out = loss(x, target)
    out.sum().backward()
    assert out.shape == (2, 7) and out.device.type == "meta" and x.grad.shape == x.shape


def test_logits_and_loss_on_different_devices_is_a_one_line_error():
    with pytest.raises(ValueError) as err:
        EDLLoss.pretrained()(torch.randn(2, 5, device="meta"), torch.zeros(2, dtype=torch.long, device="meta"))
    assert "criterion.to('meta')" in one_line(err)
    with pytest.raises(ValueError) as err:
        EDLLoss.pretrained(weight=torch.ones(5, device="meta"))(torch.randn(2, 5), torch.zeros(2, dtype=torch.long))
    assert "the loss is on meta" in one_line(err)


# ---------------------------------------------------------------------- 23.7: the network's size
def test_a_huge_network_is_refused_before_any_allocation():
    with pytest.raises(ValueError) as err:
        LossNetConfig(hidden=(100000, 100000))
    assert "10,000,600,001 parameters; at most 1,000,000" in one_line(err)


@pytest.mark.parametrize("form,activation", [("monotone", "tanh"), ("free", "relu"), ("bounded", "softsign")])
def test_no_hidden_layer_is_a_linear_loss_on_both_paths(form, activation):
    cfg = LossNetConfig(hidden=(), form=form, activation=activation)
    theta = torch.randn(cfg.num_params, generator=torch.Generator().manual_seed(1)) * 2
    x, y = torch.randn(7, 4, dtype=torch.float64) * 3, torch.tensor([0, 1, 2, 3, 0, 1, 2])
    fused = value_and_grad(EDLLoss(LossNet.from_flat(theta, cfg), reduction="sum"), x, y)
    plain = value_and_grad(EDLLoss(LossNet.from_flat(theta, cfg), reduction="sum", fused=False), x, y)
    torch.testing.assert_close(fused, plain)
    features = torch.randn(5, len(cfg.features))
    assert population_forward(theta[None].repeat(3, 1), features, cfg).shape == (3, 5)


# ---------------------------------------------------------------------- 21.3: state dicts
@pytest.mark.parametrize("other", ["v3", "noise-0.4"])
def test_load_state_dict_refuses_another_losss_definition(other):
    loss = EDLLoss.pretrained()
    before = loss.net.flat().clone()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # v3's not-monotone warning
        state = EDLLoss.pretrained(other).state_dict()
    with pytest.raises(ValueError) as err:
        loss.load_state_dict(state)
    assert "another loss" in one_line(err)
    assert torch.equal(loss.net.flat(), before)  # refused before any weight was copied


def test_a_state_dict_of_the_same_loss_round_trips_with_weights_only():
    trained = EDLLoss.pretrained(trainable=True)
    with torch.no_grad():
        trained.net.layers[0].bias.add_(0.5)  # a fine-tuned loss: same definition, other weights
    model = torch.nn.ModuleDict({"body": torch.nn.Linear(3, 10), "criterion": trained})
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    fresh = torch.nn.ModuleDict({"body": torch.nn.Linear(3, 10), "criterion": EDLLoss.pretrained(trainable=True)})
    fresh.load_state_dict(state)
    assert torch.equal(fresh["criterion"].net.flat(), trained.net.flat())


def test_a_different_scale_is_another_definition():
    net = EDLLoss.pretrained().net
    with pytest.raises(ValueError, match="another loss"):
        EDLLoss(net, scale=1.0).load_state_dict(EDLLoss(net, scale=2.0).state_dict())


# ---------------------------------------------------------------------- 21.4: .half()
@pytest.mark.parametrize("cast", ["half", "bfloat16"])
def test_half_never_rounds_the_class_weights(cast):
    weight = torch.tensor([0.1234567, 1e5, 1.0, 2.0, 3.0])
    loss = getattr(EDLLoss.pretrained(weight=weight), cast)()
    assert loss.weight.dtype == torch.float32 and torch.equal(loss.weight, weight)
    out = loss(torch.randn(4, 5, dtype=getattr(torch, "float16" if cast == "half" else cast)), torch.tensor([0, 1, 2, 1]))
    assert torch.isfinite(out)


# ---------------------------------------------------------------------- 21.5: v3 is not monotone
def test_v3_is_marked_not_monotone_and_warns_on_load(tmp_path):
    with pytest.warns(UserWarning, match="not monotone"):
        v3 = EDLLoss.pretrained("v3", reduction="sum")
    assert "26 to 52" in v3.metadata[NOT_MONOTONE]
    z = torch.zeros(1, 10)
    z[0, 1] = 30.0  # a wrong class ahead by 30, inside the range the note names
    z.requires_grad_(True)
    v3(z, torch.tensor([0])).backward()
    assert z.grad[0, 0] > 0  # the true logit is pushed down: what the mark says
    v3.save(tmp_path)
    with pytest.warns(UserWarning, match="not monotone"):
        EDLLoss.from_file(tmp_path)  # the mark travels with a re-saved copy
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for name in shipped_names():
            if name != "v3":
                EDLLoss.pretrained(name)  # no other shipped loss warns


# ---------------------------------------------------------------------- 21.7: ignore_index, soft targets
@pytest.mark.parametrize("ignore_index", [0, 3])
def test_ignore_index_with_probability_targets_raises_as_ce_does(ignore_index):
    x, probs = torch.randn(3, 5), torch.randn(3, 5).softmax(1)
    with pytest.raises(RuntimeError, match="ignore_index is not supported for floating point target"):
        F.cross_entropy(x, probs, ignore_index=ignore_index)
    with pytest.raises(ValueError, match="ignore_index is not supported for floating point target"):
        EDLLoss.pretrained(ignore_index=ignore_index)(x, probs)
    for accepted in (-100, -1, None):  # CE accepts negative ones (nothing can equal them)
        assert torch.isfinite(EDLLoss.pretrained(ignore_index=accepted)(x, probs))


# ---------------------------------------------------------------------- 23.6: provenance, old formats
def edit_file(folder: Path, edit) -> None:
    meta = json.loads((folder / CONFIG_FILE).read_text())
    edit(meta)
    (folder / CONFIG_FILE).write_text(json.dumps(meta))


def test_an_edited_provenance_is_refused(tmp_path):
    EDLLoss.pretrained().save(tmp_path)
    edit_file(tmp_path, lambda m: m["provenance"]["config"]["objective"].__setitem__("label_noise", 0.4))
    with pytest.raises(ValueError) as err:
        EDLLoss.from_file(tmp_path, noise_rate=0.4)  # the clean default passed off as a noise-0.4 loss
    assert "edited after saving" in one_line(err)


def test_format_1_without_a_checksum_is_refused_unless_asked_for(tmp_path):
    EDLLoss.pretrained().save(tmp_path)
    edit_file(tmp_path, lambda m: (m.__setitem__("format_version", 1), m.pop("definition_sha256"), m.__setitem__("scale", 5.0)))
    with pytest.raises(ValueError) as err:
        EDLLoss.from_file(tmp_path)
    assert "allow_unverified=True" in one_line(err)
    with pytest.warns(UserWarning, match="loaded unverified"):
        loss = EDLLoss.from_file(tmp_path, allow_unverified=True)
    assert loss.scale == 5.0  # what the user asked for, knowingly
    loss.save(tmp_path / "resaved")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert EDLLoss.from_file(tmp_path / "resaved").scale == 5.0  # now verified


def test_format_2_loads_with_a_warning_that_its_provenance_is_unchecked(tmp_path):
    EDLLoss.pretrained().save(tmp_path)
    blob = (tmp_path / WEIGHTS_FILE).read_bytes()

    def as_version_2(meta):
        meta["format_version"] = 2
        meta["definition_sha256"] = definition_digest(meta, blob)  # format 2's digest: no provenance

    edit_file(tmp_path, as_version_2)
    with pytest.warns(UserWarning, match="provenance .* is not checksummed"):
        EDLLoss.from_file(tmp_path)
    edit_file(tmp_path, lambda m: m.__setitem__("scale", 5.0))
    with pytest.raises(ValueError, match="edited after saving"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        EDLLoss.from_file(tmp_path)  # its architecture and scale are still checked


def test_shipped_files_are_format_3_and_verify():
    from edloss.loss import _weights

    for name in shipped_names():
        meta = json.loads((_weights() / name / CONFIG_FILE).read_text())
        blob = (_weights() / name / WEIGHTS_FILE).read_bytes()
        assert meta["format_version"] == 3 and meta["sha256"] == hashlib.sha256(blob).hexdigest()
        assert definition_digest(meta, blob) == meta["definition_sha256"]


# ---------------------------------------------------------------------- 21.8: the loss API's errors
NET = LossNet(LossNetConfig())


@pytest.mark.parametrize(
    "call,error,match",
    [
        (lambda: EDLLoss("net"), TypeError, "net must be an edloss LossNet, got str"),
        (lambda: EDLLoss(NET, fused="no"), TypeError, "fused must be True or False, got 'no'"),
        (lambda: EDLLoss(NET, check_inputs=1), TypeError, "check_inputs must be True or False, got 1"),
        (lambda: EDLLoss(NET, trainable=2), TypeError, "trainable must be True or False, got 2"),
        (lambda: EDLLoss(NET, metadata=[1]), TypeError, "metadata must be a dict"),
        (lambda: EDLLoss.pretrained(".."), FileNotFoundError, "no shipped loss named '..'; available"),
        (lambda: EDLLoss.pretrained("."), FileNotFoundError, "no shipped loss named '.'; available"),
        (lambda: EDLLoss.from_file(None), TypeError, "path must name a checkpoint folder .* got None"),
        (lambda: EDLLoss.from_file(""), TypeError, "path must name a checkpoint folder .* got ''"),
        (lambda: EDLLoss.from_file(3), TypeError, "path must name a checkpoint folder .* got 3"),
        (lambda: EDLLoss.pretrained(allow_unverified="yes"), TypeError, "allow_unverified must be True or False, got 'yes'"),
        (lambda: EDLLoss.pretrained(weight=torch.ones(2, 3)), ValueError, r"weight must be a 1-D .* got a tensor of shape \(2, 3\)"),
        (lambda: EDLLoss.pretrained().to("meta")(torch.randn(2, 3, device="meta"), torch.tensor([0, 1])), ValueError,
         "the target is on cpu; move the target"),
    ],
)
def test_bad_loss_arguments_get_one_line_errors_naming_the_value(call, error, match):
    with pytest.raises(error) as err:
        call()
    assert err.match(match) and one_line(err)


def test_from_file_noise_rate_outside_the_pretraining_range_is_named(tmp_path):
    EDLLoss.pretrained().save(tmp_path)
    with pytest.raises(ValueError) as err:
        EDLLoss.from_file(tmp_path, noise_rate=2.0)  # was: "pretrain one with --label-noise 2.0", a rate pretrain refuses
    assert "noise_rate must be a number in [0, 0.99]" in one_line(err)


@pytest.mark.parametrize(
    "edit,match",
    [
        (lambda m, blob: m.__setitem__("provenance", [1]), "field 'provenance' must be a dict, got list"),
        (lambda m, blob: m["lossnet"].__setitem__("hidden", [100000, 100000]), "at most 1,000,000"),
        (lambda m, blob: m["lossnet"].__setitem__("hidden", "16"), "lossnet.hidden must be a list"),
    ],
)
def test_bad_files_get_one_line_errors_naming_the_field(tmp_path, edit, match):
    """Checksums recomputed after the edit: the checks behind them must hold on their own."""
    EDLLoss.pretrained().save(tmp_path)
    blob = (tmp_path / WEIGHTS_FILE).read_bytes()

    def edit_and_restamp(meta):
        edit(meta, blob)
        meta["definition_sha256"] = definition_digest(meta, blob)

    edit_file(tmp_path, edit_and_restamp)
    with pytest.raises(ValueError) as err:
        EDLLoss.from_file(tmp_path)
    assert err.match(match) and one_line(err)


def test_a_non_flat_weights_tensor_is_a_one_line_error(tmp_path):
    from safetensors.torch import save

    loss = EDLLoss.pretrained()
    loss.save(tmp_path)
    blob = save({"theta": loss.net.flat().float()[None].repeat(2, 1).contiguous()})
    (tmp_path / WEIGHTS_FILE).write_bytes(blob)

    def restamp(meta):
        meta["sha256"] = hashlib.sha256(blob).hexdigest()
        meta["definition_sha256"] = definition_digest(meta, blob)

    edit_file(tmp_path, restamp)
    with pytest.raises(ValueError) as err:
        EDLLoss.from_file(tmp_path)
    assert "'theta' must be a flat vector, got shape (2, 353)" in one_line(err)
