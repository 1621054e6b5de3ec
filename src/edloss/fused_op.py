"""``edloss::fused_loss``: EDLLoss's loss and closed-form logit gradient as one registered operator.

``torch.library.custom_op`` with a registered autograd formula and a fake kernel, so
``torch.compile``, ``torch.export`` and CUDA graphs see one node whose backward is the closed form
(a multiply by the saved gradient) instead of tracing ~100 autograd ops. The network enters as a
tensor: its folded weights packed in one flat vector (a custom op takes no ``nn.Module``), with the
architecture (a short string), the scale and the reduction as non-tensor arguments.

Eager calls run the same kernel and the same backward formula through ``_EagerFusedLoss``, an
``autograd.Function``, instead of through the dispatcher: dispatching a Python custom op (its
argument parsing and pytree handling) was measured at ~80 us a forward + backward on this CPU,
most of a 512 x 10 cross-entropy call. A test checks that both give the same numbers.

The kernel is ``fused.closed_form_math``, eager by default. ``use_compiled_kernel(True)`` (or
``EDLLOSS_COMPILED_KERNEL=1`` in the environment) runs it compiled by inductor (C++ on CPU, Triton
on CUDA) for up to ``KERNEL_MAX_CLASSES`` classes, compiled lazily on first use per architecture
(seconds; a second batch size recompiles once, for any size); where compiling fails (no C++
compiler, no Triton) the eager kernel is used and the reason recorded in ``KERNEL_FALLBACKS``.
It is opt-in because that first-call compile would land on every short script and test run.
Nothing is compiled at import.
"""

from __future__ import annotations

import math
import os
import types
import warnings
from collections.abc import Callable
from functools import lru_cache
from typing import Any

import torch
from torch import Tensor

from edloss.checks import _check_finite, _check_logits_finite
from edloss.fused import basis_of, closed_form_math, differentiable_grad, fold, plan_for
from edloss.lossnet import LossNet, LossNetConfig

OP = "edloss::fused_loss"
KERNEL_FALLBACKS: dict[str, str] = {}  # architecture spec -> why its compiled kernel is not used
# (architecture spec, with gradient) -> (class count, dtype, device type) -> its compiled kernel
_compiled_kernels: dict[tuple[str, bool], dict[tuple[Any, ...], Callable[..., Any]]] = {}
TRUTHY, FALSY = ("1", "true", "yes", "on"), ("", "0", "false", "no", "off")
KERNEL_ENV = "EDLOSS_COMPILED_KERNEL"


def env_flag(name: str) -> bool:
    """An on/off environment variable in its usual spellings (any case); anything else is refused,
    so a typo never leaves a setting silently off."""
    value = os.environ.get(name, "").strip().lower()
    if value in TRUTHY or value in FALSY:
        return value in TRUTHY
    raise ValueError(f"{name}={os.environ[name]!r} is neither on ({', '.join(TRUTHY)}) nor off ({', '.join(v for v in FALSY if v)}, "
                     "or unset); set one of those")


def _kernel_env() -> bool:
    """``EDLOSS_COMPILED_KERNEL``; the name with a doubled L (as docs once spelt it) is named, not ignored."""
    if "EDLLOSS_COMPILED_KERNEL" in os.environ and KERNEL_ENV not in os.environ:
        warnings.warn(f"EDLLOSS_COMPILED_KERNEL is set, but edloss reads {KERNEL_ENV} (one L after 'ED'); rename it", stacklevel=3)
    return env_flag(KERNEL_ENV)


_use_compiled = _kernel_env()


# ---------------------------------------------------------------------- the network as tensors
def spec_of(config: LossNetConfig) -> str:
    """The architecture as the operator's string argument: "features|hidden|activation|form|noise rate".
    Plain string operations, so a tracer folds it to a constant (``json`` would break the graph)."""
    hidden = ",".join([str(h) for h in config.hidden])
    return "|".join([",".join(config.features), hidden, config.activation, config.form, repr(float(config.noise_rate))])


@lru_cache(maxsize=64)
def config_of(spec: str) -> LossNetConfig:
    features, hidden, activation, form, rate = spec.split("|")
    return LossNetConfig(features=tuple(features.split(",")), hidden=tuple(int(h) for h in hidden.split(",") if h),
                         activation=activation, form=form, noise_rate=float(rate))


def plan_shapes(config: LossNetConfig) -> tuple[tuple[int, ...], ...]:
    """Shapes of ``fused.fold``'s parts: (nb, H1), (H1,), (H1,), then (out, in), (out,) per later layer."""
    return _plan_shapes(config) if torch.compiler.is_compiling() else _cached_plan_shapes(config)


def _plan_shapes(config: LossNetConfig) -> tuple[tuple[int, ...], ...]:
    (_, first), *later = config.layer_sizes
    shapes: list[tuple[int, ...]] = [(len(basis_of(config)), first), (first,), (first,)]
    for fan_in, fan_out in later:
        shapes += [(fan_out, fan_in), (fan_out,)]
    return tuple(shapes)


_cached_plan_shapes = lru_cache(maxsize=64)(_plan_shapes)


def pack(parts: list[Tensor]) -> Tensor:
    """The plan as one flat vector: the operator's weight argument."""
    return torch.cat([p.reshape(-1) for p in parts])


def unpack(packed: Tensor, config: LossNetConfig) -> list[Tensor]:
    """Views of the packed vector in the plan's shapes."""
    parts, start = [], 0
    for shape in plan_shapes(config):
        size = math.prod(shape)
        parts.append(packed[start : start + size].view(shape))
        start += size
    if start != packed.shape[0]:
        raise ValueError(f"the packed loss network has {packed.shape[0]} numbers; its architecture needs {start}")
    return parts


def packed_plan(net: LossNet, dtype: torch.dtype, device: torch.device) -> Tensor:
    """The packed plan, cached on the network beside ``plan_for``'s (rebuilt when a parameter changes)."""
    parts = plan_for(net, dtype, device)
    cached = net.__dict__.get("_fused_packed")
    if cached is None or cached[0] is not parts:
        cached = net.__dict__["_fused_packed"] = (parts, pack(parts))
    return cached[1]


# ---------------------------------------------------------------------- the kernel
def use_compiled_kernel(enabled: bool = True) -> None:
    """Run the operator's kernel compiled by inductor (compiled lazily, per architecture, on first
    use; a failure falls back to the eager kernel and is recorded in ``KERNEL_FALLBACKS``)."""
    global _use_compiled
    if not isinstance(enabled, bool):
        raise TypeError(f"use_compiled_kernel takes True or False, got {enabled!r}")
    _use_compiled = enabled


# Measured (one CPU thread, the kernel alone): the compiled kernel takes ~0.5x the eager one's time
# at 512 x 10, ~0.7-0.85x at 256 x 100 and 2048 x 128, 1.04x at 512 x 300 and 1.3x at 512 x 1000,
# where aten's softmax and max over long rows beat inductor's loops. So it serves K <= 128 only.
KERNEL_MAX_CLASSES = 128
KERNELS_PER_ARCHITECTURE = 8  # compiled kernels (class counts x dtypes x devices x with/without gradient) per loss network
_said: set[tuple[str, str]] = set()


def _say_once(key: str, message: str) -> None:
    """One warning per architecture and message, where dynamo would repeat its own on every call."""
    if (key, message) not in _said:
        _said.add((key, message))
        warnings.warn(message, stacklevel=5)


def _compiled(spec: str, with_grad: bool, classes: int, asked: bool = False, x: Tensor | None = None) -> Callable[..., Any] | None:
    """The inductor-compiled kernel for one architecture, or None (not asked for, too many classes,
    or it failed). ``asked``: by the caller (a torch.compile'd graph), beside ``use_compiled_kernel``.
    One compiled function per class count, dtype and device type (the kernel specialises on each):
    otherwise alternating float32 / float64 or K = 10 / 100 calls recompile one function until
    dynamo's recompile limit, whose warning floods the log before the fallback."""
    if not (_use_compiled or asked) or classes > KERNEL_MAX_CLASSES or spec in KERNEL_FALLBACKS:
        return None
    kernels = _compiled_kernels.setdefault((spec, with_grad), {})
    key = (classes,) if x is None else (classes, x.dtype, x.device.type)
    if key not in kernels:
        if sum(len(v) for k, v in _compiled_kernels.items() if k[0] == spec) >= KERNELS_PER_ARCHITECTURE:
            _say_once(spec, f"edloss: the compiled loss kernel is compiled per class count, dtype and device, and this loss has "
                            f"{KERNELS_PER_ARCHITECTURE} already; new combinations run the eager kernel (the same numbers, slower)")
            return None
        config = config_of(spec)

        def kernel(x: Tensor, target: Tensor, packed: Tensor, scale: float) -> tuple[Any, ...]:
            return closed_form_math(x, target, unpack(packed, config), scale, config, with_grad)

        index = sum(len(v) for v in _compiled_kernels.values())
        kernels[key] = torch.compile(_own_code(kernel, index), fullgraph=True, dynamic=None)
    return kernels[key]


def _own_code(fn: Callable[..., Any], index: int) -> Callable[..., Any]:
    """``fn`` with a code object of its own: dynamo caches compiled graphs per code object, so every
    closure of one ``def`` (each architecture, dtype and device) would share one recompile limit."""
    code = fn.__code__.replace(co_name=f"edloss_kernel_{index}")
    return types.FunctionType(code, fn.__globals__, code.co_name, fn.__defaults__, fn.__closure__)


def _fall_back(spec: str, err: Exception) -> None:
    """Record why the compiled kernel is no longer used for this architecture and say so once, in
    edloss's words (a silent fallback would leave a user timing the wrong kernel)."""
    message = str(err).strip().splitlines()[0] if str(err).strip() else ""
    KERNEL_FALLBACKS[spec] = f"{type(err).__name__}: {message}"[:500]
    _say_once(spec, f"edloss: the compiled loss kernel failed ({KERNEL_FALLBACKS[spec][:200]}); from now on this loss runs its "
                    "eager kernel, which gives the same numbers, only slower (edloss.fused_op.KERNEL_FALLBACKS says why)")


def run_kernel(x: Tensor, target: Tensor, packed: Tensor, parts: list[Tensor] | None, scale: float, spec: str,
               with_grad: bool, compile_kernel: bool = False) -> tuple[Any, ...]:
    """``closed_form_math``, compiled where asked for and possible, else eager (on ``parts``, the
    packed plan's views, where the caller has them cached)."""
    compiled = _compiled(spec, with_grad, x.shape[1], compile_kernel, x)
    if compiled is not None:
        try:
            return compiled(x, target, packed, scale)
        except Exception as err:  # noqa: BLE001 - no compiler, no Triton, an inductor bug: the eager kernel is exact
            _fall_back(spec, err)
    config = config_of(spec)
    return closed_form_math(x, target, unpack(packed, config) if parts is None else parts, scale, config, with_grad)


# ---------------------------------------------------------------------- checks at run time
def check_at_run_time(x: Tensor, target: Tensor, ignore_index: int | None) -> None:
    """The label-range and finiteness checks with EDLLoss's messages, where values are readable:
    inside the operator, when a compiled graph runs it (at trace time there are no values)."""
    k = x.shape[1]
    kept = target if ignore_index is None else target[target != ignore_index]
    if kept.numel():
        lo, hi = torch.aminmax(kept)
        lo, hi = int(lo), int(hi)
        if lo < 0 or hi >= k:
            raise ValueError(f"target labels must lie in [0, {k}) (or equal ignore_index={ignore_index}), found values in [{lo}, {hi}]")
    _check_logits_finite(x)


# ---------------------------------------------------------------------- the operator
@torch.library.custom_op(OP, mutates_args=())
def fused_loss(x: Tensor, target: Tensor, plan: Tensor, scale: float, spec: str, reduce: bool, with_grad: bool,
               check_target: Tensor | None, ignore_index: int | None, compile_kernel: bool = False) -> tuple[Tensor, Tensor, Tensor]:
    """(loss per row (M,) or its sum (), d loss / d x (M, C) (empty without ``with_grad``), log p_y (M,)).

    ``check_target``: the targets as given (ignored ones included), validated here at run time.
    ``compile_kernel``: run the inductor-compiled kernel (where it serves: ``KERNEL_MAX_CLASSES``)."""
    checking = check_target is not None and not (x.is_cuda and torch.cuda.is_current_stream_capturing())  # no syncs in a CUDA graph
    if checking:
        check_at_run_time(x, check_target, ignore_index)
    loss, grad, logp_y = run_kernel(x, target, plan, None, scale, spec, with_grad, compile_kernel)
    if checking:  # a -inf target logit: an infinite loss, named as in eager
        _check_finite(x, logp_y if ignore_index is None else torch.where(check_target != ignore_index, logp_y, 0.0))
    # contiguous, as the fake kernel promises: the kernel may hand back a column of a wider tensor
    # (stride 2), which a dynamic-shape graph checks against the fake strides and refuses
    return (loss.sum() if reduce else loss.contiguous()), (grad.contiguous() if with_grad else x.new_empty(0)), logp_y.contiguous()


@fused_loss.register_fake
def _(x: Tensor, target: Tensor, plan: Tensor, scale: float, spec: str, reduce: bool, with_grad: bool,
      check_target: Tensor | None, ignore_index: int | None, compile_kernel: bool = False) -> tuple[Tensor, Tensor, Tensor]:
    loss = x.new_empty(()) if reduce else x.new_empty(x.shape[0])
    return loss, (torch.empty_like(x) if with_grad else x.new_empty(0)), x.new_empty(x.shape[0])


def _setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, Tensor, Tensor]) -> None:
    x, target, plan, scale, spec, reduce, *_ = inputs
    ctx.save_for_backward(output[1], x, target, plan)
    ctx.scale, ctx.spec, ctx.reduce = scale, spec, reduce
    ctx.mark_non_differentiable(output[1], output[2])


def backward_formula(grad: Tensor, x: Tensor, target: Tensor, plan: Tensor, scale: float, spec: str, reduce: bool,
                     grad_loss: Tensor) -> Tensor:
    """d / dx of sum(grad_loss * loss): the saved closed-form gradient times the incoming one, or,
    under ``create_graph=True``, the same folded function differentiated by autograd."""
    rows = grad_loss.expand(x.shape[0]) if reduce else grad_loss
    if torch.is_grad_enabled():  # the gradient must itself be differentiable
        return differentiable_grad(x, target, unpack(plan, config_of(spec)), scale, config_of(spec), rows)
    return grad * (grad_loss if reduce else grad_loss[:, None])


def _backward(ctx: Any, grad_loss: Tensor, _grad: Tensor, _logp_y: Tensor) -> tuple[Tensor | None, ...]:
    grad, x, target, plan = ctx.saved_tensors
    return backward_formula(grad, x, target, plan, ctx.scale, ctx.spec, ctx.reduce, grad_loss), *([None] * 9)


fused_loss.register_autograd(_backward, setup_context=_setup_context)


class _EagerFusedLoss(torch.autograd.Function):
    """The operator's kernel and backward formula without the dispatcher (see the module docstring)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, target: Tensor, plan: Tensor, parts: list[Tensor], scale: float, spec: str,
                reduce: bool) -> tuple[Tensor, Tensor]:
        loss, grad, logp_y = run_kernel(x, target, plan, parts, scale, spec, True)
        ctx.save_for_backward(grad, x, target, plan)
        ctx.scale, ctx.spec, ctx.reduce = scale, spec, reduce
        ctx.mark_non_differentiable(logp_y)
        return (loss.sum() if reduce else loss), logp_y

    @staticmethod
    def backward(ctx: Any, grad_loss: Tensor, _grad_logp_y: Tensor) -> tuple[Tensor | None, ...]:
        grad, x, target, plan = ctx.saved_tensors
        if ctx.reduce and not torch.is_grad_enabled() and grad_loss.device.type == "cpu" and float(grad_loss) == 1.0:
            # loss.backward(): no multiplication, but a copy: the saved tensor must not be handed out, or an
            # in-place change to the returned gradient (a hook, g.zero_()) would corrupt a retained second backward
            return grad.clone(), None, None, None, None, None, None
        return backward_formula(grad, x, target, plan, ctx.scale, ctx.spec, ctx.reduce, grad_loss), None, None, None, None, None, None


# ---------------------------------------------------------------------- what EDLLoss calls
def _spec_cached(net: LossNet) -> str:
    """The architecture string, computed once per network outside any trace: under
    ``torch.compile(dynamic=True)`` a float in the config may be symbolic, and formatting it in the
    graph (``repr``) is unsupported, where reading a cached string is a constant."""
    spec = net.__dict__.get("_fused_spec")
    if spec is None:
        spec = net.__dict__["_fused_spec"] = spec_of(net.config)
    return spec


def fused_losses(x: Tensor, target: Tensor, net: LossNet, scale: float, reduce: bool,
                 check_target: Tensor | None = None, ignore_index: int | None = None) -> tuple[Tensor, Tensor]:
    """(sum over rows of scale * l(p, y), or the rows (M,)) with the closed-form gradient attached, and log p_y (M,).

    Under ``torch.compile`` this is one ``edloss::fused_loss`` node (``check_target`` is then
    validated inside it, at run time) whose kernel is compiled too (who compiles expects seconds
    of compiling; not under ``torch.export``, whose program may run anywhere); in eager the same
    kernel runs directly."""
    if torch.compiler.is_compiling():  # traced ops fold the network: no tensor cache can be read here
        plan = pack(fold(net.effective(x.dtype), net.config))
        spec = getattr(net, "_fused_spec", None) or spec_of(net.config)  # EDLLoss caches it at construction
        loss, _, logp_y = torch.ops.edloss.fused_loss(x, target, plan, scale, spec, reduce, x.requires_grad,
                                                      check_target, ignore_index, not torch.compiler.is_exporting())
        return loss, logp_y
    spec, packed = _spec_cached(net), packed_plan(net, x.dtype, x.device)
    parts = plan_for(net, x.dtype, x.device)
    if not x.requires_grad:
        with torch.no_grad():
            loss, _, logp_y = run_kernel(x, target, packed, parts, scale, spec, False)
        return (loss.sum() if reduce else loss), logp_y
    return _EagerFusedLoss.apply(x, target, packed, parts, scale, spec, reduce)
