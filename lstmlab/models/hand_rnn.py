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

from .matmul import RecurrentProducts
from .stacked import StackedRecurrent
from .variable_length import RunningRows, drop_ended, final_state

NONLINEARITIES = {"tanh": torch.tanh, "relu": torch.relu}


def rnn_direction(x, h, w_ih, w_hh, b_ih, b_hh, lengths=None, activation=torch.tanh):
    """One direction of one RNN layer over a batch-first sequence: x (B, T, I), h (B, H).

    lengths (B,) sorted longest first, or None: as :func:`lstmlab.models.hand_lstm.lstm_direction`.
    Returns out (B, T, H) and h_T.
    """
    running = RunningRows.of(x, lengths)  # step t runs the first n_t rows
    bias = None if b_ih is None else b_ih + b_hh
    products = RecurrentProducts(running.rows(x), w_ih, bias, w_hh, running.sizes)  # W x_t + b, all t at once
    outs, ended = [], []
    for t, n in enumerate(running.sizes):
        (h,) = drop_ended((h,), n, ended)  # sequences that have ended keep their state
        h = activation(products.step(t, h))  # h_t = φ(W x_t + U h_{t-1} + b), φ = tanh or relu
        outs.append(h)
    (h,) = final_state((h,), ended)
    return running.padded(torch.cat(outs) if outs else x.new_zeros(0, h.shape[1])), h


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
        device=None,
        dtype=None,
    ) -> None:
        if nonlinearity not in NONLINEARITIES:
            raise ValueError(f"nonlinearity: expected {' or '.join(map(repr, NONLINEARITIES))}, got {nonlinearity!r}")
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional, device, dtype)
        self.nonlinearity = nonlinearity
        self.reset_parameters()

    def _direction_fn(self):
        activation = NONLINEARITIES[self.nonlinearity]

        def run(x, h, w_ih, w_hh, b_ih, b_hh, lengths):
            return rnn_direction(x, h, w_ih, w_hh, b_ih, b_hh, lengths, activation)

        return run

    def extra_repr(self) -> str:
        s = super().extra_repr()
        return s + (f", nonlinearity={self.nonlinearity!r}" if self.nonlinearity != "tanh" else "")
