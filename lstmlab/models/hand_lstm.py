"""The LSTM written from its equations: a drop-in for ``torch.nn.LSTM``.

Same constructor, parameter names and shapes (``weight_ih_l{k}``, ``weight_hh_l{k}``,
``bias_ih_l{k}``, ``bias_hh_l{k}``, ``_reverse`` for the backward direction, gates stacked
in the order i, f, g, o), same return value ``(output, (h_n, c_n))``, so the state_dict of
one loads into the other. It also takes variable-length batches: a ``PackedSequence``, or
a padded batch with ``lengths``.
"""

from __future__ import annotations

import torch

from .lstm_function import forward_weights, lstm_direction_manual
from .matmul import RecurrentProducts
from .stacked import StackedRecurrent
from .variable_length import RunningRows, drop_ended, final_state

BACKWARDS = ("autograd", "manual")  # model.backward: autograd differentiates the loop, or the hand-derived pass


def lstm_direction(x, h, c, w_ih, w_hh, b_ih, b_hh, lengths=None):
    """One direction of one LSTM layer over a whole batch-first sequence, with autograd.

    x (B, T, I); h, c (B, H); lengths (B,) sorted longest first, or None: every sequence runs
    all T steps (or the :class:`RunningRows` made of them, which may also read each sequence
    backwards). A sequence's steps past its length output 0 and leave its state alone.
    Returns out (B, T, H), h_T, c_T (each sequence's state after its last step).

    Few ops a step (each op is a graph node, and at small sizes their overhead is the cost):
    one matmul for the four gates and one sigmoid over all of them. The candidate g_t comes
    from that sigmoid too, through tanh(a) = 2σ(2a) − 1, with the g rows of W, U and b doubled
    once before the loop: cheaper than a tanh on the g slice (ATen's tanh costs several times
    its sigmoid) and than the zero-filled gradient a slice's backward writes every step. And
    i_t ⊙ g_t = 2 i_t ⊙ σ(2a_g) − i_t goes into c_t without g_t being formed (one op less).
    """
    hidden = h.shape[1]
    running = RunningRows.of(x, lengths)  # step t runs the first n_t rows
    w_ih, w_hh, bias = forward_weights(w_ih, w_hh, b_ih, b_hh)  # b = b_ih + b_hh; g rows doubled
    # W x_t + b for every step in one product, on rows laid out step after step: no x[:, t]
    # slices, whose backward writes a zero gradient the size of the whole sequence per step
    products = RecurrentProducts(running.rows(x), w_ih, bias, w_hh, running.sizes)
    outs, ended = [], []
    for t, n in enumerate(running.sizes):
        h, c = drop_ended((h, c), n, ended)  # sequences that have ended keep their state
        gates = products.step(t, h)  # a_t = W x_t + U h_{t-1} + b, all four gates (2a_g in the g slot): (n, 4H)
        i, f, s, o = torch.sigmoid(gates).chunk(4, 1)  # i_t, f_t, o_t = σ(a_i), σ(a_f), σ(a_o); s_t = σ(2a_g)
        c = torch.addcmul(f * c, i, s, value=2) - i  # c_t = f_t ⊙ c_{t-1} + i_t ⊙ g_t, g_t = tanh(a_g) = 2s_t − 1
        h = o * torch.tanh(c)  # h_t = o_t ⊙ tanh(c_t)
        outs.append(h)
    h, c = final_state((h, c), ended)
    return running.padded(torch.cat(outs) if outs else x.new_zeros(0, hidden)), h, c


# the compiler cannot trace the Function's loops (they write into preallocated buffers)
_manual_uncompiled = torch.compiler.disable(lstm_direction_manual)


class HandLSTM(StackedRecurrent):
    """Multi-layer, optionally bidirectional LSTM, computed step by step from the equations.

    ``backward="autograd"`` lets autograd differentiate the loop; ``backward="manual"`` uses
    the hand-derived backward pass through time in :mod:`lstmlab.models.lstm_function`.
    Under ``torch.compile`` the autograd loop traces as one graph (fixed-length batches); the
    manual backward's Function is left out of the graph and runs as it is.
    """

    gates = 4  # i, f, g, o
    state_size = 2  # (h, c)

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        backward: str = "autograd",
        device=None,
        dtype=None,
    ) -> None:
        if backward not in BACKWARDS:
            raise ValueError(f"backward: expected {' or '.join(map(repr, BACKWARDS))}, got {backward!r}")
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional, device, dtype)
        self.backward = backward
        self.reset_parameters()

    def _direction_fn(self):
        if self.backward == "manual":
            # torch.compile leaves the hand-written Function alone: it runs as it is, uncompiled
            return _manual_uncompiled if torch.compiler.is_compiling() else lstm_direction_manual
        return lstm_direction

    def extra_repr(self) -> str:
        s = super().extra_repr()
        if self.backward != "autograd":
            s += f", backward={self.backward!r}"
        return s
