"""A recurrent layer between an optional embedding and a linear read-out: the whole network."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from .variable_length import last_valid_step, step_mask

READOUTS = ("every_step", "last_step", "final_state", "mean_max")


class SequenceModel(nn.Module):
    """inputs (B, T, F) floats, or (B, T) token ids when ``vocab_size`` is set -> predictions.

    readout: ``every_step`` (B, T, out), ``last_step`` (the output at each sequence's last
    step), ``final_state`` (the last layer's final h of each direction, concatenated) or
    ``mean_max`` (mean and max of the outputs over the valid steps).
    """

    def __init__(
        self,
        rnn: nn.Module,
        output_size: int,
        readout: str = "every_step",
        vocab_size: int | None = None,
        pretrained_embedding: Tensor | None = None,
        embedding_dropout: float = 0.0,
        output_dropout: float = 0.0,
        padding_idx: int = 0,
    ) -> None:
        super().__init__()
        if readout not in READOUTS:
            raise ValueError(f"readout: expected one of {', '.join(READOUTS)}, got {readout!r}")
        self.readout = readout
        self.embedding = None
        if vocab_size is not None:
            self.embedding = nn.Embedding(vocab_size, rnn.input_size, padding_idx=padding_idx)
            if pretrained_embedding is not None:
                with torch.no_grad():
                    self.embedding.weight.copy_(pretrained_embedding)
        self.embedding_dropout = nn.Dropout(embedding_dropout)
        self.rnn = rnn
        features = rnn.hidden_size * (2 if rnn.bidirectional else 1)
        if readout == "mean_max":
            features *= 2
        self.output_dropout = nn.Dropout(output_dropout)
        self.head = nn.Linear(features, output_size)

    def forward(self, inputs: Tensor, lengths: Tensor | None = None) -> Tensor:
        x = inputs
        if self.embedding is not None:
            x = self.embedding_dropout(self.embedding(x))
        output, state = self._run_rnn(x, lengths)
        h_n = state[0] if isinstance(state, tuple) else state  # (h_n, c_n) of an LSTM, h_n of an RNN
        if self.readout == "every_step":
            return self.head(self.output_dropout(output))
        if self.readout == "last_step":
            return self.head(self.output_dropout(last_valid_step(output, lengths)))
        if self.readout == "final_state":
            directions = 2 if self.rnn.bidirectional else 1
            final = torch.cat(list(h_n[-directions:]), dim=1)  # last layer: forward ⊕ backward
            return self.head(self.output_dropout(final))
        return self.head(self.output_dropout(_mean_max_pool(output, lengths)))

    def _run_rnn(self, x: Tensor, lengths: Tensor | None):
        """Runs the recurrent layer on batch-first x; returns batch-first output and its state."""
        batch_first = getattr(self.rnn, "batch_first", True)
        if lengths is not None and bool((lengths == x.shape[1]).all()):
            lengths = None  # no padding in this batch: the fast path gives the same result
        if lengths is not None and not getattr(self.rnn, "accepts_lengths", False):
            packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
            output, state = self.rnn(packed)
            output, _ = pad_packed_sequence(output, batch_first=True, total_length=x.shape[1])
            return output, state
        rnn_input = x if batch_first else x.transpose(0, 1)
        kwargs = {} if lengths is None else {"lengths": lengths}
        output, state = self.rnn(rnn_input, **kwargs)
        return (output if batch_first else output.transpose(0, 1)), state


def _mean_max_pool(output: Tensor, lengths: Tensor | None) -> Tensor:
    if lengths is None:
        return torch.cat([output.mean(1), output.amax(1)], dim=1)
    mask = step_mask(lengths.to(output.device), output.shape[1]).unsqueeze(2)
    mean = (output * mask).sum(1) / lengths.to(output.device).unsqueeze(1)
    maximum = output.masked_fill(~mask, float("-inf")).amax(1)
    return torch.cat([mean, maximum], dim=1)
