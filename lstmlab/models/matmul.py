"""The matrix products of the recurrent loops, made fast without hiding the equations.

Three things decide how fast a hand-written recurrent layer runs, all about its products:

* **Which GEMM.** On the CPU torch.mm calls MKL, whose float32 GEMM takes its AVX2 path on AMD
  processors; nn.LSTM runs oneDNN's kernels (AVX-512 where the CPU has it), 2-3× faster for a
  step's product here (``benchmarks/step_product_speed.py``). So float32 CPU products large
  enough to repay oneDNN's call overhead go through oneDNN's inner product
  (``torch.ops.mkldnn._linear_pointwise``, the op torch's own compiler emits), and a weight used
  at every step is reordered once into oneDNN's blocked layout. Anything else (float64, CUDA, small products, a torch without
  oneDNN) uses torch.mm / addmm. The products are the same; only float32 rounding can differ.
* **Where the recurrent weight's gradient is taken.** With a_t = W x_t + b + U h_{t-1},
  autograd left to itself takes three products per step (the forward one, ∂L/∂h_{t-1} and
  ∂L/∂U) and then adds up T weight-sized gradients. But ∂L/∂U = Σ_t ∂L/∂a_tᵀ h_{t-1}, and
  ∂L/∂a_t is exactly the gradient that reaches W x_t + b, a_t's other term. So
  :class:`RecurrentProducts` multiplies by U detached at each step (autograd then only takes
  ∂L/∂h_{t-1}) and lets the input projection's backward, which receives ∂L/∂a_t for all steps
  at once, take ∂L/∂U as one product over all the rows of the sequence, just as it takes ∂L/∂W.
* **Where a large result lands.** The input projection of a whole sequence can be tens of MB;
  a new tensor that size is memory glibc maps afresh on every call, a page fault per 4 KB
  (~12 ms of a ~140 ms step at the IMDB size). On oneDNN's route the loops take it a block of
  steps at a time instead, just ahead of the steps (:class:`ProjectionAhead`); elsewhere
  ``matmul_t(..., out=)`` writes it into a buffer that is reused (:func:`maps_afresh` says when).

Under ``torch.compile`` :class:`RecurrentProducts` is plain ops instead: the compiler then
differentiates the loop itself and fuses each step's elementwise work.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from .scratch import borrow, give_back, scratch


def _find_onednn_ops():
    """(linear, reorder_weight) from torch.ops.mkldnn if they work here, else (None, None)."""
    if not torch.backends.mkldnn.is_available():
        return None, None
    try:
        linear = torch.ops.mkldnn._linear_pointwise
        reorder = torch.ops.mkldnn._reorder_linear_weight.default
        x, w = torch.ones(2, 3), torch.ones(4, 3)
        if torch.equal(linear(x, reorder(w, 2), None, "none", [], ""), torch.full((2, 4), 3.0)):
            return linear, reorder
    except Exception:  # a torch without the ops, or built without oneDNN
        pass
    return None, None


_ONEDNN_LINEAR, _ONEDNN_REORDER_WEIGHT = _find_onednn_ops()
ONEDNN = _ONEDNN_LINEAR is not None

ONEDNN_MIN_MACS = 1 << 20  # below about a million multiply-adds MKL's lower call overhead wins
MIN_STEPS_TO_REORDER = 8  # reordering costs about one step's product; it saves 10-40% of each


def use_onednn(like: Tensor, rows: int, inner: int, cols: int) -> bool:
    """Whether a (rows, inner) @ (inner, cols) product of ``like``'s dtype and device goes to oneDNN."""
    return ONEDNN and like.device.type == "cpu" and like.dtype == torch.float32 and rows * inner * cols >= ONEDNN_MIN_MACS


def _onednn(a: Tensor, w: Tensor, bias: Tensor | None = None) -> Tensor:
    return _ONEDNN_LINEAR(a, w, bias, "none", [], "")


def _reordered(w: Tensor, rows: int) -> Tensor:
    """w in oneDNN's blocked layout for products with about ``rows`` rows. A transposed view
    (the backward pass's products with W) is first copied into a reused buffer: the op would
    copy it into fresh memory of its own on every call, paying a page fault per 4 KB."""
    if not w.is_contiguous():
        w = scratch("weight_to_reorder", w.shape, w).copy_(w)
    return _ONEDNN_REORDER_WEIGHT(w, rows)


ROWS_PER_CHUNK = 512  # oneDNN writing into a given buffer: this many rows per call
FRESH_MAPPING_BYTES = 32 << 20  # glibc maps allocations from this size afresh on every call


def matmul_t(a: Tensor, w: Tensor, bias: Tensor | None = None, out: Tensor | None = None) -> Tensor:
    """a @ wᵀ (+ bias) for a (rows, k) and w (n, k): a new (rows, n) tensor, or ``out``
    (contiguous) with the product written into it. No autograd.

    oneDNN's op only returns new tensors, so into ``out`` it goes in chunks of rows: each
    chunk's result is small enough to come from memory the allocator reuses, and is copied.
    """
    if use_onednn(a, a.shape[0], w.shape[1], w.shape[0]):
        a = a.contiguous()
        if out is None:  # one product: oneDNN lays w out for it itself (a transposed view too, uncopied)
            return _onednn(a, w, bias)
        w = _reordered(w, min(a.shape[0], ROWS_PER_CHUNK))  # once, for all the chunks
        for start in range(0, a.shape[0], ROWS_PER_CHUNK):
            out[start : start + ROWS_PER_CHUNK].copy_(_onednn(a[start : start + ROWS_PER_CHUNK], w, bias))
        return out
    if out is None:
        return torch.mm(a, w.t()) if bias is None else torch.addmm(bias, a, w.t())
    return torch.mm(a, w.t(), out=out) if bias is None else torch.addmm(bias, a, w.t(), out=out)


def maps_afresh(shape: tuple[int, ...], like: Tensor) -> bool:
    """Whether a new CPU tensor of this shape would be memory the allocator maps afresh on every
    call (glibc does so from 32 MB), paying a page fault per 4 KB each time: such a tensor is
    better written into a buffer that is reused (:mod:`lstmlab.models.scratch`)."""
    return like.device.type == "cpu" and math.prod(shape) * like.element_size() >= FRESH_MAPPING_BYTES


def sum_of_outer_products(d_rows: Tensor, rows: Tensor | list[Tensor]) -> Tensor:
    """Σ_r d_rows[r]ᵀ rows[r], (n, k) from d_rows (R, n) and rows (R, k): a weight's gradient.
    ``rows`` may also be given as its blocks of rows, in order (they are joined only here).

    Taken as (rowsᵀ d_rows)ᵀ, which both oneDNN and MKL do faster for these shapes. oneDNN wants
    rowsᵀ contiguous: the blocks are copied into a reused scratch buffer, transposed, in one pass.
    """
    blocks = [rows] if isinstance(rows, Tensor) else rows
    total, k = sum(block.shape[0] for block in blocks), blocks[0].shape[1]
    if use_onednn(blocks[0], k, total, d_rows.shape[1]):
        rows_t, start = scratch("rows_t", (k, total), blocks[0]), 0
        for block in blocks:
            rows_t[:, start : start + block.shape[0]].copy_(block.t())
            start += block.shape[0]
        return _onednn(rows_t, d_rows.t()).t()
    rows = blocks[0] if len(blocks) == 1 else torch.cat(blocks)
    return rows.t().mm(d_rows).t()


class StepWeight:
    """A weight w (n, k) prepared for ``steps`` products with ``batch`` rows, one per step.

    ``step(h, other)`` gives other + h @ wᵀ (or h @ wᵀ) as a new tensor, with gradients for h
    and other under autograd and none for w: w is taken as a constant.
    """

    def __init__(self, w: Tensor, batch: int, steps: int) -> None:
        w = w.detach()
        self._source, self._batch, self._steps = w, batch, steps
        self.onednn = use_onednn(w, batch, w.shape[1], w.shape[0])
        self._transposed = None
        if self.onednn:
            self.w = _reordered(w, batch) if steps >= MIN_STEPS_TO_REORDER else w.contiguous()
        else:
            self.w = w.t()  # a view: torch.mm takes it as is

    def step(self, h: Tensor, other: Tensor | None = None) -> Tensor:
        if not self.onednn:
            return torch.mm(h, self.w) if other is None else torch.addmm(other, h, self.w)
        if torch.is_grad_enabled() and (h.requires_grad or (other is not None and other.requires_grad)):
            return _OneDnnStep.apply(h, other, self)
        return self._onednn_step(h, other)

    def affine(self, h: Tensor, bias: Tensor | None = None) -> Tensor:
        """h @ wᵀ (+ bias) as a new tensor, without autograd."""
        if not self.onednn:
            return torch.mm(h, self.w) if bias is None else torch.addmm(bias, h, self.w)
        return _onednn(h.contiguous(), self.w, bias)

    def add_to(self, out: Tensor, h: Tensor) -> Tensor:
        """out + h @ wᵀ without autograd: into ``out`` itself where that is cheaper (torch.mm's
        path), else as a new tensor (oneDNN's)."""
        return self._onednn_step(h, out) if self.onednn else out.addmm_(h, self.w)

    def _onednn_step(self, h: Tensor, other: Tensor | None) -> Tensor:
        h = h.contiguous()
        # oneDNN can fuse the sum into the product (a "binary add" post-op), but as an op of its
        # own it is as fast or faster here, and takes an added term of any layout
        product = _onednn(h, self.w)
        return product if other is None else product.add_(other)

    def transposed(self) -> StepWeight:
        """The same weight prepared for products with wᵀ (made once, when first asked for)."""
        if self._transposed is None:
            self._transposed = StepWeight(self._source.t(), self._batch, self._steps)
        return self._transposed


def row_starts(sizes: list[int]) -> list[int]:
    """The first row of each step among a sequence's rows (step t has sizes[t]), then R."""
    starts = [0]
    for n in sizes:
        starts.append(starts[-1] + n)
    return starts


def steps_per_block(sizes: list[int], row_bytes: int, like: Tensor, block_bytes: int) -> int:
    """How many steps of a sequence make a block of about ``block_bytes`` when each of its rows
    takes ``row_bytes`` (counting the longest step's rows), for work taken a block at a time
    while it fits in the CPU's cache; off the CPU the whole sequence is one block."""
    if like.device.type != "cpu":
        return max(len(sizes), 1)
    return max(1, block_bytes // max(max(sizes, default=0) * row_bytes, 1))


PROJECTION_BLOCK_BYTES = 2 << 20  # W x + b taken this much at a time, just ahead of the steps that read it


class ProjectionAhead:
    """W x_t + b of a sequence's steps, taken a block of steps at a time, each block just
    before its steps read it: ``at(t)`` gives step t's (sizes[t], G), for t = 0, 1, ... in order.

    The loop adds U h_{t-1} to step t's pre-activations and takes σ over them. A block of
    about PROJECTION_BLOCK_BYTES is still in the CPU's cache when its steps come, where the
    slices of a projection of the whole sequence taken first (tens of MB) come back from
    memory; and the blocks are read where the product left them, never copied. Off the CPU it
    is one product for the whole sequence, at step 0.
    """

    def __init__(self, x_rows: Tensor, w: Tensor, bias: Tensor | None, sizes: list[int]) -> None:
        self._x_rows, self._bias, self._sizes = x_rows, bias, sizes
        self.steps, self.weight = self.blocks_of(x_rows, w, sizes)
        self._starts = row_starts(sizes)
        self._block: tuple[Tensor, ...] = ()  # the current block of W x + b, split into its steps

    @staticmethod
    def blocks_of(x_rows: Tensor, w: Tensor, sizes: list[int]) -> tuple[int, StepWeight]:
        """(steps per block, w prepared for the products of blocks that size)."""
        steps = steps_per_block(sizes, w.shape[0] * x_rows.element_size(), x_rows, PROJECTION_BLOCK_BYTES)
        rows = min(steps * max(sizes, default=0), x_rows.shape[0])
        return steps, StepWeight(w, rows, steps=math.ceil(len(sizes) / steps))

    def at(self, t: int) -> Tensor:
        """W x_t + b (sizes[t], G), as a view of its block (taken when t starts one)."""
        first = t - t % self.steps  # the block's first step
        if t == first:
            last = min(t + self.steps, len(self._sizes))
            block = self.weight.affine(self._x_rows[self._starts[t] : self._starts[last]], self._bias)
            self._block = block.split_with_sizes(self._sizes[t:last])
        return self._block[t - first]


class _OneDnnStep(torch.autograd.Function):
    """other + h @ wᵀ through oneDNN with w constant: ∂L/∂h = ∂L/∂out w, ∂L/∂other = ∂L/∂out."""

    @staticmethod
    def forward(ctx, h, other, weight: StepWeight):
        ctx.weight = weight
        return weight._onednn_step(h, other)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        d_h = ctx.weight.transposed().step(grad) if ctx.needs_input_grad[0] else None
        return d_h, (grad if ctx.needs_input_grad[1] else None), None


class RecurrentProducts:
    """The products of one direction of a recurrent layer: a_t = W x_t + b + U h_{t-1}.

    Made from the rows of a sequence, x_rows (R, I): step 0's ``sizes[0]`` rows, then step 1's,
    and so on (see :class:`~lstmlab.models.variable_length.RunningRows`), W (G, I), b (G,) or
    None and U (G, H). ``step(t, h)`` returns a_t (sizes[t], G) for t = 0, 1, ... in order.
    Autograd differentiates it all, with U's gradient taken once over every step in the input
    projection's backward (see the module docstring).

    W x_t + b is taken for every row in one product there and then, except on the oneDNN path,
    where it is taken a block of steps ahead of the steps that read it
    (:class:`ProjectionAhead`), and the steps' backward passes hand ∂L/∂a_t straight to the
    projection's backward, written into one (R, G) buffer, rather than letting autograd stack T
    separate gradients into a fresh tensor the size of the whole sequence on every call.
    """

    def __init__(self, x_rows: Tensor, w_ih: Tensor, bias: Tensor | None, w_hh: Tensor, sizes: list[int]) -> None:
        self._plain = torch.compiler.is_compiling()
        if self._plain:  # traced by torch.compile, which differentiates and fuses plain ops itself
            self._xw_t, self._w_hh_t = torch.nn.functional.linear(x_rows, w_ih, bias).split(sizes), w_hh.t()
            return
        self._u = StepWeight(w_hh, max(sizes, default=0), len(sizes))
        grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x_rows, w_ih, bias, w_hh))
        # the h_{t-1} that U multiplies, for ∂L/∂U; detached: the projection's backward keeps
        # them, and a link from them back into the graph would be a reference cycle
        self._inputs: list[Tensor] | None = [] if grad and w_hh.requires_grad else None
        self._gate_grads = _GateGradients(sizes, w_hh.shape[0]) if grad and self._u.onednn else None
        self._ahead = None
        if self._u.onednn:  # W x_t + b in blocks, as the steps come; no autograd through them
            detached = (None if t is None else t.detach() for t in (x_rows, w_ih, bias))
            self._ahead = ProjectionAhead(*detached, sizes)
        # the projection, whose backward takes ∂L/∂x, ∂L/∂W, ∂L/∂b and ∂L/∂U; on the oneDNN
        # path only the node in the graph that gathers the steps' ∂L/∂a_t (it computes nothing)
        self._xw = self._xw_t = None
        if grad or self._ahead is None:
            self._xw = _InputProjection.apply(x_rows, w_ih, bias, w_hh, self._inputs, self._gate_grads)
        if self._ahead is None:
            self._xw_t = self._xw.split_with_sizes(sizes)  # W x_t + b, (sizes[t], G) for each t

    def step(self, t: int, h: Tensor) -> Tensor:
        if self._plain:
            return torch.addmm(self._xw_t[t], h, self._w_hh_t)  # W x_t + b + U h_{t-1}
        if self._inputs is not None:
            self._inputs.append(h.detach())
        xw_t = self._xw_t[t] if self._ahead is None else self._ahead.at(t)  # W x_t + b
        if self._gate_grads is not None:
            return _RecurrentStep.apply(h, self._xw, xw_t, self._u, self._gate_grads, t)
        return self._u.step(h, xw_t)  # W x_t + b + U h_{t-1}


class _GateGradients:
    """∂L/∂a_t of every step, collected as the steps' backward passes produce them."""

    def __init__(self, sizes: list[int], gates: int) -> None:
        self._sizes, self._gates = sizes, gates
        self._starts = row_starts(sizes)
        self._buffer: Tensor | None = None
        self._written = [False] * len(sizes)

    def put(self, t: int, grad: Tensor) -> None:
        if self._buffer is None:
            self._buffer = borrow((self._starts[-1], self._gates), grad)
        self._buffer[self._starts[t] : self._starts[t + 1]].copy_(grad)
        self._written[t] = True

    def take(self) -> Tensor | None:
        """All steps' ∂L/∂a (R, G), zero for steps that got none; None if none did. The caller
        gives it back (:func:`~lstmlab.models.scratch.give_back`) when done with it."""
        buffer, self._buffer = self._buffer, None
        if buffer is not None:
            for t, written in enumerate(self._written):
                if not written:  # the loss does not depend on this step
                    buffer[self._starts[t] : self._starts[t + 1]].zero_()
        self._written = [False] * len(self._sizes)
        return buffer


class _RecurrentStep(torch.autograd.Function):
    """a_t = xw_t + h @ Uᵀ through oneDNN, U constant; ∂L/∂a_t goes to ``gate_grads``.

    ``xw`` (the projection's output, empty on this path) is an input only to tie this step to
    the projection in the graph: the gradient of W x_t + b is passed through ``gate_grads``.
    """

    @staticmethod
    def forward(ctx, h, xw, xw_t, weight: StepWeight, gate_grads: _GateGradients, t: int):
        ctx.weight, ctx.gate_grads, ctx.t = weight, gate_grads, t
        return weight._onednn_step(h, xw_t)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        ctx.gate_grads.put(ctx.t, grad)  # ∂L/∂(W x_t + b) = ∂L/∂a_t
        d_h = ctx.weight.transposed().step(grad) if ctx.needs_input_grad[0] else None  # ∂L/∂h_{t-1} = ∂L/∂a_t U
        return d_h, None, None, None, None, None


class _InputProjection(torch.autograd.Function):
    """x_rows Wᵀ + b (with ``gate_grads``, an empty tensor: the steps take it themselves) whose
    backward also gives ∂L/∂U = Σ_t ∂L/∂a_tᵀ h_{t-1} (U itself unused)."""

    @staticmethod
    def forward(ctx, x_rows, w_ih, bias, w_hh, h_inputs, gate_grads):
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(x_rows, w_ih)
        ctx.h_inputs = h_inputs  # filled by RecurrentProducts.step as the loop runs
        ctx.gate_grads = gate_grads  # or None: the gradient then comes in as d_rows
        if gate_grads is not None:  # the steps take W x_t + b themselves, a block ahead
            return x_rows.new_empty(0)
        shape = (x_rows.shape[0], w_ih.shape[0])
        # only the loop's forward steps read the projection (none saves it): a reused buffer will do
        out = scratch("projection", shape, x_rows) if maps_afresh(shape, x_rows) else None
        return matmul_t(x_rows, w_ih, bias, out=out)

    @staticmethod
    @once_differentiable
    def backward(ctx, d_rows):  # d_rows: ∂L/∂a_t for all rows, step after step
        lent = ctx.gate_grads.take() if ctx.gate_grads is not None else None
        d_rows = lent if lent is not None else d_rows
        if d_rows is None:
            return (None,) * 6
        x_rows, w_ih = ctx.saved_tensors
        need_x, need_w_ih, need_bias, need_w_hh, _, _ = ctx.needs_input_grad
        d_rows = d_rows.contiguous()
        d_x = matmul_t(d_rows, w_ih.t()) if need_x else None  # ∂L/∂x_t = ∂L/∂a_t W
        d_w_ih = sum_of_outer_products(d_rows, x_rows) if need_w_ih else None  # Σ_t ∂L/∂a_tᵀ x_t
        d_bias = d_rows.sum(0) if need_bias else None  # Σ_t ∂L/∂a_t
        d_w_hh = None
        if need_w_hh:  # one block per step: joined first (a transposed join of T small blocks is slower)
            h_rows = torch.cat(ctx.h_inputs, out=scratch("h_inputs", (d_rows.shape[0], ctx.h_inputs[0].shape[1]), d_rows))
            d_w_hh = sum_of_outer_products(d_rows, h_rows)  # Σ_t ∂L/∂a_tᵀ h_{t-1}
        if lent is not None:
            give_back(lent)
        return d_x, d_w_ih, d_bias, d_w_hh, None, None
