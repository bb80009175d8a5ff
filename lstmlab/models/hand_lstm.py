"""The LSTM written from its equations: a drop-in for ``torch.nn.LSTM``.

Same constructor, parameter names and shapes (``weight_ih_l{k}``, ``weight_hh_l{k}``,
``bias_ih_l{k}``, ``bias_hh_l{k}``, ``_reverse`` for the backward direction, gates stacked
in the order i, f, g, o), same return value ``(output, (h_n, c_n))``, so the state_dict of
one loads into the other. It also takes variable-length batches: a ``PackedSequence``, or
a padded batch with ``lengths``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from .variable_length import reverse_within_lengths, step_mask


def lstm_direction(x, h, c, w_ih, w_hh, b_ih, b_hh, mask=None):
    """One direction of one LSTM layer over a whole batch-first sequence, with autograd.

    x (B, T, I); h, c (B, H); mask (B, T) bool or None: where False, the step is padding,
    the state passes through unchanged and the output is 0. Returns out (B, T, H), h_T, c_T.
    """
    bias = None if b_ih is None else b_ih + b_hh
    xw = F.linear(x, w_ih, bias)  # W x_t + b for every t in one matmul: (B, T, 4H)
    outs = []
    # unbind, not x[:, t]: a slice's backward writes a full-size zero gradient per step (O(T²))
    for t, xw_t in enumerate(xw.unbind(1)):
        gates = torch.addmm(xw_t, h, w_hh.t())  # W x_t + U h_{t-1} + b, all four gates
        i, f, g, o = gates.chunk(4, 1)
        i = torch.sigmoid(i)  # i_t = σ(W_i x_t + U_i h_{t-1} + b_i)
        f = torch.sigmoid(f)  # f_t = σ(W_f x_t + U_f h_{t-1} + b_f)
        g = torch.tanh(g)  # g_t = tanh(W_g x_t + U_g h_{t-1} + b_g)
        o = torch.sigmoid(o)  # o_t = σ(W_o x_t + U_o h_{t-1} + b_o)
        c_new = f * c + i * g  # c_t = f_t ⊙ c_{t-1} + i_t ⊙ g_t
        h_new = o * torch.tanh(c_new)  # h_t = o_t ⊙ tanh(c_t)
        if mask is None:
            h, c = h_new, c_new
            outs.append(h)
        else:
            m = mask[:, t].unsqueeze(1)
            h, c = torch.where(m, h_new, h), torch.where(m, c_new, c)  # padding keeps the state
            outs.append(h_new * m)
    return torch.stack(outs, 1), h, c


class HandLSTM(nn.Module):
    """Multi-layer, optionally bidirectional LSTM, computed step by step from the equations.

    ``backward="autograd"`` lets autograd differentiate the loop; ``backward="manual"`` uses
    the hand-derived backward pass through time in :mod:`lstmlab.models.lstm_function`.
    """

    accepts_lengths = True  # forward(input, hx, lengths=...) takes a padded batch's lengths

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
    ) -> None:
        super().__init__()
        if backward not in ("autograd", "manual"):
            raise ValueError(f"backward: expected 'autograd' or 'manual', got {backward!r}")
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.bias = bias
        self.batch_first = batch_first
        self.dropout = float(dropout)
        self.bidirectional = bidirectional
        self.backward = backward
        self.num_directions = 2 if bidirectional else 1
        for layer in range(num_layers):
            layer_input = input_size if layer == 0 else hidden_size * self.num_directions
            for direction in range(self.num_directions):
                suffix = self._suffix(layer, direction)
                self.register_parameter(
                    f"weight_ih{suffix}", nn.Parameter(torch.empty(4 * hidden_size, layer_input))
                )
                self.register_parameter(
                    f"weight_hh{suffix}", nn.Parameter(torch.empty(4 * hidden_size, hidden_size))
                )
                if bias:
                    self.register_parameter(f"bias_ih{suffix}", nn.Parameter(torch.empty(4 * hidden_size)))
                    self.register_parameter(f"bias_hh{suffix}", nn.Parameter(torch.empty(4 * hidden_size)))
        self.reset_parameters()

    @staticmethod
    def _suffix(layer: int, direction: int) -> str:
        return f"_l{layer}" + ("_reverse" if direction == 1 else "")

    def reset_parameters(self) -> None:
        """Uniform in ±1/sqrt(hidden_size), as nn.LSTM initialises."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        for weight in self.parameters():
            nn.init.uniform_(weight, -bound, bound)

    def _weights(self, layer: int, direction: int):
        suffix = self._suffix(layer, direction)
        get = lambda name: getattr(self, name + suffix, None)  # noqa: E731
        return get("weight_ih"), get("weight_hh"), get("bias_ih"), get("bias_hh")

    def _direction_fn(self):
        if self.backward == "manual":
            from .lstm_function import lstm_direction_manual

            return lstm_direction_manual
        return lstm_direction

    def forward(self, input, hx=None, lengths: Tensor | None = None):
        """Like nn.LSTM.forward; ``lengths`` (B,) marks the valid steps of a padded batch."""
        packed = isinstance(input, PackedSequence)
        if packed:
            input, lengths = pad_packed_sequence(input, batch_first=True)
        elif not self.batch_first:
            input = input.transpose(0, 1)
        batch, steps = input.shape[0], input.shape[1]
        if lengths is not None:
            lengths = torch.as_tensor(lengths, device=input.device)
        mask = None if lengths is None else step_mask(lengths, steps)
        h0, c0 = self._initial_state(input, hx, batch)

        run = self._direction_fn()
        layer_input, h_n, c_n = input, [], []
        for layer in range(self.num_layers):
            outputs = []
            for direction in range(self.num_directions):
                k = layer * self.num_directions + direction
                x = layer_input if direction == 0 else reverse_within_lengths(layer_input, lengths)
                out, h, c = run(x, h0[k], c0[k], *self._weights(layer, direction), mask)
                outputs.append(out if direction == 0 else reverse_within_lengths(out, lengths))
                h_n.append(h)
                c_n.append(c)
            layer_input = outputs[0] if len(outputs) == 1 else torch.cat(outputs, 2)
            if self.dropout and self.training and layer < self.num_layers - 1:
                layer_input = F.dropout(layer_input, self.dropout, training=True)

        output = layer_input
        if packed:
            output = pack_padded_sequence(output, lengths.cpu(), batch_first=True, enforce_sorted=False)
        elif not self.batch_first:
            output = output.transpose(0, 1).contiguous()  # as nn.LSTM returns it
        return output, (torch.stack(h_n), torch.stack(c_n))

    def _initial_state(self, input: Tensor, hx, batch: int):
        shape = (self.num_layers * self.num_directions, batch, self.hidden_size)
        if hx is None:
            zeros = input.new_zeros(shape)
            return zeros, zeros
        h0, c0 = hx
        if h0.shape != shape or c0.shape != shape:
            raise ValueError(f"initial state: expected h0 and c0 of shape {tuple(shape)}, got {tuple(h0.shape)}")
        return h0, c0

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}, num_layers={self.num_layers}"
        if not self.bias:
            s += ", bias=False"
        if self.batch_first:
            s += ", batch_first=True"
        if self.dropout:
            s += f", dropout={self.dropout}"
        if self.bidirectional:
            s += ", bidirectional=True"
        if self.backward != "autograd":
            s += f", backward={self.backward!r}"
        return s
