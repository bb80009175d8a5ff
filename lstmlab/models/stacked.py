"""The layer/direction loop shared by the hand-built recurrent layers (LSTM, RNN, LayerNorm LSTM).

A subclass says how many weight blocks a cell has (``gates``: 4 for the LSTM, 1 for the
plain RNN), how many state tensors it carries (``state_size``: 2 for (h, c), 1 for h) and
which function runs one direction of one layer over a whole sequence::

    run(x, *state, *weights, lengths) -> (out, *final_state)

where ``lengths`` (here always a :class:`~lstmlab.models.variable_length.RunningRows`; the
functions also take a tensor of lengths, or None, and make one of it) says which rows run
at each step and in which order a sequence is read (the reverse direction reads each one from
its own last step). A padded batch runs sorted longest first: the rows are put in that order
once, before the first layer, and back after the last.

The parameters follow torch's names and shapes (``weight_ih_l{k}``, ``weight_hh_l{k}``,
``bias_ih_l{k}``, ``bias_hh_l{k}``, ``_reverse`` for the backward direction), so a state_dict
loads into the matching torch module and back.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from .variable_length import RunningRows, checked_lengths


class StackedRecurrent(nn.Module):
    """Multi-layer, optionally bidirectional recurrent layer; batch-first or sequence-first."""

    accepts_lengths = True  # forward(input, hx, lengths=...) takes a padded batch's lengths
    gates = 4  # weight blocks stacked in weight_ih / weight_hh
    state_size = 2  # 2: the state is (h, c); 1: the state is h

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
        super().__init__()
        factory = {"device": device, "dtype": dtype}  # where and of what type the parameters are made, as in torch
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.bias = bias
        self.batch_first = batch_first
        self.dropout = float(dropout)
        self.bidirectional = bidirectional
        self.num_directions = 2 if bidirectional else 1
        rows = self.gates * hidden_size
        for layer in range(num_layers):
            layer_input = input_size if layer == 0 else hidden_size * self.num_directions
            for direction in range(self.num_directions):
                suffix = self._suffix(layer, direction)
                self.register_parameter(f"weight_ih{suffix}", nn.Parameter(torch.empty(rows, layer_input, **factory)))
                self.register_parameter(f"weight_hh{suffix}", nn.Parameter(torch.empty(rows, hidden_size, **factory)))
                if bias:
                    self.register_parameter(f"bias_ih{suffix}", nn.Parameter(torch.empty(rows, **factory)))
                    self.register_parameter(f"bias_hh{suffix}", nn.Parameter(torch.empty(rows, **factory)))

    @staticmethod
    def _suffix(layer: int, direction: int) -> str:
        return f"_l{layer}" + ("_reverse" if direction == 1 else "")

    def reset_parameters(self) -> None:
        """Uniform in ±1/sqrt(hidden_size), as torch's recurrent layers initialise."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        for weight in self.parameters():
            nn.init.uniform_(weight, -bound, bound)

    def _weights(self, layer: int, direction: int) -> tuple:
        """The arguments after the state that the direction function takes for this layer."""
        suffix = self._suffix(layer, direction)
        get = lambda name: getattr(self, name + suffix, None)  # noqa: E731
        return get("weight_ih"), get("weight_hh"), get("bias_ih"), get("bias_hh")

    def _direction_fn(self):
        raise NotImplementedError

    def forward(self, input, hx=None, lengths: Tensor | None = None):
        """Like torch's forward; ``lengths`` (B,) marks the valid steps of a padded batch.

        As in torch, an unbatched sequence (T, F) takes and gives states without the batch
        dimension, (layers × directions, H)."""
        packed = isinstance(input, PackedSequence)
        if not packed and input.dim() == 2:  # one unbatched sequence: run it as a batch of one
            batch_dim = 0 if self.batch_first else 1
            output, state = self.forward(input.unsqueeze(batch_dim), self._batch_of_one(hx), lengths)
            return output.squeeze(batch_dim), self._as_hx(tuple(s.squeeze(1) for s in self._as_tensors(state)))
        if not packed and input.dim() != 3:
            raise ValueError(f"input: expected 3-D (batched) or 2-D (unbatched), got shape {tuple(input.shape)}")
        self._check_features(input.data if packed else input)
        if packed:
            input, lengths = pad_packed_sequence(input, batch_first=True)
        elif not self.batch_first:
            input = input.transpose(0, 1)
        batch = input.shape[0]
        initial = self._initial_state(input, hx, batch)
        given_lengths = None if lengths is None else checked_lengths(lengths, batch, input.shape[1])
        order = None
        if given_lengths is not None:
            lengths, order = given_lengths.sort(descending=True, stable=True)  # longest first, on the CPU
            input, initial = _reordered(input, initial, order)

        output, state = self._run_layers(input, initial, lengths)

        if order is not None:
            output, state = _reordered(output, state, order.argsort())  # back in the caller's order
        if packed:
            output = pack_padded_sequence(output, given_lengths, batch_first=True, enforce_sorted=False)
        elif not self.batch_first:
            output = output.transpose(0, 1).contiguous()  # (T, B, F), as nn.LSTM returns it
        # batch-first, the output stays as the layers wrote it (one direction's is time-major seen
        # batch-first, as nn.LSTM's is): a contiguous copy would cost a pass over it both ways
        return output, self._as_hx(state)

    def _run_layers(self, input: Tensor, initial: tuple[Tensor, ...], lengths: Tensor | None):
        """Every layer and direction over a batch-first input sorted longest first -> (output, state)."""
        run = self._direction_fn()
        batch, steps = input.shape[:2]
        # which rows run at each step, reading forwards and (the second direction) backwards
        running = [RunningRows(batch, steps, lengths, reverse=d == 1) for d in range(self.num_directions)]
        layer_input, finals = input, [[] for _ in initial]
        for layer in range(self.num_layers):
            outputs = []
            for direction in range(self.num_directions):
                k = layer * self.num_directions + direction
                out, *state = run(layer_input, *(s[k] for s in initial), *self._weights(layer, direction), running[direction])
                outputs.append(out)
                for final, s in zip(finals, state):
                    final.append(s)
            layer_input = outputs[0] if len(outputs) == 1 else torch.cat(outputs, 2)
            if self.dropout and self.training and layer < self.num_layers - 1:
                layer_input = F.dropout(layer_input, self.dropout, training=True)
        return layer_input, tuple(_stacked(final) for final in finals)

    def flatten_parameters(self) -> None:
        """Nothing to do: torch's recurrent layers pack their weights for cuDNN here. Kept so that
        code written for them, which calls it (e.g. after DataParallel), runs unchanged."""

    def _as_tensors(self, hx) -> tuple[Tensor, ...]:
        """A state as torch's layers take and give it ((h, c), or h alone) -> a tuple of tensors."""
        return tuple(hx) if self.state_size > 1 else (hx,)

    def _as_hx(self, state: tuple[Tensor, ...]):
        """A tuple of state tensors -> the form torch's layers take and give: (h, c), or h alone."""
        return state if self.state_size > 1 else state[0]

    def _batch_of_one(self, hx):
        """An unbatched sequence's initial state (layers × directions, H) as a batch of one."""
        if hx is None:
            return None
        state = self._as_tensors(hx)
        if any(s.dim() != 2 for s in state):
            got = ", ".join(str(tuple(s.shape)) for s in state)
            raise ValueError(f"initial state: for an unbatched (2-D) input, expected 2-D states (layers × directions, H), got {got}")
        return self._as_hx(tuple(s.unsqueeze(1) for s in state))

    def _check_features(self, input: Tensor) -> None:
        """The last dimension is input_size, and the dtype the weights' (unless autocast casts them)."""
        if input.shape[-1] != self.input_size:
            raise ValueError(f"input: expected {self.input_size} features (input_size), got shape {tuple(input.shape)}")
        if input.dtype != self.weight_ih_l0.dtype and not torch.is_autocast_enabled(input.device.type):
            raise ValueError(f"input: expected dtype {self.weight_ih_l0.dtype} (the weights'), got {input.dtype}")

    def _initial_state(self, input: Tensor, hx, batch: int) -> tuple[Tensor, ...]:
        shape = (self.num_layers * self.num_directions, batch, self.hidden_size)
        if hx is None:
            return (input.new_zeros(shape),) * self.state_size
        state = self._as_tensors(hx)
        if any(s.shape != shape for s in state):
            got = ", ".join(str(tuple(s.shape)) for s in state)
            raise ValueError(f"initial state: expected {self.state_size} tensor(s) of shape {tuple(shape)}, got {got}")
        if any(s.dtype != input.dtype for s in state) and not torch.is_autocast_enabled(input.device.type):
            got = ", ".join(str(s.dtype) for s in state)
            raise ValueError(f"initial state: expected dtype {input.dtype} (the input's), got {got}")
        return state

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
        return s


def _stacked(states: list[Tensor]) -> Tensor:
    """(layers × directions, B, H) from each one's (B, H): a view when there is only one."""
    return states[0].unsqueeze(0) if len(states) == 1 else torch.stack(states)


def _reordered(batch_first: Tensor, states: tuple[Tensor, ...], order: Tensor):
    """The rows of a (B, ...) tensor and of (layers, B, H) states in the given order."""
    if bool((order == torch.arange(len(order))).all()):
        return batch_first, states
    order = order.to(batch_first.device)
    return batch_first.index_select(0, order), tuple(s.index_select(1, order) for s in states)
