"""``x @ w.T (+ other)`` for the recurrent loops, through oneDNN on the CPU where it can.

torch.mm on the CPU goes to MKL, which on AMD processors takes its AVX2 path; nn.LSTM runs
oneDNN's kernels (AVX-512 where the CPU has it). Measured on an AMD EPYC (Zen 5), one thread:
a 32×512 by 512×2048 product took 0.73 ms through F.linear and 0.38 ms through oneDNN. So
float32 CPU tensors go through oneDNN's linear (``torch.ops.mkldnn._linear_pointwise``, the
op torch's own compiler uses) with a backward written here; anything else (float64, CUDA, a
torch without oneDNN, or if the probe at import fails) uses torch.addmm / F.linear.
The result is the same product; only the float32 rounding of the sums can differ.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _probe() -> bool:
    try:
        op = torch.ops.mkldnn._linear_pointwise
        x, w = torch.ones(2, 3), torch.ones(4, 3)
        return bool(torch.equal(op(x, w, None, "none", [], ""), torch.full((2, 4), 3.0))) and bool(
            torch.equal(op.binary(x, torch.ones(2, 4), w, None, "add"), torch.full((2, 4), 4.0))
        )
    except Exception:  # any torch without the op, or built without oneDNN
        return False


ONEDNN = torch.backends.mkldnn.is_available() and _probe()


def _dnn(x: Tensor, w: Tensor) -> Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, w, None, "none", [], "")


class _OneDnnLinear(torch.autograd.Function):
    """x (N, K) @ w (M, K).T + other (N, M) or None; w_t = w.T made contiguous once, no grad."""

    @staticmethod
    def forward(ctx, x, w, w_t, other):
        ctx.save_for_backward(x, w_t)
        ctx.has_other = other is not None
        if other is None:
            return _dnn(x, w)
        return torch.ops.mkldnn._linear_pointwise.binary(x, other, w, None, "add")

    @staticmethod
    def backward(ctx, grad):
        x, w_t = ctx.saved_tensors
        grad = grad.contiguous()
        grad_x = _dnn(grad, w_t) if ctx.needs_input_grad[0] else None  # dL/dx = grad @ w
        grad_w = _dnn(grad.t().contiguous(), x.t().contiguous()) if ctx.needs_input_grad[1] else None  # grad.T @ x
        return grad_x, grad_w, None, (grad if ctx.has_other else None)


MIN_MACS = 1 << 20  # below this, a Python-level Function's overhead (tens of µs) costs more than it saves


def use_onednn(x: Tensor, w: Tensor) -> bool:
    """float32 on the CPU, and a product big enough: x (N, K) @ w.T with N·w.numel() ≥ MIN_MACS."""
    return ONEDNN and x.device.type == "cpu" and x.dtype == torch.float32 and x.shape[0] * w.numel() >= MIN_MACS


def transposed(w: Tensor, rows: int) -> Tensor:
    """w.T for :func:`linear` with x of ``rows`` rows: contiguous for oneDNN's backward, else a view."""
    return w.detach().t().contiguous() if use_onednn(w.new_empty(rows, 0), w) else w.t()


def linear(x: Tensor, w: Tensor, w_t: Tensor, other: Tensor | None = None) -> Tensor:
    """other + x @ w.T for 2-D x (N, K); w_t from :func:`transposed`."""
    if x.dim() == 2 and use_onednn(x, w):
        return _OneDnnLinear.apply(x.contiguous(), w, w_t, None if other is None else other.contiguous())
    if other is None:
        return F.linear(x, w)
    return torch.addmm(other, x, w.t())


def project(x: Tensor, w: Tensor, bias: Tensor | None) -> Tensor:
    """x (B, T, I) @ w.T + bias for every step in one product: (B, T, out)."""
    batch, steps, _ = x.shape
    if not use_onednn(x.new_empty(batch * steps, 0), w):
        return F.linear(x, w, bias)
    out = linear(x.reshape(batch * steps, -1), w, transposed(w, batch * steps)).view(batch, steps, -1)
    return out if bias is None else out + bias
