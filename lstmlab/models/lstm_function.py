"""One direction of one LSTM layer, forward and backward through time derived by hand.

:func:`lstm_direction_manual` computes exactly what the autograd loop in
:mod:`lstmlab.models.hand_lstm` computes, but as one :class:`torch.autograd.Function` over the
whole sequence whose backward pass is written out step by step. Gate order is i, f, g, o, as in
``torch.nn.LSTM``. With a_t the gate pre-activations (B, 4H) of step t:

    a_t = W_ih x_t + b_ih + b_hh + W_hh h_{t-1}
    i_t, f_t, g_t, o_t = σ(a_i), σ(a_f), tanh(a_g), σ(a_o)
    c_t = f_t ⊙ c_{t-1} + i_t ⊙ g_t
    h_t = o_t ⊙ tanh(c_t)

With a mask, a step where mask[b, t] is False leaves row b's (h, c) unchanged and outputs 0.

How it is organised:

* Inside, everything is stored time-major, (T, B, ·), so each step reads and writes contiguous
  (B, ·) slices of preallocated buffers, and all steps' rows line up as one (T*B, ·) matrix for
  the products taken over the whole sequence. Inputs and outputs stay batch-first.
* Everything a gate's gradient needs besides the running ∂L/∂h_t and ∂L/∂c_t is known once the
  forward pass is over, so it is computed for all steps at once: the local factors
  ∂c_t/∂a_{i,f,g} and ∂h_t/∂a_o, and ∂h_t/∂c_t. They are written into the (T, B, 4H) buffer that
  then becomes ∂L/∂a: each step multiplies its slice in place by ∂L/∂c_t (gates i, f, g, which
  are adjacent) or by ∂L/∂h_t (gate o). That leaves four elementwise operations per step.
* A mask is folded into those factors: the factors of padded steps are zero (no gate gradient)
  and their "forget gate" is 1, so ∂L/∂c passes through them unchanged; ∂L/∂h passes through
  them by a separate term.
* The weight, bias and input gradients are sums over all steps, so they are taken once at the
  end as single matrix products over the T*B rows of ∂L/∂a.
* Speed on CPU: large float32 products go through oneDNN (see "matrix products" below), and for
  large tensors tanh is taken as 2σ(2x) − 1, σ being several times cheaper than tanh in ATen.
"""

from __future__ import annotations

import threading

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

__all__ = ["LSTMDirection", "lstm_direction_manual"]

_TANH_VIA_SIGMOID_MIN_ELEMENTS = 4096  # B*H from which tanh as 2σ(2x) − 1 is faster on CPU
_WORKSPACE_MAX_BYTES = 256 << 20  # the largest backward buffer kept between calls (per thread)
_workspace = threading.local()

# Fused elementwise derivatives from ATen (CPU and CUDA): given an upstream tensor u and a
# function's output y, sigmoid_backward gives u ⊙ y(1 − y) and tanh_backward gives u ⊙ (1 − y²).
_sigmoid_backward = torch.ops.aten.sigmoid_backward
_tanh_backward = torch.ops.aten.tanh_backward


def lstm_direction_manual(
    x: Tensor,
    h0: Tensor,
    c0: Tensor,
    w_ih: Tensor,
    w_hh: Tensor,
    b_ih: Tensor | None,
    b_hh: Tensor | None,
    mask: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Run one LSTM direction over a batch-first sequence with a hand-written backward pass.

    x (B, T, I); h0, c0 (B, H); w_ih (4H, I); w_hh (4H, H); b_ih, b_hh (4H,) or None (no bias);
    mask (B, T) bool or None. Returns out (B, T, H), h_T (B, H), c_T (B, H).
    """
    _check_shapes(x, h0, c0, w_ih, w_hh, mask)
    return LSTMDirection.apply(x, h0, c0, w_ih, w_hh, b_ih, b_hh, mask)


class LSTMDirection(torch.autograd.Function):
    """Autograd Function for :func:`lstm_direction_manual` (same arguments, same results)."""

    @staticmethod
    def forward(ctx, x, h0, c0, w_ih, w_hh, b_ih, b_hh, mask):
        batch, steps, features = x.shape
        x_rows = x.transpose(0, 1).reshape(steps * batch, features)  # time-major rows (T*B, I)
        tanh_via_sigmoid = _tanh_via_sigmoid_pays(x, batch * w_hh.shape[1])
        fw_ih, fw_hh, bias = _forward_weights(w_ih, w_hh, b_ih, b_hh, double_g_rows=tanh_via_sigmoid)
        gates = _matmul_t(x_rows, fw_ih, bias).view(steps, batch, -1)  # W_ih x_t + b for all t at once
        h_prev, c_prev, cand, tanh_c, h_last, c_last = _state_buffers(gates, h0, c0)
        valid = None if mask is None else mask.t().unsqueeze(2)  # (T, B, 1)
        states = h_prev, c_prev, cand, tanh_c, h_last, c_last
        h_new = _run_forward(gates, *states, fw_hh, valid, tanh_via_sigmoid)
        out = _batch_first_outputs(h_prev, h_last, h_new, valid)
        ctx.save_for_backward(x_rows, w_ih, w_hh, gates, cand, c_prev, tanh_c, h_prev, valid)
        return out, h_last, c_last

    @staticmethod
    @once_differentiable
    def backward(ctx, d_out, d_h_last, d_c_last):
        x_rows, w_ih, w_hh, acts, cand, c_prev, tanh_c, h_prev, valid = ctx.saved_tensors
        need_x, need_h0, need_c0, need_w_ih, need_w_hh, need_b_ih, need_b_hh, _ = ctx.needs_input_grad
        d_out = d_out.transpose(0, 1)  # time-major view (T, B, H)
        d_gates, dh_dc, forget = _local_derivatives(acts, cand, c_prev, tanh_c)
        keep = None
        if valid is not None:
            d_out, forget, keep = _fold_mask(valid, d_out, d_gates, dh_dc, forget)
        d_h0, d_c0 = _run_backward(d_gates, dh_dc, forget, keep, d_out, d_h_last, d_c_last, w_hh, need_h0)

        d_rows = d_gates.view(-1, d_gates.shape[2])  # ∂L/∂a for all T*B rows, (T*B, 4H)
        steps, batch, _ = acts.shape
        d_x = None
        if need_x:  # ∂L/∂x_t = ∂L/∂a_t W_ih
            d_x = _matmul_t(d_rows, w_ih.t().contiguous()).view(steps, batch, -1).transpose(0, 1)
        h_rows = h_prev.view(-1, h_prev.shape[2])
        # ∂L/∂W_ih = Σ_t ∂L/∂a_tᵀ x_t,  ∂L/∂W_hh = Σ_t ∂L/∂a_tᵀ h_{t-1},  ∂L/∂b_ih = ∂L/∂b_hh = Σ_t ∂L/∂a_t
        d_w_ih = _sum_of_outer_products(d_rows, x_rows) if need_w_ih else None
        d_w_hh = _sum_of_outer_products(d_rows, h_rows) if need_w_hh else None
        d_bias = d_rows.sum(0) if need_b_ih or need_b_hh else None
        d_b_ih = d_bias if need_b_ih else None
        d_b_hh = d_bias if need_b_hh else None
        return d_x, d_h0, d_c0 if need_c0 else None, d_w_ih, d_w_hh, d_b_ih, d_b_hh, None


# ----------------------------------------------------------------------------------- forward


def _tanh_via_sigmoid_pays(x: Tensor, step_elements: int) -> bool:
    """Whether to take tanh as 2σ(2x) − 1: on CPU, once a step's (B, H) tensors are large enough."""
    return x.device.type == "cpu" and step_elements >= _TANH_VIA_SIGMOID_MIN_ELEMENTS


def _forward_weights(w_ih, w_hh, b_ih, b_hh, double_g_rows: bool):
    """(W_ih, W_hh, b_ih + b_hh) as the forward pass uses them.

    With double_g_rows, copies whose g rows are doubled: the pre-activations then hold 2a_g, and
    one σ call over all four gates gives σ(2a_g), from which tanh(a_g) = 2σ(2a_g) − 1.
    """
    bias = _combined_bias(b_ih, b_hh)
    if not double_g_rows:
        return w_ih, w_hh, bias
    return tuple(None if t is None else _with_g_rows_doubled(t) for t in (w_ih, w_hh, bias))


def _combined_bias(b_ih: Tensor | None, b_hh: Tensor | None) -> Tensor | None:
    """b_ih + b_hh, or whichever is given, or None."""
    if b_ih is None or b_hh is None:
        return b_hh if b_ih is None else b_ih
    return b_ih + b_hh


def _with_g_rows_doubled(t: Tensor) -> Tensor:
    hidden = t.shape[0] // 4
    t = t.clone()
    t[2 * hidden : 3 * hidden] *= 2
    return t


def _state_buffers(gates: Tensor, h0: Tensor, c0: Tensor):
    """Preallocated time-major storage for t = 1..T: h_{t-1}, c_{t-1}, g_t, tanh(c_t); then h_T, c_T."""
    steps, batch, four_h = gates.shape
    hidden = four_h // 4
    h_prev, c_prev, cand, tanh_c = (gates.new_empty(steps, batch, hidden) for _ in range(4))
    h_prev[0] = h0
    c_prev[0] = c0
    return h_prev, c_prev, cand, tanh_c, gates.new_empty(batch, hidden), gates.new_empty(batch, hidden)


def _run_forward(gates, h_prev, c_prev, cand, tanh_c, h_last, c_last, w_hh, valid, tanh_via_sigmoid: bool):
    """The recurrence. On entry gates holds W_ih x_t + b; on exit (i, f, ·, o) per step.

    Fills h_prev, c_prev, cand (g_t), tanh_c, h_last, c_last in place. g_t goes to its own
    buffer so that one σ call covers the whole row of gates (its g slot is left unused). With a
    mask (valid, (T, B, 1)) it returns the steps' unmasked outputs h̃_t (T, B, H), else None (the
    outputs are the states). With tanh_via_sigmoid (the g rows of gates and w_hh doubled, see
    _forward_weights) every tanh is taken as tanh(x) = 2σ(2x) − 1: on CPU ATen's σ costs several
    times less per element than its tanh, which pays off once a step's tensors are large enough
    to outweigh the extra calls.
    """
    hidden = h_prev.shape[2]
    a = gates.unbind(0)  # per-step (B, 4H) views into the preallocated buffers
    i, f, a_g, o = (gates[..., k * hidden : (k + 1) * hidden].unbind(0) for k in range(4))
    h, c, g, tc = h_prev.unbind(0), c_prev.unbind(0), cand.unbind(0), tanh_c.unbind(0)
    h_next, c_next = h[1:] + (h_last,), c[1:] + (c_last,)  # where step t writes h_t and c_t
    h_new = None
    if valid is not None:
        h_new = torch.empty_like(h_prev)
        h_tilde, valid = h_new.unbind(0), valid.unbind(0)
    add_recurrent_term = _accumulating_matmul_t(h[0], w_hh, steps=len(a))
    for t in range(len(a)):
        add_recurrent_term(a[t], h[t])  # a_t = W_ih x_t + b + W_hh h_{t-1}
        if tanh_via_sigmoid:  # the g rows hold 2a_g
            a[t].sigmoid_()  # i_t, f_t, o_t = σ(a_i), σ(a_f), σ(a_o)
            torch.mul(a_g[t], 2, out=g[t]).sub_(1)  # g_t = tanh(a_g) = 2σ(2a_g) − 1
        else:
            torch.tanh(a_g[t], out=g[t])  # g_t = tanh(a_g)
            a[t].sigmoid_()  # i_t, f_t, o_t = σ(a_i), σ(a_f), σ(a_o)
        torch.mul(f[t], c[t], out=c_next[t])  # c_t = f_t ⊙ c_{t-1}
        c_next[t].addcmul_(i[t], g[t])  #           + i_t ⊙ g_t
        if tanh_via_sigmoid:
            torch.mul(c_next[t], 2, out=tc[t]).sigmoid_().mul_(2).sub_(1)  # tanh(c_t) = 2σ(2c_t) − 1
        else:
            torch.tanh(c_next[t], out=tc[t])  # tanh(c_t)
        if valid is None:
            torch.mul(o[t], tc[t], out=h_next[t])  # h_t = o_t ⊙ tanh(c_t)
        else:
            torch.mul(o[t], tc[t], out=h_tilde[t])  # h̃_t = o_t ⊙ tanh(c̃_t), the step's output
            torch.where(valid[t], c_next[t], c[t], out=c_next[t])  # padded rows keep c_{t-1}
            torch.where(valid[t], h_tilde[t], h[t], out=h_next[t])  # and h_{t-1}
    return h_new


def _batch_first_outputs(h_prev: Tensor, h_last: Tensor, h_new: Tensor | None, valid: Tensor | None):
    """out (B, T, H): h_t (the stored h_{t-1} shifted by a step, then h_T), or with a mask h̃_t ⊙ mask."""
    steps, batch, hidden = h_prev.shape
    out = h_prev.new_empty(batch, steps, hidden)
    if valid is not None:
        return torch.mul(h_new.transpose(0, 1), valid.transpose(0, 1), out=out)  # padded steps output 0
    out[:, :-1] = h_prev[1:].transpose(0, 1)
    out[:, -1] = h_last
    return out


# ---------------------------------------------------------------------------------- backward


def _local_derivatives(acts: Tensor, g: Tensor, c_prev: Tensor, tanh_c: Tensor):
    """Derivatives that only need forward values, for all steps at once (T, B, ·).

    Returns the (T, B, 4H) buffer that the backward loop turns into ∂L/∂a in place, holding for
    now (∂c_t/∂a_i, ∂c_t/∂a_f, ∂c_t/∂a_g, ∂h_t/∂a_o); ∂h_t/∂c_t (T, B, H); and f_t (T, B, H).
    """
    i, f, _, o = acts.chunk(4, 2)
    local = _gradient_buffer(acts)
    d_i, d_f, d_g, d_o = local.chunk(4, 2)
    _sigmoid_backward.grad_input(g, i, grad_input=d_i)  # ∂c_t/∂a_i = g_t ⊙ σ'(a_i), σ' = σ(1−σ)
    _sigmoid_backward.grad_input(c_prev, f, grad_input=d_f)  # ∂c_t/∂a_f = c_{t-1} ⊙ f_t(1−f_t)
    _tanh_backward.grad_input(i, g, grad_input=d_g)  # ∂c_t/∂a_g = i_t ⊙ tanh'(a_g), tanh' = 1−tanh²
    _sigmoid_backward.grad_input(tanh_c, o, grad_input=d_o)  # ∂h_t/∂a_o = tanh(c_t) ⊙ o_t(1−o_t)
    dh_dc = _tanh_backward(o, tanh_c)  # ∂h_t/∂c_t = o_t ⊙ (1 − tanh²(c_t))
    return local, dh_dc, f


def _gradient_buffer(like: Tensor) -> Tensor:
    """An uninitialised tensor shaped like `like`, for the backward pass's ∂L/∂a.

    On CPU each thread reuses one buffer from call to call: glibc hands allocations over 32 MB
    straight back to the system, so a fresh one pays its page faults every time (about a tenth
    of the whole step at B=64, T=200, H=256). Nothing backward returns is a view of it.
    """
    if like.device.type != "cpu" or like.numel() * like.element_size() > _WORKSPACE_MAX_BYTES:
        return torch.empty_like(like)
    buffer = getattr(_workspace, "buffer", None)
    if buffer is None or buffer.dtype != like.dtype or buffer.numel() < like.numel():
        buffer = _workspace.buffer = torch.empty(like.numel(), dtype=like.dtype)
    return buffer[: like.numel()].view(like.shape)


def _fold_mask(valid: Tensor, d_out: Tensor, local: Tensor, dh_dc: Tensor, forget: Tensor):
    """Make padded steps pass the state's gradient through untouched (all tensors time-major).

    A padded step has no gate gradient (its factors become 0), passes ∂L/∂c_t on as is (its
    forget gate becomes 1) and ignores its output's gradient. Returns the masked ∂L/∂out, the
    effective forget gates and keep = 1 − mask (T, B, 1), the share of ∂L/∂h_t that skips the step.
    """
    valid_f = valid.to(local.dtype)
    local.mul_(valid_f)
    dh_dc.mul_(valid_f)
    forget = torch.where(valid, forget, 1.0)
    return d_out * valid_f, forget, 1.0 - valid_f


def _run_backward(d_gates, dh_dc, forget, keep, d_out, d_h_last, d_c_last, w_hh, need_h0):
    """Walk the sequence from T down to 1, turning d_gates into ∂L/∂a_t in place.

    Returns (∂L/∂h_0, ∂L/∂c_0); ∂L/∂h_0 is None unless need_h0.
    """
    hidden = dh_dc.shape[2]
    d_a = d_gates.unbind(0)  # per-step (B, 4H) views
    d_ifg = d_gates[..., : 3 * hidden].unflatten(2, (3, hidden)).unbind(0)  # (B, 3, H): i, f, g
    d_o = d_gates[..., 3 * hidden :].unbind(0)
    dh_dc, forget, d_out = dh_dc.unbind(0), forget.unbind(0), d_out.unbind(0)
    keep = keep.unbind(0) if keep is not None else None
    back_through_w_hh = _adding_matmul(d_a[0], w_hh, steps=len(d_a))

    d_h = d_out[-1] + d_h_last  # ∂L/∂h_T, through the last output and through the returned h_T
    d_c = d_c_last.clone(memory_format=torch.contiguous_format)  # ∂L/∂c_T
    d_c_each_gate = d_c.unsqueeze(1)  # (B, 1, H) view, broadcast over i, f, g
    for t in reversed(range(len(d_a))):
        d_o[t].mul_(d_h)  # ∂L/∂a_o = ∂L/∂h_t ⊙ tanh(c_t) ⊙ σ'(a_o)
        d_c.addcmul_(d_h, dh_dc[t])  # ∂L/∂c_t += ∂L/∂h_t ⊙ o_t ⊙ (1 − tanh²(c_t))
        d_ifg[t].mul_(d_c_each_gate)  # ∂L/∂a_i,f,g = ∂L/∂c_t ⊙ (g_t σ'(a_i), c_{t-1} σ'(a_f), i_t tanh'(a_g))
        d_c.mul_(forget[t])  # ∂L/∂c_{t-1} = ∂L/∂c_t ⊙ f_t
        if t == 0 and not need_h0:
            return None, d_c
        d_h_before = d_out[t - 1] if t > 0 else None  # ∂L/∂out_{t-1}: h_{t-1} is also an output
        if keep is not None:  # a padded row passes ∂L/∂h_t straight on to h_{t-1}
            d_h_before = d_h * keep[t] if t == 0 else torch.addcmul(d_h_before, d_h, keep[t])
        d_h = back_through_w_hh(d_a[t], d_h_before)  # ∂L/∂h_{t-1} = ∂L/∂out_{t-1} + ∂L/∂a_t W_hh
    return d_h, d_c


# --------------------------------------------------------------------------- matrix products
# On CPU torch.mm calls MKL, whose float32 GEMM runs its AVX2 code on AMD CPUs: about half the
# speed of oneDNN, which torch.nn.LSTM itself uses on CPU. So float32 CPU products large enough
# to repay oneDNN's call overhead (about 15 µs) go through oneDNN's inner product, with the
# per-step weight reordered once into oneDNN's blocked layout. Everything else (float64, CUDA,
# small products, a torch built without oneDNN) goes through torch.mm / addmm.


def _find_onednn_ops():
    """(linear, reorder_weight) from torch.ops.mkldnn, or (None, None) where unavailable."""
    if not torch.backends.mkldnn.is_available():
        return None, None
    try:
        return torch.ops.mkldnn._linear_pointwise.default, torch.ops.mkldnn._reorder_linear_weight.default
    except (AttributeError, RuntimeError):
        return None, None


_ONEDNN_LINEAR, _ONEDNN_REORDER_WEIGHT = _find_onednn_ops()

_ONEDNN_MIN_MACS = 1 << 20  # below about a million multiply-adds MKL's lower overhead wins
_MIN_STEPS_TO_REORDER = 8  # reordering costs about one step's product; it saves 10-40% of each


def _use_onednn(a: Tensor, rows: int, inner: int, cols: int) -> bool:
    """Whether a (rows, inner) @ (inner, cols) product of a's dtype and device goes to oneDNN."""
    return (
        _ONEDNN_LINEAR is not None
        and a.device.type == "cpu"
        and a.dtype == torch.float32
        and rows * inner * cols >= _ONEDNN_MIN_MACS
    )


def _onednn_matmul_t(a: Tensor, w: Tensor, bias: Tensor | None = None) -> Tensor:
    return _ONEDNN_LINEAR(a, w, bias, "none", [], "")


def _onednn_step_weight(w: Tensor, batch: int, steps: int) -> Tensor:
    """w (n, k) for a product repeated every step: reordered once when there are enough steps."""
    w = w.contiguous()
    return _ONEDNN_REORDER_WEIGHT(w, batch) if steps >= _MIN_STEPS_TO_REORDER else w


def _matmul_t(a: Tensor, w: Tensor, bias: Tensor | None = None) -> Tensor:
    """a @ wᵀ (+ bias) for a (rows, k) and w (n, k), as a new (rows, n) tensor."""
    if _use_onednn(a, a.shape[0], w.shape[1], w.shape[0]):
        return _onednn_matmul_t(a, w, bias)
    return torch.mm(a, w.t()) if bias is None else torch.addmm(bias, a, w.t())


def _sum_of_outer_products(d_rows: Tensor, rows: Tensor) -> Tensor:
    """Σ_r d_rows[r]ᵀ rows[r]: (n, k) from d_rows (R, n) and rows (R, k), the weight gradient.

    Computed as (rowsᵀ d_rows)ᵀ, which both oneDNN and MKL do faster for these shapes.
    """
    if _use_onednn(rows, rows.shape[1], rows.shape[0], d_rows.shape[1]):
        return _onednn_matmul_t(rows.t().contiguous(), d_rows.t()).t()
    return rows.t().mm(d_rows).t()


def _accumulating_matmul_t(h0: Tensor, w: Tensor, steps: int):
    """The forward step's product: a function (out, h) doing out += h @ wᵀ in place."""
    batch = h0.shape[0]
    if _use_onednn(h0, batch, w.shape[1], w.shape[0]):
        w = _onednn_step_weight(w, batch, steps)
        return lambda out, h: out.add_(_onednn_matmul_t(h, w))
    w_t = w.t()
    return lambda out, h: out.addmm_(h, w_t)


def _adding_matmul(d_a0: Tensor, w: Tensor, steps: int):
    """The backward step's product: a function (d_a, other) returning other + d_a @ w, a new tensor.

    other may be None (nothing to add).
    """
    batch = d_a0.shape[0]
    if _use_onednn(d_a0, batch, w.shape[0], w.shape[1]):
        w_t = _onednn_step_weight(w.t(), batch, steps)  # oneDNN takes the (n, k) operand

        def onednn_step(d_a: Tensor, other: Tensor | None) -> Tensor:
            product = _onednn_matmul_t(d_a, w_t)
            return product if other is None else product.add_(other)

        return onednn_step
    return lambda d_a, other: torch.mm(d_a, w) if other is None else torch.addmm(other, d_a, w)


# ------------------------------------------------------------------------------------ checks


def _check_shapes(x, h0, c0, w_ih, w_hh, mask) -> None:
    if x.dim() != 3 or x.shape[1] < 1:
        raise ValueError(f"x: expected (batch, steps >= 1, features), got {tuple(x.shape)}")
    batch, steps, features = x.shape
    four_h, hidden = w_hh.shape
    if four_h != 4 * hidden or w_ih.shape != (four_h, features):
        raise ValueError(
            f"weights: expected w_ih (4H, {features}) and w_hh (4H, H), "
            f"got {tuple(w_ih.shape)} and {tuple(w_hh.shape)}"
        )
    if h0.shape != (batch, hidden) or c0.shape != (batch, hidden):
        raise ValueError(f"h0, c0: expected ({batch}, {hidden}), got {tuple(h0.shape)}, {tuple(c0.shape)}")
    if mask is not None and (mask.dtype != torch.bool or mask.shape != (batch, steps)):
        raise ValueError(f"mask: expected bool ({batch}, {steps}), got {mask.dtype} {tuple(mask.shape)}")
