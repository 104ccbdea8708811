"""Lean layers: the same forward values, fewer activations kept for backward (issue 15).

In fp32 autograd a Llama-style decoder layer keeps ~12.5k floats per token. Two element-wise blocks keep more than
their backward needs:

- RMSNorm keeps its input and its normalised input (two copies of the hidden state) for the chain pow -> mean ->
  rsqrt -> mul -> mul. :class:`RMSNormFunction` keeps the input and the [..., 1] inverse RMS and recomputes the
  rest in backward (one hidden state per norm saved).
- The SwiGLU MLP ``down(silu(gate(x)) * up(x))`` keeps gate, silu(gate), up and their product (four
  intermediate-size tensors). :class:`SwiGLUDownFunction` keeps gate and up and recomputes silu(gate) * up in
  backward (two saved); where ``down_proj`` is not a plain ``nn.Linear`` (LoRA, quantised) :class:`SwiGLUFunction`
  keeps gate and up, and ``down_proj`` keeps the product (three saved).

Measured on SmolLM2-135M (InSPO packed rows, batch 2, P=W=L=128): the policy's saved activations go from 1,899 to
1,278 MiB (-33%), ~8k floats per token and layer instead of ~12k, for a few element-wise ops in backward and no
extra matrix FLOPs.

Selection (:func:`use_lean_layers`): every module whose class is a norm or MLP of that shape is checked once per
class, dtype and device: on a small random input the lean forward must equal the module's own forward exactly and
its gradients must match autograd's (:func:`_agrees`). Then the module's class is swapped for a subclass of the same
name whose forward takes the lean path while autograd records (train steps) and the original forward otherwise
(generation, the reference, ``no_grad``). A class that fails the check (e.g. Gemma's ``1 + weight`` norm, an
MLP with another activation) keeps its forward, with one log line. ``model.lean_layers: false`` turns it off.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

log = logging.getLogger("inspo")

SILU_CLASSES = ("SiLU", "SiLUActivation")
"""Activation classes taken for SiLU (torch's, transformers'); the check against the module's forward decides."""


class RMSNormFunction(torch.autograd.Function):
    """``weight * (x * rsqrt(mean(x^2) + eps)).to(x.dtype)`` computed in fp32 as transformers' Llama-style RMSNorm;
    keeps x and the [..., 1] inverse RMS, recomputes the normalised input in backward."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, eps: float) -> Tensor:
        xf = x.to(torch.float32)
        rstd = torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
        ctx.save_for_backward(x, weight, rstd)
        return weight * (xf * rstd).to(x.dtype)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        x, weight, rstd = ctx.saved_tensors
        xf = x.to(torch.float32)
        normed = (xf * rstd).to(x.dtype)
        grad_weight = None
        if ctx.needs_input_grad[1]:
            grad_weight = (grad * normed).reshape(-1, weight.shape[-1]).sum(0).to(weight.dtype)
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_normed = (grad * weight).to(torch.float32)
            # d/dx of x * rstd(x), rstd = (mean(x^2) + eps)^-1/2: autograd's chain, summed in one expression.
            grad_rstd = (grad_normed * xf).sum(-1, keepdim=True)
            grad_x = grad_normed * rstd + xf * (grad_rstd * -0.5 * rstd.pow(3) * (2.0 / x.shape[-1]))
            grad_x = grad_x.to(x.dtype)
        return grad_x, grad_weight, None


class SwiGLUFunction(torch.autograd.Function):
    """``silu(gate) * up``, keeping gate and up only (not silu(gate))."""

    @staticmethod
    def forward(ctx: Any, gate: Tensor, up: Tensor) -> Tensor:
        ctx.save_for_backward(gate, up)
        return F.silu(gate) * up

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        gate, up = ctx.saved_tensors
        return _swiglu_backward(ctx, grad, gate, up, F.silu(gate))


class SwiGLUDownFunction(torch.autograd.Function):
    """``F.linear(silu(gate) * up, weight, bias)``, keeping gate and up only (not silu(gate) nor the product)."""

    @staticmethod
    def forward(ctx: Any, gate: Tensor, up: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        ctx.save_for_backward(gate, up, weight)
        ctx.has_bias = bias is not None
        out = F.linear(F.silu(gate) * up, weight, bias)
        ctx.compute_dtype = out.dtype  # under autocast (bf16-mixed) the product ran in bf16 with a cast weight
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        gate, up, weight = ctx.saved_tensors
        silu = F.silu(gate)
        product = silu * up if ctx.needs_input_grad[2] else None
        grad_product, grad_weight, grad_bias = linear_grads(
            ctx, grad, product, up.dtype, weight, (True, ctx.needs_input_grad[2], ctx.needs_input_grad[3]))
        grad_gate, grad_up = _swiglu_backward(ctx, grad_product, gate, up, silu)
        return grad_gate, grad_up, grad_weight, grad_bias


def linear_grads(ctx: Any, grad: Tensor, inp: Tensor | None, inp_dtype: torch.dtype, weight: Tensor,
                 needs: tuple[bool, bool, bool]) -> tuple[Tensor | None, ...]:
    """Gradients of ``F.linear(inp, weight, bias)`` for the (input, weight, bias) that ``needs`` asks for, as
    autograd under autocast returns them: the products in ``ctx.compute_dtype`` (the dtype the forward's product ran
    in: bf16 under bf16-mixed), each gradient in its input's dtype. ``inp`` is read only for the weight's gradient;
    ``ctx.has_bias`` says whether there is a bias."""
    grad = grad.to(ctx.compute_dtype)
    flat = grad.reshape(-1, grad.shape[-1])
    grad_inp = (grad @ weight.to(ctx.compute_dtype)).to(inp_dtype) if needs[0] else None
    grad_weight = None
    if needs[1]:
        grad_weight = (flat.t() @ inp.reshape(-1, inp.shape[-1]).to(ctx.compute_dtype)).to(weight.dtype)
    grad_bias = flat.sum(0).to(weight.dtype) if ctx.has_bias and needs[2] else None
    return grad_inp, grad_weight, grad_bias


def _swiglu_backward(ctx: Any, grad: Tensor, gate: Tensor, up: Tensor, silu: Tensor) -> tuple[Tensor | None, ...]:
    grad_gate = torch.ops.aten.silu_backward(grad * up, gate) if ctx.needs_input_grad[0] else None
    grad_up = grad * silu if ctx.needs_input_grad[1] else None
    return grad_gate, grad_up


def _recording() -> bool:
    return torch.is_grad_enabled() and not torch.is_inference_mode_enabled()


def _lean_norm_forward(self: nn.Module, x: Tensor) -> Tensor:
    if not _recording():
        return super(type(self), self).forward(x)
    return RMSNormFunction.apply(x, self.weight, self.variance_epsilon)


def _lean_mlp_forward(self: nn.Module, x: Tensor) -> Tensor:
    if not _recording():
        return super(type(self), self).forward(x)
    gate, up, down = self.gate_proj(x), self.up_proj(x), self.down_proj
    if type(down) is nn.Linear:  # exactly: a subclass (LoRA, quantised) may compute something else
        return SwiGLUDownFunction.apply(gate, up, down.weight, down.bias)
    return down(SwiGLUFunction.apply(gate, up))


def _kind(module: nn.Module) -> str | None:
    """``"norm"`` or ``"mlp"`` if the module has the shape of a Llama-style RMSNorm / SwiGLU MLP, else None."""
    if (type(module).__name__.endswith("RMSNorm") and isinstance(getattr(module, "weight", None), Tensor)
            and module.weight.dim() == 1 and isinstance(getattr(module, "variance_epsilon", None), float)):
        return "norm"
    if (all(isinstance(getattr(module, n, None), nn.Module) for n in ("gate_proj", "up_proj", "down_proj"))
            and type(getattr(module, "act_fn", None)).__name__ in SILU_CLASSES):
        return "mlp"
    return None


def _agrees(module: nn.Module, kind: str, forward: Any) -> bool:
    """Whether ``forward`` equals the module's own forward on a small random input (values exactly, gradients of
    the input and the parameters to 1e-5 relative in fp32, 1e-2 in lower precision)."""
    floating = [p for p in module.parameters() if p.is_floating_point()]
    if not floating or any(p.is_meta for p in module.parameters()):
        return False  # no weights to compare on yet
    params = [p for p in module.parameters() if p.requires_grad]
    dtype, device = floating[0].dtype, floating[0].device
    width = floating[0].shape[-1] if kind == "norm" else module.gate_proj.in_features
    generator = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(2, 3, width, dtype=dtype, device=device, generator=generator).requires_grad_()
    tolerance = 1e-5 if dtype == torch.float32 else 1e-2
    try:
        with torch.enable_grad():
            expected = type(module).forward(module, x)
            grad = torch.randn(expected.shape, dtype=dtype, device=device, generator=generator)
            want = torch.autograd.grad(expected, [x, *params], grad, allow_unused=True)
            got_value = forward(module, x)
            got = torch.autograd.grad(got_value, [x, *params], grad, allow_unused=True)
    except Exception as err:  # noqa: BLE001 (any failure means: keep the module's own forward)
        log.debug("lean layers: %s: %s", type(module).__name__, err)
        return False
    if not torch.equal(got_value, expected):
        return False
    return all((a is None) == (b is None) and (a is None or torch.allclose(a, b, rtol=tolerance, atol=tolerance))
               for a, b in zip(got, want))


_LEAN_CLASSES: dict[type, type] = {}


def _lean_class(cls: type, kind: str) -> type:
    if cls not in _LEAN_CLASSES:
        forward = _lean_norm_forward if kind == "norm" else _lean_mlp_forward
        _LEAN_CLASSES[cls] = type(cls.__name__, (cls,), {"forward": forward, "__module__": cls.__module__,
                                                         "__qualname__": cls.__qualname__, "_inspo_lean": True})
    return _LEAN_CLASSES[cls]


def use_lean_layers(model: nn.Module) -> list[str]:
    """Swap every norm and SwiGLU MLP of ``model`` whose lean forward is exact (:func:`_agrees`) for its lean
    subclass; returns the class names swapped. One log line says which classes were swapped and which kept."""
    verdicts: dict[tuple[type, torch.dtype, torch.device], bool] = {}
    swapped, kept = set(), set()
    for module in model.modules():
        kind = _kind(module)
        if kind is None or getattr(module, "_inspo_lean", False):
            continue
        cls, lean = type(module), _lean_class(type(module), kind)
        first = next(module.parameters())
        key = (cls, first.dtype, first.device)
        if key not in verdicts:
            verdicts[key] = _agrees(module, kind, lean.forward)
        if verdicts[key]:
            module.__class__ = lean
            swapped.add(cls.__name__)
        else:
            kept.add(cls.__name__)
    if swapped or kept:
        log.info("lean layers: %s%s", ", ".join(sorted(swapped)) or "none",
                 f" (kept their own forward: {', '.join(sorted(kept))})" if kept else "")
    return sorted(swapped)
