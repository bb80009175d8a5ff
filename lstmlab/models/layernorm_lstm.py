"""The LSTM with layer normalisation, as in the notes: a LayerNorm on each gate pre-activation
and on c_t before the final tanh.

    a_t = W x_t + U h_{t-1} + b                          the four pre-activations (i, f, g, o)
    i_t, f_t, o_t = σ(LN_i(a_i)), σ(LN_f(a_f)), σ(LN_o(a_o)),   g_t = tanh(LN_g(a_g))
    c_t = f_t ⊙ c_{t-1} + i_t ⊙ g_t                      the state keeps the un-normalised c_t
    h_t = o_t ⊙ tanh(LN_c(c_t))

Each LN normalises over the H units of one gate (mean 0, variance 1, eps 1e-5 as nn.LayerNorm)
and has its own gain and shift. The LSTM weights have HandLSTM's names and shapes; the norms
add ``ln_gates_weight_l{k}``/``ln_gates_bias_l{k}`` (4H, gates i, f, g, o) and
``ln_cell_weight_l{k}``/``ln_cell_bias_l{k}`` (H), ``_reverse`` for the backward direction.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .hand_lstm import HandLSTM
from .matmul import RecurrentProducts
from .variable_length import RunningRows, drop_ended, final_state

EPS = 1e-5  # as nn.LayerNorm


def layernorm_lstm_direction(x, h, c, w_ih, w_hh, b_ih, b_hh, gate_w, gate_b, cell_w, cell_b, lengths=None):
    """One direction of one LayerNorm-LSTM layer over a batch-first sequence, with autograd.

    Arguments and results as :func:`lstmlab.models.hand_lstm.lstm_direction`, plus the norms'
    gains and shifts.
    """
    hidden = h.shape[1]
    running = RunningRows.of(x, lengths)  # step t runs the first n_t rows
    bias = None if b_ih is None else b_ih + b_hh
    products = RecurrentProducts(running.rows(x), w_ih, bias, w_hh, running.sizes)  # W x_t + b, all t at once
    outs, ended = [], []
    for t, n in enumerate(running.sizes):
        h, c = drop_ended((h, c), n, ended)  # sequences that have ended keep their state
        gates = products.step(t, h)  # a_t = W x_t + U h_{t-1} + b, all four gates
        # 4 groups of H units = a LayerNorm of each gate's pre-activation, with its own gain/shift
        gates = F.group_norm(gates, 4, gate_w, gate_b, EPS)  # LN_i(a_i), LN_f(a_f), LN_g(a_g), LN_o(a_o)
        i, f, _, o = torch.sigmoid(gates).chunk(4, 1)  # i_t, f_t, o_t = σ(LN(a))
        g = torch.tanh(gates[:, 2 * hidden : 3 * hidden])  # g_t = tanh(LN_g(a_g))
        c = torch.addcmul(f * c, i, g)  # c_t = f_t ⊙ c_{t-1} + i_t ⊙ g_t
        h = o * torch.tanh(F.layer_norm(c, (hidden,), cell_w, cell_b, EPS))  # h_t = o_t ⊙ tanh(LN_c(c_t))
        outs.append(h)
    h, c = final_state((h, c), ended)
    return running.padded(torch.cat(outs) if outs else x.new_zeros(0, hidden)), h, c


class LayerNormLSTM(HandLSTM):
    """HandLSTM with a LayerNorm on each gate pre-activation and on c_t (autograd backward)."""

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
                         device=device, dtype=dtype)
        for layer in range(num_layers):
            for direction in range(self.num_directions):
                suffix = self._suffix(layer, direction)
                for name, size in (("ln_gates", 4 * hidden_size), ("ln_cell", hidden_size)):
                    for kind in ("weight", "bias"):  # set to 1 and 0 by reset_parameters
                        empty = torch.empty(size, device=device, dtype=dtype)
                        self.register_parameter(f"{name}_{kind}{suffix}", nn.Parameter(empty))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """LSTM weights uniform in ±1/sqrt(hidden_size); the norms start at gain 1, shift 0."""
        super().reset_parameters()
        for name, param in self.named_parameters():
            if name.startswith("ln_"):
                nn.init.constant_(param, 1.0 if "_weight" in name else 0.0)

    def _weights(self, layer: int, direction: int) -> tuple:
        suffix = self._suffix(layer, direction)
        norms = (getattr(self, f"{n}{suffix}") for n in ("ln_gates_weight", "ln_gates_bias", "ln_cell_weight", "ln_cell_bias"))
        return (*super()._weights(layer, direction), *norms)

    def _direction_fn(self):
        return layernorm_lstm_direction

    def extra_repr(self) -> str:
        return super().extra_repr() + ", layernorm=gates+cell"
