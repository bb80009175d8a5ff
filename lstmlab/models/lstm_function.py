"""One direction of one LSTM layer, forward and backward through time derived by hand.

:func:`lstm_direction_manual` computes exactly what the autograd loop in
:mod:`lstmlab.models.hand_lstm` computes, but as one :class:`torch.autograd.Function` over the
whole sequence whose backward pass is written out step by step. Gate order is i, f, g, o, as in
``torch.nn.LSTM``. With a_t the gate pre-activations (B, 4H) of step t:

    a_t = W_ih x_t + b_ih + b_hh + W_hh h_{t-1}
    i_t, f_t, g_t, o_t = σ(a_i), σ(a_f), tanh(a_g), σ(a_o)
    c_t = f_t ⊙ c_{t-1} + i_t ⊙ g_t
    h_t = o_t ⊙ tanh(c_t)

With lengths (sorted longest first), step t runs only the first n_t rows, the sequences longer
than t; a sequence's state after its last step is its final state, and its later steps output 0.

How it is organised:

* Inside, a sequence is its "rows", step after step: step t's n_t rows (B each without
  lengths, as a PackedSequence lays out its data; see :class:`RunningRows`). Each step reads and
  writes contiguous (n_t, ·) slices of preallocated (R, ·) buffers, and all steps' rows line up
  as one (R, ·) matrix for the products taken over the whole sequence. Inputs and outputs stay
  batch-first (B, T, ·).
* Everything a gate's gradient needs besides the running ∂L/∂h_t and ∂L/∂c_t is known once the
  forward pass is over, so the Python loops compute it for many steps at once (the C++ loops
  fold it into their one loop over each step's numbers): the local factors
  ∂c_t/∂a_{i,f,g} and ∂h_t/∂a_o (one σ' call over all four gates, as one σ call gave them
  forward), and ∂h_t/∂c_t. They are written into the (R, 4H) buffer that then becomes ∂L/∂a:
  each step multiplies its slice in place by ∂L/∂c_t (gates i, f, g, which are adjacent) or by
  ∂L/∂h_t (gate o). That leaves four elementwise operations per step. The local factors are
  taken a block of steps at a time, just before the walk back reaches the block
  (:class:`LocalDerivativesAhead`), so that its steps find them still in cache.
* Walking back, the rows of the sequences that ended at step t join in there, carrying the
  gradients of their final states ∂L/∂h_T, ∂L/∂c_T.
* The weight, bias and input gradients are sums over all steps, so they are taken once at the
  end as single matrix products over the R rows of ∂L/∂a. The buffers of h_t and −2c_t start
  with h_0 and −2c_0, so that when every sequence runs every step the h_{t-1} and c_{t-1} of
  all rows are one block of them rather than pieces to be joined.
* Few calls per step, since at small sizes each call's fixed cost is what a step costs (and at
  large ones the calls over a step's (B, H) tensors run on one thread): one σ call gives all four
  gates (g_t = tanh(a_g) = 2σ(2a_g) − 1 from doubled g rows), and i_t ⊙ g_t goes into c_t
  without forming g_t. The cell state is kept as −2c_t, so that tanh(c_t) = 1 − 2σ(−2c_t) is
  one σ call and h_t = o_t − 2 o_t ⊙ σ(−2c_t) one more (σ also costs ATen several times less per
  element than tanh); −2c_t is exactly c_t scaled, and the backward pass turns it back into
  c_{t-1} and tanh(c_t) for many rows at once.
* W_ih x_t + b is taken a block of steps at a time, just ahead of the steps that read it
  (:class:`~lstmlab.models.matmul.ProjectionAhead`), while it is still in cache.
* The two loops, forward and back, run under ``torch.inference_mode``: their many small calls
  and views then skip autograd's bookkeeping (version counters, records of views), which is a
  few percent of a pass at small sizes. Everything they leave behind was made outside them,
  except ∂L/∂h_0 and ∂L/∂c_0, which are copied out: a gradient must not be an inference tensor.
* On the CPU, when every row runs every step, the two loops run in C++ (``step_loops.cpp``: the
  same equations and products, ATen's σ, the rest as plain loops, no Python between the calls;
  the rounding may differ in the last bit), since at small sizes a step's dozen calls from
  Python cost several times its work, and at large ones still a few percent. There the
  backward loop takes each row's local derivatives as it goes, rather than in blocks ahead of
  it; see :func:`loops_in_cpp` and :mod:`lstmlab.models.step_loops`.
* Speed on CPU: large float32 products go through oneDNN (see :mod:`lstmlab.models.matmul`); and
  the large buffers (what the forward pass saves besides h, from 1 MB; the
  backward pass's temporaries) are reused from call to call (:mod:`lstmlab.models.scratch`).
"""

from __future__ import annotations

from types import ModuleType

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from . import step_loops
from .matmul import ProjectionAhead, StepWeight, matmul_t, row_starts, steps_per_block, sum_of_outer_products
from .scratch import Lease, borrow, scratch
from .variable_length import RunningRows

__all__ = ["LSTMDirection", "lstm_direction_manual"]

FORWARD_BUFFERS_MIN_BYTES = 1 << 20  # from this size the forward pass's saved buffers are reused

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
    lengths: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Run one LSTM direction over a batch-first sequence with a hand-written backward pass.

    x (B, T, I); h0, c0 (B, H); w_ih (4H, I); w_hh (4H, H); b_ih, b_hh (4H,) or None (no bias);
    lengths (B,) sorted longest first, or None (or the :class:`RunningRows` made of them).
    Returns out (B, T, H), h_T (B, H), c_T (B, H).
    """
    _check_shapes(x, h0, c0, w_ih, w_hh)
    if torch.is_autocast_enabled(x.device.type):
        # autocast cannot reach into the Function, whose buffers and products are of one dtype:
        # it runs in the weights' (the casts of x, h0 and c0 pass their gradients back)
        with torch.autocast(x.device.type, enabled=False):
            x, h0, c0 = (t.to(w_ih.dtype) for t in (x, h0, c0))
            return lstm_direction_manual(x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths)
    return LSTMDirection.apply(x, h0, c0, w_ih, w_hh, b_ih, b_hh, RunningRows.of(x, lengths))


class LSTMDirection(torch.autograd.Function):
    """The Function under :func:`lstm_direction_manual`: the same arguments, but with lengths
    as a :class:`RunningRows`."""

    @staticmethod
    def forward(ctx, x, h0, c0, w_ih, w_hh, b_ih, b_hh, running):
        x_rows = running.rows(x)  # (R, I), step after step
        fw_ih, fw_hh, bias = forward_weights(w_ih, w_hh, b_ih, b_hh)  # g rows doubled
        # the gates (R, 4H), and h_t and −2c_t of every row after h_0 and −2c_0, (B + R, H) each,
        # so that the h_{t-1} of every row, which the backward pass multiplies by ∂L/∂a, is one
        # block when all rows run; σ(−2c_t) (R, H)
        gates, m_all, sig_m = _forward_buffers(ctx, x_rows, h0, fw_ih.shape[0])
        h_all = _rows_after(h0, gates.shape[0])
        h, (m0, m) = h_all[h0.shape[0] :], m_all.split_with_sizes((c0.shape[0], gates.shape[0]))
        torch.mul(c0, -2, out=m0)  # −2c_0
        ctx.loops = loops_in_cpp(x_rows, h0, running)
        with torch.inference_mode():  # the loop writes only into the buffers above (see the module docstring)
            if ctx.loops is None:
                projection = ProjectionAhead(x_rows, fw_ih, bias, running.sizes)  # W_ih x_t + b, a block of steps at a time
                _run_forward(projection, gates, h, m, sig_m, h0, m0, fw_hh, running)
            else:
                _run_forward_in_cpp(ctx.loops, x_rows, fw_ih, bias, fw_hh, gates, h, m, sig_m, h_all[: h0.shape[0]], m0, running)
        h_last, c_last = _final_states(h, m, h0, c0, running)
        ctx.running = running
        ctx.save_for_backward(x_rows, w_ih, w_hh, gates, m_all, sig_m, h_all)
        return running.padded(h), h_last, c_last

    @staticmethod
    @once_differentiable
    def backward(ctx, d_out, d_h_last, d_c_last):
        x_rows, w_ih, w_hh, acts, m_all, sig_m, h_all = ctx.saved_tensors
        need_x, need_h0, need_c0, need_w_ih, need_w_hh, need_b_ih, need_b_hh, _ = ctx.needs_input_grad
        running = ctx.running
        if ctx.loops is None:
            local = LocalDerivativesAhead(acts, m_all, sig_m, running)  # taken as the walk back comes
            d_out_steps = running.per_step_of_padded(d_out)  # ∂L/∂out_t, (n_t, H) each
            d_rows = local.d_gates  # to become ∂L/∂a for all R rows, (R, 4H)
        else:
            d_rows = scratch("d_gates", acts.shape, acts)
            back = StepWeight(w_hh.t(), running.batch, steps=len(running.sizes))  # ∂L/∂a_t W_hh
        with torch.inference_mode():  # the walk back writes into d_rows (and local's buffers), and makes d_h0, d_c0
            if ctx.loops is None:
                d_h0, d_c0 = _run_backward(local, d_out_steps, d_h_last, d_c_last, w_hh, running, need_h0)
            else:
                args = (d_rows, acts, sig_m, m_all, d_out, d_h_last, d_c_last, back.w, back.onednn, running.reverse, need_h0)
                d_h0, d_c0 = ctx.loops.run_backward(*args)
        d_h0 = d_h0.clone() if need_h0 else None  # normal tensors, not inference ones
        d_c0 = d_c0.clone() if need_c0 else None

        d_x = running.padded(matmul_t(d_rows, w_ih.t())) if need_x else None  # ∂L/∂x_t = ∂L/∂a_t W_ih
        # ∂L/∂W_ih = Σ_t ∂L/∂a_tᵀ x_t,  ∂L/∂W_hh = Σ_t ∂L/∂a_tᵀ h_{t-1},  ∂L/∂b_ih = ∂L/∂b_hh = Σ_t ∂L/∂a_t
        d_w_ih = sum_of_outer_products(d_rows, x_rows) if need_w_ih else None
        d_w_hh = sum_of_outer_products(d_rows, running.previous_blocks(h_all)) if need_w_hh else None
        d_bias = d_rows.sum(0) if need_b_ih or need_b_hh else None
        d_b_ih = d_bias if need_b_ih else None
        d_b_hh = d_bias if need_b_hh else None
        return d_x, d_h0, d_c0, d_w_ih, d_w_hh, d_b_ih, d_b_hh, None


# ----------------------------------------------------------------------------------- forward


def _forward_buffers(ctx, x_rows: Tensor, h0: Tensor, gate_rows: int) -> tuple[Tensor, Tensor, Tensor]:
    """Uninitialised buffers for what the forward pass saves besides h: the gates (R, 4H), −2c
    (B + R, H) and σ(−2c) (R, H). On the CPU, from FORWARD_BUFFERS_MIN_BYTES on, they are cut
    from one reused buffer (:mod:`~lstmlab.models.scratch`): fresh memory that size costs a page
    fault per 4 KB on every call. The backward pass reads them, so that buffer stays lent for as
    long as ctx (the graph node) lives. h is not among them: the output is a view of it."""
    rows, (batch, hidden) = x_rows.shape[0], h0.shape
    sizes = (rows * gate_rows, (batch + rows) * hidden, rows * hidden)
    if x_rows.device.type == "cpu" and sum(sizes) * x_rows.element_size() >= FORWARD_BUFFERS_MIN_BYTES:
        ctx.lease = Lease(borrow((sum(sizes),), x_rows))
        flat = ctx.lease.tensors[0]
    else:
        flat = x_rows.new_empty(sum(sizes))
    gates, m_all, sig_m = flat.split_with_sizes(sizes)
    return gates.view(rows, gate_rows), m_all.view(batch + rows, hidden), sig_m.view(rows, hidden)


def _rows_after(first: Tensor, rows: int) -> Tensor:
    """A (B + rows, H) buffer holding ``first`` (B, H) in its first B rows, the rest uninitialised."""
    buffer = first.new_empty(first.shape[0] + rows, first.shape[1])
    buffer[: first.shape[0]] = first
    return buffer


def forward_weights(w_ih, w_hh, b_ih, b_hh):
    """(W_ih, W_hh, b_ih + b_hh) as both forward passes (this one and the autograd loop's) use
    them, differentiably: copies whose g rows are doubled, so that the pre-activations hold 2a_g
    and one σ call over all four gates gives σ(2a_g), from which g_t = tanh(a_g) = 2σ(2a_g) − 1."""
    bias = _combined_bias(b_ih, b_hh)
    return tuple(None if t is None else _with_g_rows_doubled(t) for t in (w_ih, w_hh, bias))


def _combined_bias(b_ih: Tensor | None, b_hh: Tensor | None) -> Tensor | None:
    """b_ih + b_hh, or whichever is given, or None."""
    if b_ih is None or b_hh is None:
        return b_hh if b_ih is None else b_ih
    return b_ih + b_hh


_G_ROW_SCALES: dict[tuple, Tensor] = {}  # (rows, dims, dtype, device) -> 1 on rows i, f, o; 2 on rows g


def _with_g_rows_doubled(t: Tensor) -> Tensor:
    """A copy of a weight (4H, ·) or bias (4H,) with the rows of gate g (the third quarter)
    doubled, so that a σ over all four gates' pre-activations gives σ(2a_g) in the g slot.
    One multiplication: under autograd, its gradient is the upstream one with those rows doubled."""
    if torch.compiler.is_compiling():  # a traced graph makes its own
        return t * _g_row_scale(t)
    key = (t.shape[0], t.dim(), t.dtype, t.device)
    scale = _G_ROW_SCALES.get(key)
    if scale is None:
        with torch.inference_mode(False):  # kept: never an inference tensor, which autograd cannot save
            scale = _G_ROW_SCALES.setdefault(key, _g_row_scale(t))
    return t * scale


def _g_row_scale(t: Tensor) -> Tensor:
    """1 on the rows of gates i, f, o and 2 on those of g, shaped to multiply t (4H, ·) or (4H,)."""
    hidden = t.shape[0] // 4
    scale = torch.ones(t.shape[0], *[1] * (t.dim() - 1), dtype=t.dtype, device=t.device)
    scale[2 * hidden : 3 * hidden] = 2
    return scale


def _run_forward(projection, gates, h, m, sig_m, h0, m0, w_hh, running):
    """The recurrence. ``projection.at(t)`` gives W_ih x_t + b (2a_g in the g slot); on exit
    gates holds (i_t, f_t, σ(2a_g), o_t) per row.

    Fills the (R, H) buffers h (h_t), m (m_t = −2c_t) and sig_m (σ(m_t)) in place, from h_0 and
    m_0 = −2c_0. One σ call covers the whole row of gates: the g rows of gates and w_hh are
    doubled (see forward_weights), so the g slot gets σ(2a_g), and i_t ⊙ g_t = i_t ⊙ (2σ(2a_g) − 1)
    goes into c_t without g_t ever being formed (the backward pass forms it for many rows at
    once). tanh(c_t) is not formed either: with the cell state kept as m_t = −2c_t,
    tanh(c_t) = 1 − 2σ(m_t), so h_t = o_t − 2 o_t ⊙ σ(m_t) is one σ and one addcmul.
    """
    hidden, sizes = h0.shape[1], running.sizes
    a = running.per_step(gates)  # per-step (n_t, 4H) views into the preallocated buffers
    i, f, s, o = (running.per_step(gates[:, k * hidden : (k + 1) * hidden]) for k in range(4))
    h, m, sig_m = (running.per_step(buffer) for buffer in (h, m, sig_m))
    recurrent = StepWeight(w_hh, max(sizes, default=0), steps=len(sizes))
    h_prev, m_prev = h0, m0
    for t, n in enumerate(sizes):
        if n < h_prev.shape[0]:  # only the first n sequences are still running
            h_prev, m_prev = h_prev[:n], m_prev[:n]
        pre = recurrent.add_to(projection.at(t), h_prev)  # a_t = W_ih x_t + b + W_hh h_{t-1}
        torch.sigmoid(pre, out=a[t])  # i_t, f_t, o_t = σ(a_i), σ(a_f), σ(a_o); s_t = σ(2a_g)
        # c_t = f_t ⊙ c_{t-1} + i_t ⊙ g_t, with g_t = tanh(a_g) = 2s_t − 1, times −2:
        torch.mul(f[t], m_prev, out=m[t])  # m_t = f_t ⊙ m_{t-1} ...
        m[t].addcmul_(i[t], s[t], value=-4).add_(i[t], alpha=2)  # ... − 2 i_t ⊙ (2s_t − 1)
        torch.sigmoid(m[t], out=sig_m[t])  # σ(−2c_t), and tanh(c_t) = 1 − 2σ(−2c_t)
        torch.addcmul(o[t], o[t], sig_m[t], value=-2, out=h[t])  # h_t = o_t ⊙ tanh(c_t) = o_t − 2 o_t ⊙ σ(−2c_t)
        h_prev, m_prev = h[t], m[t]


def _run_forward_in_cpp(loops, x_rows, w_ih, bias, w_hh, gates, h, m, sig_m, h0, m0, running):
    """_run_forward's work by the C++ loops, with the same products: W_ih x_t + b a block of
    steps ahead (as ProjectionAhead takes it) and W_hh h_{t-1} at each step, each through oneDNN
    or ATen as :class:`~lstmlab.models.matmul.StepWeight` prepares its weight."""
    steps, projection = ProjectionAhead.blocks_of(x_rows, w_ih, running.sizes)
    recurrent = StepWeight(w_hh, h0.shape[0], steps=len(running.sizes))
    # x_rows is a view of x where it can be (e.g. a batch of one), with x's strides
    args = (x_rows.contiguous(), projection.w, projection.onednn, bias, recurrent.w, recurrent.onednn, steps)
    loops.run_forward(*args, gates, h, m, sig_m, h0, m0)


def loops_in_cpp(x_rows: Tensor, h0: Tensor, running: RunningRows) -> ModuleType | None:
    """The C++ loops (:mod:`~lstmlab.models.step_loops`) if they apply here, else None: on the
    CPU, in float32 or float64, when every row runs every step."""
    batch, hidden = h0.shape
    applies = (
        step_loops.wanted()
        and type(x_rows) is torch.Tensor  # not a subclass (fake tensors when tracing): the loops read the data
        and type(h0) is torch.Tensor
        and x_rows.device.type == "cpu"
        and x_rows.dtype in (torch.float32, torch.float64)
        and batch > 0
        and hidden > 0
        and running.every_row_runs
    )
    return step_loops.compiled() if applies else None


def _final_states(h: Tensor, m: Tensor, h0: Tensor, c0: Tensor, running: RunningRows):
    """(h_T, c_T) (B, H): each sequence's state after its last step (the initial one if it has
    none), from h and m = −2c."""
    batch = h0.shape[0]
    last = running.last_rows()
    if last is None:  # every sequence ran every step: the last step's rows
        return h[-batch:].clone(), m[-batch:] * -0.5
    sequences, rows = (index.to(h.device) for index in last)
    h_last, c_last = h0.clone(), c0.clone()
    h_last[sequences] = h[rows]
    c_last[sequences] = m[rows] * -0.5
    return h_last, c_last


# ---------------------------------------------------------------------------------- backward


LOCAL_BLOCK_BYTES = 2 << 20  # the local derivatives are taken this much (of ∂L/∂a) at a time


class LocalDerivativesAhead:
    """Derivatives that only need forward values, taken a block of steps at a time, each block
    just before the walk back reaches it, so that its steps find them still in the CPU's cache.

    acts holds (i_t, f_t, σ(2a_g), o_t) per row, m_all −2c_t after −2c_0, sig_m σ(−2c_t).
    ``reach(t)`` (t = T−1, T−2, ... in turn) fills, for the rows of t's block: ``d_gates``
    (R, 4H), the buffer that the backward loop turns into ∂L/∂a in place, holding for now
    (∂c_t/∂a_i, ∂c_t/∂a_f, ∂c_t/∂a_g, ∂h_t/∂a_o); and ``dh_dc``, ∂h_t/∂c_t (R, H). ``forget``
    is f_t (R, H).
    """

    def __init__(self, acts: Tensor, m_all: Tensor, sig_m: Tensor, running: RunningRows) -> None:
        self._acts, self._sig_m, hidden = acts, sig_m, sig_m.shape[1]
        self.d_gates = scratch("d_gates", acts.shape, acts)
        self.dh_dc = scratch("dh_dc", sig_m.shape, sig_m)
        self.forget = acts[:, hidden : 2 * hidden]
        self._m_prev = running.previous(m_all, out=scratch("previous", sig_m.shape, sig_m))  # −2c_{t-1} of each row
        self._steps = steps_per_block(running.sizes, acts.shape[1] * acts.element_size(), acts, LOCAL_BLOCK_BYTES)
        self._starts = row_starts(running.sizes)

    def reach(self, t: int) -> None:
        """Fill the rows of t's block if t is its last step (the first the walk back reaches)."""
        if t == len(self._starts) - 2 or (t + 1) % self._steps == 0:
            rows = slice(self._starts[t - t % self._steps], self._starts[t + 1])
            buffers = (self._acts, self._m_prev, self._sig_m, self.d_gates, self.dh_dc)
            _local_derivatives(*(buffer[rows] for buffer in buffers))


def _local_derivatives(acts: Tensor, m_prev: Tensor, sig_m: Tensor, local: Tensor, dh_dc: Tensor) -> None:
    """Fill local with (∂c_t/∂a_i, ∂c_t/∂a_f, ∂c_t/∂a_g, ∂h_t/∂a_o) and dh_dc with ∂h_t/∂c_t,
    for the given rows.

    Each gate's derivative is a factor times that gate's σ' = σ(1 − σ), so the factors go into
    local first and one σ' call over all four gates does the rest, as one σ call gave all four
    gates forward. For g, σ(2a_g) = s_t is what was kept: tanh'(a_g) = 1 − g_t² = 4 s_t(1 − s_t).
    """
    i, _, s, o = acts.chunk(4, 1)
    for_i, for_f, for_g, for_o = local.chunk(4, 1)  # the factors, then the derivatives
    torch.mul(s, 2, out=for_i).sub_(1)  # g_t = tanh(a_g) = 2σ(2a_g) − 1
    torch.mul(m_prev, -0.5, out=for_f)  # c_{t-1} = −½ (−2c_{t-1})
    torch.mul(i, 4, out=for_g)  # 4 i_t
    torch.mul(sig_m, -2, out=for_o).add_(1)  # tanh(c_t) = 1 − 2σ(−2c_t)
    _tanh_backward.grad_input(o, for_o, grad_input=dh_dc)  # ∂h_t/∂c_t = o_t ⊙ (1 − tanh²(c_t))
    # ∂c_t/∂a_i = g_t ⊙ σ'(a_i),  ∂c_t/∂a_f = c_{t-1} ⊙ σ'(a_f),
    # ∂c_t/∂a_g = i_t ⊙ tanh'(a_g) = 4 i_t ⊙ σ'(2a_g),  ∂h_t/∂a_o = tanh(c_t) ⊙ σ'(a_o):
    _sigmoid_backward.grad_input(local, acts, grad_input=local)


def _run_backward(local, d_out, d_h_last, d_c_last, w_hh, running, need_h0):
    """Walk the steps from the last down to the first, turning local.d_gates into ∂L/∂a_t in place.

    d_out: ∂L/∂out_t (n_t, H) for each step.
    Returns (∂L/∂h_0, ∂L/∂c_0), (B, H) each; ∂L/∂h_0 is None unless need_h0.
    """
    d_gates, dh_dc, forget = local.d_gates, local.dh_dc, local.forget
    hidden, sizes = dh_dc.shape[1], running.sizes
    d_a = running.per_step(d_gates)  # per-step (n_t, 4H) views
    d_ifg = running.per_step(d_gates[:, : 3 * hidden].view(d_gates.shape[0], 3, hidden))  # (n_t, 3, H): i, f, g
    d_o = running.per_step(d_gates[:, 3 * hidden :])
    dh_dc, forget = running.per_step(dh_dc), running.per_step(forget)
    back_through_w_hh = StepWeight(w_hh.t(), max(sizes, default=0), steps=len(sizes))  # products with W_hh

    n = sizes[-1] if sizes else 0  # the rows running at the last step: their final state is h_T, c_T
    d_h = d_out[-1] + d_h_last[:n] if sizes else d_h_last[:0]  # ∂L/∂h_T, via the last output and h_T
    d_c = d_c_last[:n].clone(memory_format=torch.contiguous_format)  # ∂L/∂c_T
    d_c_each_gate = d_c.unsqueeze(1)  # (n, 1, H) view, broadcast over i, f, g
    for t in reversed(range(len(sizes))):
        local.reach(t)
        d_o[t].mul_(d_h)  # ∂L/∂a_o = ∂L/∂h_t ⊙ tanh(c_t) ⊙ σ'(a_o)
        d_c.addcmul_(d_h, dh_dc[t])  # ∂L/∂c_t += ∂L/∂h_t ⊙ o_t ⊙ (1 − tanh²(c_t))
        d_ifg[t].mul_(d_c_each_gate)  # ∂L/∂a_i,f,g = ∂L/∂c_t ⊙ (g_t σ'(a_i), c_{t-1} σ'(a_f), i_t tanh'(a_g))
        d_c.mul_(forget[t])  # ∂L/∂c_{t-1} = ∂L/∂c_t ⊙ f_t
        if t == 0:
            d_h = back_through_w_hh.step(d_a[0]) if need_h0 else None  # ∂L/∂h_0 = ∂L/∂a W_hh of the first step
            break
        earlier = sizes[t - 1]
        if earlier == n:
            d_h = back_through_w_hh.step(d_a[t], d_out[t - 1])  # ∂L/∂h_{t-1} = ∂L/∂out_{t-1} + ∂L/∂a_t W_hh
        else:  # rows n.. ended at step t − 1: the gradients of their h_T, c_T join there
            d_h = back_through_w_hh.step(d_a[t], d_out[t - 1][:n])
            d_h = torch.cat([d_h, d_out[t - 1][n:] + d_h_last[n:earlier]])
            d_c = torch.cat([d_c, d_c_last[n:earlier]])
            d_c_each_gate, n = d_c.unsqueeze(1), earlier
    # sequences of length 0 never ran: their h_T, c_T are h_0, c_0
    if n < d_c_last.shape[0]:
        d_c = torch.cat([d_c, d_c_last[n:]])
        d_h = None if d_h is None else torch.cat([d_h, d_h_last[n:]])
    return d_h, d_c


# ------------------------------------------------------------------------------------ checks


def _check_shapes(x, h0, c0, w_ih, w_hh) -> None:
    if x.dim() != 3 or x.shape[1] < 1:
        raise ValueError(f"x: expected (batch, steps >= 1, features), got {tuple(x.shape)}")
    batch, _, features = x.shape
    four_h, hidden = w_hh.shape
    if four_h != 4 * hidden or w_ih.shape != (four_h, features):
        raise ValueError(
            f"weights: expected w_ih (4H, {features}) and w_hh (4H, H), "
            f"got {tuple(w_ih.shape)} and {tuple(w_hh.shape)}"
        )
    if h0.shape != (batch, hidden) or c0.shape != (batch, hidden):
        raise ValueError(f"h0, c0: expected ({batch}, {hidden}), got {tuple(h0.shape)}, {tuple(c0.shape)}")
