"""Helpers for padded batches of sequences of different lengths (batch-first).

The hand-built layers run a padded batch the way a ``PackedSequence`` is laid out: rows sorted
longest first, and step t computes only the first n_t rows, the sequences still running
(:class:`RunningRows`). Work then follows the real tokens, not the padding, and a sequence
that has ended needs no masking: its state is simply left alone. The backward direction of a
bidirectional layer reads each sequence from its own last step, through the same rows.
"""

from __future__ import annotations

import torch
from torch import Tensor


def step_mask(lengths: Tensor, steps: int) -> Tensor:
    """(B, T) bool, True where step t < the sequence's length."""
    return torch.arange(steps, device=lengths.device).unsqueeze(0) < lengths.unsqueeze(1)


def last_valid_step(output: Tensor, lengths: Tensor | None) -> Tensor:
    """output (B, T, F) -> (B, F): the output at each sequence's last real step."""
    if lengths is None:
        return output[:, -1]
    index = (lengths.to(output.device) - 1).view(-1, 1, 1).expand(-1, 1, output.shape[2])
    return output.gather(1, index).squeeze(1)


class RunningRows:
    """Which rows of a batch run at each step: all of them, or for lengths sorted longest first
    the first ``sizes[t]`` rows, the sequences longer than t (steps where none runs are dropped).

    The steps' running rows, stacked step after step, are the "rows" of a sequence: (R, F) with
    R = Σ_t sizes[t], as in a PackedSequence's data. :meth:`rows` and :meth:`padded` convert
    between them and batch-first (B, T, F) tensors, with gradients. With ``reverse`` each
    sequence is read from its own last step back to its first (a bidirectional layer's backward
    direction): step t of sequence b is its position length_b − 1 − t, and padding stays put.
    """

    def __init__(self, batch: int, steps: int, lengths: Tensor | None = None, reverse: bool = False) -> None:
        self.batch, self.steps, self.reverse = batch, steps, reverse
        self.sizes = [batch] * steps
        self._index = None  # where each row sits in the time-major (T*B) flattening; None: in order
        self._lengths = None if lengths is None else _sorted(checked_lengths(lengths, batch, steps))
        if self._lengths is None or (batch and self._lengths.min() == steps):
            self._lengths = None  # every sequence runs every step
            return
        running = torch.arange(steps).unsqueeze(1) < self._lengths.unsqueeze(0)  # (T, B)
        self.sizes = [n for n in running.sum(1).tolist() if n > 0]
        t, b = running.nonzero(as_tuple=True)  # step after step, the running rows in order
        source = self._lengths[b] - 1 - t if reverse else t
        self._index = source * batch + b

    @classmethod
    def of(cls, x: Tensor, running: RunningRows | Tensor | None) -> RunningRows:
        """``running`` itself, or the running rows of x (B, T, ·) for lengths sorted longest first (or None)."""
        return running if isinstance(running, RunningRows) else cls(x.shape[0], x.shape[1], running)

    def rows(self, x: Tensor) -> Tensor:
        """Batch-first x (B, T, F) -> its running rows (R, F), step after step."""
        steps = x.transpose(0, 1)
        if self._index is not None:
            return steps.reshape(self.steps * self.batch, x.shape[2]).index_select(0, self._index.to(x.device))
        return (steps.flip(0) if self.reverse else steps).reshape(self.steps * self.batch, x.shape[2])

    def padded(self, rows: Tensor) -> Tensor:
        """Rows (R, F) -> batch-first (B, T, F), zero where a sequence has ended."""
        features = rows.shape[1]
        if self._index is None:
            steps = rows.view(self.steps, self.batch, features)
            return (steps.flip(0) if self.reverse else steps).transpose(0, 1)
        flat = rows.new_zeros(self.steps * self.batch, features).index_copy(0, self._index.to(rows.device), rows)
        return flat.view(self.steps, self.batch, features).transpose(0, 1)

    def per_step(self, rows: Tensor) -> tuple[Tensor, ...]:
        """Rows (R, ...) -> a view (sizes[t], ...) of each step's rows."""
        if self._lengths is None:  # two C++ calls, not a Python-level split per tensor
            return rows.view(self.steps, self.batch, *rows.shape[1:]).unbind(0)
        return rows.split_with_sizes(self.sizes)

    def per_step_of_padded(self, x: Tensor) -> tuple[Tensor, ...]:
        """Batch-first x (B, T, F) -> a (sizes[t], F) tensor for each step: views when every row runs."""
        if self._lengths is None:
            steps = x.transpose(0, 1).unbind(0)
            return steps[::-1] if self.reverse else steps
        return self.per_step(self.rows(x))

    def previous(self, states: Tensor, out: Tensor | None = None) -> Tensor:
        """:meth:`previous_blocks` as one (R, ...) tensor: a view when every sequence runs every
        step, else the blocks joined (into ``out`` if given)."""
        blocks = self.previous_blocks(states)
        return blocks[0] if len(blocks) == 1 else torch.cat(blocks, out=out)

    def previous_blocks(self, states: Tensor) -> list[Tensor]:
        """states (B + R, ...): the B initial states, then the R rows. For each row of step t,
        the same sequence's row at step t − 1 (the initial state's at t = 0), as blocks of rows
        in order: one view when every sequence runs every step, since each row then lies B
        rows after its previous one."""
        if self._lengths is None or not self.sizes:
            return [states[: states.shape[0] - self.batch]]
        first, steps = states[: self.batch], states[self.batch :].split_with_sizes(self.sizes)
        return [first[: self.sizes[0]], *(steps[t - 1][:n] for t, n in enumerate(self.sizes) if t > 0)]

    @property
    def every_row_runs(self) -> bool:
        """Whether every sequence runs every step (no lengths, or all of them the full length)."""
        return self._lengths is None

    def last_rows(self) -> tuple[Tensor, Tensor] | None:
        """(sequences, their last rows): for each sequence that ran at all, which of the R rows
        holds its last step. None when every sequence runs every step (the last ``batch`` rows)."""
        if self.every_row_runs:
            return None
        offsets = torch.tensor([0] + self.sizes[:-1]).cumsum(0)  # the first row of each step
        ran = (self._lengths > 0).nonzero().squeeze(1)
        return ran, offsets[self._lengths[ran] - 1] + ran


def checked_lengths(lengths, batch: int, steps: int) -> Tensor:
    """lengths as a CPU tensor, if they are ``batch`` integers in 0..steps."""
    lengths = torch.as_tensor(lengths)
    if lengths.shape != (batch,) or lengths.dtype.is_floating_point:
        raise ValueError(f"lengths: expected {batch} integers, one per sequence, got {lengths.dtype} {tuple(lengths.shape)}")
    lengths = lengths.cpu()
    if batch and (lengths.min() < 0 or lengths.max() > steps):
        raise ValueError(f"lengths: expected 0..{steps} (the steps of the batch), got {lengths.tolist()}")
    return lengths


def _sorted(lengths: Tensor) -> Tensor:
    if len(lengths) and (lengths[:-1] < lengths[1:]).any():
        raise ValueError(f"lengths: expected longest first (sorted, descending), got {lengths.tolist()}")
    return lengths


def drop_ended(state: tuple[Tensor, ...], running: int, ended: list) -> tuple[Tensor, ...]:
    """Keep the first ``running`` rows of each state tensor; the others' sequences have ended.

    Their state is final: it is appended to ``ended`` for :func:`final_state`.
    """
    if running == state[0].shape[0]:
        return state
    ended.append(tuple(s[running:] for s in state))
    return tuple(s[:running] for s in state)


def final_state(state: tuple[Tensor, ...], ended: list) -> tuple[Tensor, ...]:
    """The final state of every sequence, in batch order: the running rows, then those that ended."""
    if not ended:
        return state
    pieces = [state, *reversed(ended)]  # the rows that ended last come right after the running ones
    return tuple(torch.cat(parts) for parts in zip(*pieces))
