"""The registered operator ``edloss::fused_loss`` (issue 22) on every path, against the autograd reference.

Paths: eager (the operator's kernel through ``_EagerFusedLoss``), eager with the inductor-compiled
kernel, ``torch.compile`` (one operator node; ``aot_eager`` for most cases, inductor for some),
the operator called through the dispatcher, and ``torch.export``. Reference: ``fused=False``
(plain autograd through the network). Bad input gives the same errors on every path.
"""

from __future__ import annotations

import subprocess
import sys
import warnings

import pytest
import torch
from torch._dynamo.backends.registry import lookup_backend

from edloss import EDLLoss, fused_op
from edloss.lossnet import LossNet, LossNetConfig, init_scale

RTOL, ATOL = 1e-5, 1e-6  # values
GRTOL = 1e-4  # gradients: float32 rounding through the closed form


@pytest.fixture(autouse=True)
def fresh_state():
    """Each test starts with the eager kernel in eager mode, no recorded fallback and no dynamo
    cache (after 8 recompiles of one forward dynamo would silently fall back to eager and test
    nothing). Compiled kernels are kept: they are exact, and compiling each again costs seconds."""
    torch._dynamo.reset()
    fused_op.use_compiled_kernel(False)
    fused_op.KERNEL_FALLBACKS.clear()
    yield
    fused_op.use_compiled_kernel(False)
    fused_op.KERNEL_FALLBACKS.clear()
    torch._dynamo.reset()


def recording(backend: str = "aot_eager"):
    """A torch.compile backend that keeps every graph it compiles (to find the operator node)."""
    graphs: list[torch.fx.GraphModule] = []
    inner = lookup_backend(backend)

    def compile_fn(gm: torch.fx.GraphModule, inputs):
        graphs.append(gm)
        return inner(gm, inputs)

    return compile_fn, graphs


def has_op(graphs) -> bool:
    return any("edloss.fused_loss" in str(node.target) for gm in graphs for node in gm.graph.nodes)


def batch(shape: tuple[int, ...], seed: int = 0, soft: bool = False, ignored: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (spread, no ties) and class-index or probability targets; ``ignored`` targets set to -100."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g) * 3
    k = shape[1] if len(shape) > 1 else shape[0]
    if soft:
        return x, torch.softmax(torch.randn(shape, generator=g), dim=1 if len(shape) > 1 else 0)
    t = torch.randint(0, k, (shape[0], *shape[2:]) if len(shape) > 1 else (), generator=g)
    if ignored:
        t.view(-1)[:ignored] = -100
    return x, t


def value_and_grad(loss, x: torch.Tensor, t: torch.Tensor, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """The loss and d (w * loss).sum() / dx with a random upstream w (a non-uniform upstream gradient)."""
    z = x.clone().requires_grad_(True)
    out = loss(z, t)
    w = torch.rand(out.shape, generator=torch.Generator().manual_seed(seed)) + 0.5
    (grad,) = torch.autograd.grad((out * w).sum(), z)
    return out.detach(), grad


# (name, EDLLoss keyword arguments, logits shape, batch options)
CASES = [
    ("mean", {}, (64, 10), {}),
    ("sum", {"reduction": "sum"}, (64, 10), {}),
    ("none", {"reduction": "none"}, (64, 10), {}),
    ("weights", {"weight": torch.linspace(0.2, 2.0, 10)}, (64, 10), {}),
    ("weights-sum", {"weight": torch.linspace(0.2, 2.0, 10), "reduction": "sum"}, (64, 10), {}),
    ("ignore_index", {}, (64, 10), {"ignored": 7}),
    ("ignore-none", {"reduction": "none"}, (64, 10), {"ignored": 7}),
    ("soft", {}, (64, 10), {"soft": True}),
    ("N-d", {}, (4, 7, 3, 5), {}),
    ("N-d-none", {"reduction": "none"}, (4, 7, 3, 5), {"ignored": 3}),
    ("one-sample", {}, (12,), {}),
    ("label_smoothing", {"label_smoothing": 0.1}, (32, 10), {}),
    ("large-K", {}, (16, 1000), {}),
]


def check_against_reference(loss, name: str, kwargs: dict, shape, options: dict) -> None:
    x, t = batch(shape, **options)
    ref_value, ref_grad = value_and_grad(EDLLoss.pretrained(fused=False, **kwargs), x, t)
    value, grad = value_and_grad(loss, x, t)
    torch.testing.assert_close(value, ref_value, rtol=RTOL, atol=ATOL, msg=lambda m: f"{name}: values: {m}")
    torch.testing.assert_close(grad, ref_grad, rtol=GRTOL, atol=ATOL, msg=lambda m: f"{name}: gradients: {m}")


# ---------------------------------------------------------------------- every path against autograd
@pytest.mark.parametrize(("name", "kwargs", "shape", "options"), CASES, ids=[c[0] for c in CASES])
def test_eager_matches_autograd(name, kwargs, shape, options):
    check_against_reference(EDLLoss.pretrained(**kwargs), name, kwargs, shape, options)


@pytest.mark.parametrize(("name", "kwargs", "shape", "options"), CASES, ids=[c[0] for c in CASES])
def test_torch_compile_is_one_operator_node_and_matches_autograd(name, kwargs, shape, options):
    backend, graphs = recording()
    loss = torch.compile(EDLLoss.pretrained(**kwargs), backend=backend)
    check_against_reference(loss, name, kwargs, shape, options)
    assert graphs, "nothing was compiled"
    assert has_op(graphs) == (not options.get("soft")), "class-index targets take the operator; soft targets the autograd path"


@pytest.mark.parametrize("name", ["mean", "ignore-none", "N-d"])
def test_inductor_compile_matches_autograd(name):
    _, kwargs, shape, options = next(c for c in CASES if c[0] == name)
    check_against_reference(torch.compile(EDLLoss.pretrained(**kwargs)), name, kwargs, shape, options)


@pytest.mark.parametrize("form", ["monotone", "free", "corrected", "no-hidden"])
def test_compiled_kernel_matches_autograd_for_every_form(form):
    """The inductor-compiled CPU kernel (opt-in) for the shipped network and the other forms,
    including the older losses' entropy and rank features and a network without hidden layers."""
    cfg = {
        "monotone": LossNetConfig(),
        "free": LossNetConfig(form="free", features=("log_kpy", "margin", "entropy", "rank"), activation="softsign"),
        "corrected": LossNetConfig(form="corrected", noise_rate=0.3, activation="relu"),
        "no-hidden": LossNetConfig(form="free", features=("log_kpy", "log_krival"), hidden=()),
    }[form]
    net = LossNet.from_flat(torch.randn(cfg.num_params, generator=torch.Generator().manual_seed(3)) * init_scale(cfg), cfg)
    fused_op.use_compiled_kernel(True)
    for n in (24, 9):  # a second batch size: a dynamic-shape recompile, still exact
        x, t = batch((n, 10), seed=n)
        for reduction in ("mean", "none"):
            ref = value_and_grad(EDLLoss(net, scale=0.7, reduction=reduction, fused=False), x, t)
            got = value_and_grad(EDLLoss(net, scale=0.7, reduction=reduction), x, t)
            torch.testing.assert_close(got[0], ref[0], rtol=RTOL, atol=ATOL)
            torch.testing.assert_close(got[1], ref[1], rtol=GRTOL, atol=ATOL)
    with torch.no_grad():  # the kernel without the gradient
        torch.testing.assert_close(EDLLoss(net, scale=0.7)(x, t), EDLLoss(net, scale=0.7, fused=False)(x, t), rtol=RTOL, atol=ATOL)
    assert fused_op.KERNEL_FALLBACKS == {}
    assert (fused_op.spec_of(cfg), True) in fused_op._compiled_kernels


def test_torch_compile_compiles_the_operators_kernel_too(monkeypatch):
    monkeypatch.setattr(fused_op, "_compiled_kernels", {})
    check_against_reference(torch.compile(EDLLoss.pretrained(reduction="none")), "none", {"reduction": "none"}, (32, 10), {})
    assert fused_op.KERNEL_FALLBACKS == {} and fused_op._compiled_kernels, "the kernel inside the node was compiled"


def test_a_kernel_that_cannot_compile_falls_back_to_eager_and_says_why(monkeypatch):
    def no_compiler(fn, **_):
        def fails(*args):
            raise RuntimeError("Compiler: cc is not found.\nmore inductor detail")
        return fails

    monkeypatch.setattr(torch, "compile", no_compiler)
    monkeypatch.setattr(fused_op, "_compiled_kernels", {})
    fused_op.use_compiled_kernel(True)
    check_against_reference(EDLLoss.pretrained(), "mean", {}, (16, 10), {})
    spec = fused_op.spec_of(EDLLoss.pretrained().net.config)
    assert fused_op.KERNEL_FALLBACKS[spec] == "RuntimeError: Compiler: cc is not found."
    check_against_reference(EDLLoss.pretrained(), "mean", {}, (16, 10), {})  # not retried: still exact


def test_compiled_kernel_serves_few_classes_only(monkeypatch):
    """At K = 1000 the eager kernel was measured faster: the compiled one is not even built."""
    monkeypatch.setattr(fused_op, "_compiled_kernels", {})
    fused_op.use_compiled_kernel(True)
    spec = fused_op.spec_of(LossNetConfig())
    assert fused_op._compiled(spec, True, fused_op.KERNEL_MAX_CLASSES + 1) is None and not fused_op._compiled_kernels
    check_against_reference(EDLLoss.pretrained(), "large-K", {}, (16, 1000), {})
    check_against_reference(torch.compile(EDLLoss.pretrained(), backend="aot_eager"), "large-K", {}, (16, 1000), {})
    assert not fused_op._compiled_kernels


def test_use_compiled_kernel_takes_a_bool():
    with pytest.raises(TypeError, match="True or False"):
        fused_op.use_compiled_kernel("yes")


# ---------------------------------------------------------------------- the operator itself
def op_args(x: torch.Tensor, t: torch.Tensor, reduce: bool = False, check: bool = False):
    net = EDLLoss.pretrained().net
    plan = fused_op.packed_plan(net, x.dtype, x.device)
    return (x, t, plan, 0.75, fused_op.spec_of(net.config), reduce, True, t if check else None, -100 if check else None)


def test_operator_passes_torch_library_opcheck():
    x, t = batch((8, 10))
    for reduce in (False, True):
        torch.library.opcheck(torch.ops.edloss.fused_loss.default, op_args(x.requires_grad_(True), t, reduce))


@pytest.mark.parametrize("reduce", [False, True])
def test_dispatched_operator_and_eager_path_give_the_same_numbers(reduce):
    x, t = batch((32, 10))
    net = EDLLoss.pretrained().net
    a = x.clone().requires_grad_(True)
    loss, _, logp_y = torch.ops.edloss.fused_loss(*op_args(a, t, reduce))
    (ga,) = torch.autograd.grad(loss.sum(), a)
    b = x.clone().requires_grad_(True)
    eager, eager_logp_y = fused_op.fused_losses(b, t, net, 0.75, reduce)
    (gb,) = torch.autograd.grad(eager.sum(), b)
    assert torch.equal(loss, eager) and torch.equal(logp_y, eager_logp_y) and torch.equal(ga, gb)


def test_operator_double_backward_differentiates_the_same_function():
    """create_graph=True through the operator: its backward differentiates the folded function."""
    x, t = batch((6, 5))
    x = x.double()
    scale = 0.75
    ref = EDLLoss.pretrained(fused=False, reduction="sum")
    v = torch.randn(6, 5, dtype=torch.float64)
    z = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(ref(z, t) * scale / ref.scale, z, create_graph=True)
    (expected,) = torch.autograd.grad((g * v).sum(), z)
    z = x.clone().requires_grad_(True)
    net = EDLLoss.pretrained().net
    args = (z, t, fused_op.packed_plan(net, z.dtype, z.device), scale, fused_op.spec_of(net.config), True, True, None, None)
    (g,) = torch.autograd.grad(torch.ops.edloss.fused_loss(*args)[0], z, create_graph=True)
    (got,) = torch.autograd.grad((g * v).sum(), z)
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-12)


def test_export_sees_one_operator_node():
    class Model(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = torch.nn.Linear(6, 10)
            self.criterion = EDLLoss.pretrained()

        def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return self.criterion(self.body(x), y)

    model = Model()
    x, y = torch.randn(16, 6), torch.randint(0, 10, (16,))
    exported = torch.export.export(model, (x, y))
    modules = [exported.graph_module, *exported.graph_module.modules()]
    calls = [n for m in modules if isinstance(m, torch.fx.GraphModule) for n in m.graph.nodes if "edloss.fused_loss" in str(n.target)]
    assert len(calls) == 1
    node = calls[0]  # compile_kernel: the 10th argument, left out where it is its default (False)
    compile_kernel = node.args[9] if len(node.args) > 9 else node.kwargs.get("compile_kernel", False)
    assert compile_kernel is False, "an exported program runs the eager kernel: no compiling where it is deployed"
    torch.testing.assert_close(exported.module()(x, y), model(x, y))


def test_trainable_loss_keeps_the_autograd_path_under_compile():
    backend, graphs = recording()
    criterion = EDLLoss.pretrained(trainable=True)
    x, t = batch((16, 10))
    torch.compile(criterion, backend=backend)(x.requires_grad_(True), t).backward()
    assert graphs and not has_op(graphs)
    assert all(p.grad is not None for p in criterion.net.parameters())


def test_import_compiles_nothing():
    code = "import sys, edloss; print('torch._dynamo' in sys.modules, 'torch._inductor' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False"]


# ---------------------------------------------------------------------- bad input, every path
def _nan_logits():
    x, t = batch((8, 10))
    x[2, 3] = float("nan")
    return x, t


def _inf_logits():
    x, t = batch((8, 10))
    x[5, (int(t[5]) + 1) % 10] = float("inf")
    return x, t


def _masked_target():
    x, t = batch((8, 10))
    x[4, int(t[4])] = float("-inf")
    return x, t


BAD = [
    ("target shape", lambda: (torch.randn(8, 10), torch.zeros(7, dtype=torch.long)), {}, ValueError, "class-index target must have shape"),
    ("integer logits", lambda: (torch.zeros(8, 10, dtype=torch.long), torch.zeros(8, dtype=torch.long)), {}, TypeError, "must be a floating-point"),
    ("bool target", lambda: (torch.randn(8, 10), torch.zeros(8, dtype=torch.bool)), {}, TypeError, "class indices"),
    ("label too large", lambda: (torch.randn(8, 10), torch.tensor([0, 1, 2, 3, 4, 5, 6, 12])), {}, ValueError, r"found values in \[0, 12\]"),
    ("negative label", lambda: (torch.randn(8, 10), torch.tensor([0, 1, 2, 3, 4, 5, 6, -3])), {}, ValueError, r"found values in \[-3, 6\]"),
    ("label with ignored", lambda: (torch.randn(8, 10), torch.tensor([-100, 1, 2, 3, 4, 5, 6, 11])), {}, ValueError, r"found values in \[1, 11\]"),
    ("weight length", lambda: batch((8, 10)), {"weight": torch.ones(3)}, ValueError, "weight has 3 entries"),
    ("NaN logit", _nan_logits, {}, ValueError, r"NaN or Inf \(rows \[2\]"),
    ("+Inf logit", _inf_logits, {}, ValueError, r"NaN or Inf \(rows \[5\]"),
    ("-Inf target logit", _masked_target, {}, ValueError, r"NaN or Inf \(rows \[4\]"),
    ("NaN logit, none", _nan_logits, {"reduction": "none"}, ValueError, r"NaN or Inf \(rows \[2\]"),
]


@pytest.mark.parametrize("mode", ["eager", "compiled", "compiled-kernel"])
@pytest.mark.parametrize(("name", "make", "kwargs", "error", "match"), BAD, ids=[b[0] for b in BAD])
def test_bad_input_gives_the_same_error_on_every_path(mode, name, make, kwargs, error, match):
    loss = EDLLoss.pretrained(**kwargs)
    if mode == "compiled-kernel":
        fused_op.use_compiled_kernel(True)
    if mode == "compiled":
        loss = torch.compile(loss, backend="aot_eager")
    x, t = make()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(error, match=match):
            loss(x.requires_grad_(True) if x.is_floating_point() else x, t)


@pytest.mark.parametrize(("name", "make", "match"), [(b[0], b[1], b[4]) for b in BAD if b[0] in ("label too large", "NaN logit", "target shape")])
def test_inductor_compiled_errors_name_the_input_not_inductor(name, make, match):
    """Under the full inductor backend the error is ours (the label range, the rows), raised
    before tracing or inside the operator when the graph runs: no BackendCompilerFailed."""
    loss = torch.compile(EDLLoss.pretrained())
    x, t = make()
    with pytest.raises((ValueError, TypeError), match=match) as info:
        loss(x, t)
    assert "inductor" not in type(info.value).__module__ and "BackendCompilerFailed" not in type(info.value).__name__


def test_operator_checks_its_inputs_when_asked():
    x, t = batch((8, 10))
    t[3] = 10
    with pytest.raises(ValueError, match=r"must lie in \[0, 10\)"):
        torch.ops.edloss.fused_loss(*op_args(x, t, check=True))
    x, t = _nan_logits()
    with pytest.raises(ValueError, match=r"rows \[2\]"):
        torch.ops.edloss.fused_loss(*op_args(x, t, check=True))
