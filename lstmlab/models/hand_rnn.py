"""The plain RNN written from its equation: a drop-in for ``torch.nn.RNN``.

    h_t = tanh(W x_t + U h_{t-1} + b)        (or relu, as nn.RNN's ``nonlinearity="relu"``)

Same constructor, parameter names and shapes as ``nn.RNN`` (``weight_ih_l{k}`` H×I,
``weight_hh_l{k}`` H×H, two biases, ``_reverse`` for the backward direction), same return
value ``(output, h_n)``. Deep, bidirectional, dropout between layers, and variable-length
batches (a ``PackedSequence`` or a padded batch with ``lengths``), like :class:`HandLSTM`.
The read-out y_t = σ(V h_t) of the notes is the network's head (:class:`SequenceModel`).
"""

from __future__ import annotations

import torch

from .matmul import linear, project, transposed
from .stacked import StackedRecurrent
from .variable_length import advance

NONLINEARITIES = {"tanh": torch.tanh, "relu": torch.relu}


def rnn_direction(x, h, w_ih, w_hh, b_ih, b_hh, mask=None, activation=torch.tanh):
    """One direction of one RNN layer over a batch-first sequence: x (B, T, I), h (B, H).

    mask (B, T) bool or None: where False the step is padding, h passes through unchanged and
    the output is 0. Returns out (B, T, H) and h_T.
    """
    bias = None if b_ih is None else b_ih + b_hh
    xw = project(x, w_ih, bias)  # W x_t + b for every t in one matmul: (B, T, H)
    u_t = transposed(w_hh, h.shape[0])
    outs = []
    for t, xw_t in enumerate(xw.transpose(0, 1).contiguous().unbind(0)):  # unbind, not x[:, t] (see lstm_direction)
        h_new = activation(linear(h, w_hh, u_t, xw_t))  # h_t = tanh(W x_t + U h_{t-1} + b)
        (h,), out = advance((h,), (h_new,), None if mask is None else mask[:, t])
        outs.append(out)
    return torch.stack(outs, 1), h


class HandRNN(StackedRecurrent):
    """Multi-layer, optionally bidirectional Elman RNN, computed step by step."""

    gates = 1
    state_size = 1  # the state is h alone

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        nonlinearity: str = "tanh",
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
    ) -> None:
        if nonlinearity not in NONLINEARITIES:
            raise ValueError(f"nonlinearity: expected 'tanh' or 'relu', got {nonlinearity!r}")
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional)
        self.nonlinearity = nonlinearity
        self.reset_parameters()

    def _direction_fn(self):
        activation = NONLINEARITIES[self.nonlinearity]

        def run(x, h, w_ih, w_hh, b_ih, b_hh, mask):
            return rnn_direction(x, h, w_ih, w_hh, b_ih, b_hh, mask, activation)

        return run

    def extra_repr(self) -> str:
        s = super().extra_repr()
        return s + (f", nonlinearity={self.nonlinearity!r}" if self.nonlinearity != "tanh" else "")
