"""Helpers for padded batches of sequences of different lengths (batch-first)."""

from __future__ import annotations

import torch
from torch import Tensor


def step_mask(lengths: Tensor, steps: int) -> Tensor:
    """(B, T) bool, True where step t < the sequence's length."""
    return torch.arange(steps, device=lengths.device).unsqueeze(0) < lengths.unsqueeze(1)


def reverse_within_lengths(x: Tensor, lengths: Tensor | None) -> Tensor:
    """Reverse each sequence of a batch-first (B, T, F) tensor within its own length.

    Padding stays where it is, so the reverse direction of a bidirectional layer starts at each
    sequence's last real step. Applying it twice gives the input back.
    """
    if lengths is None:
        return x.flip(1)
    steps = x.shape[1]
    t = torch.arange(steps, device=x.device).unsqueeze(0)
    last = lengths.to(x.device).unsqueeze(1) - 1
    index = torch.where(t <= last, last - t, t)  # (B, T)
    return x.gather(1, index.unsqueeze(2).expand_as(x))


def last_valid_step(output: Tensor, lengths: Tensor | None) -> Tensor:
    """output (B, T, F) -> (B, F): the output at each sequence's last real step."""
    if lengths is None:
        return output[:, -1]
    index = (lengths.to(output.device) - 1).view(-1, 1, 1).expand(-1, 1, output.shape[2])
    return output.gather(1, index).squeeze(1)


def advance(state: tuple[Tensor, ...], new: tuple[Tensor, ...], mask_t: Tensor | None):
    """One step of a recurrence over a padded batch: (the state after the step, the step's output).

    ``new`` is the step's candidate state, h first. Where ``mask_t`` (B,) is False the sequence
    has already ended: its state is kept and its output is 0.
    """
    if mask_t is None:
        return new, new[0]
    m = mask_t.unsqueeze(1)
    return tuple(torch.where(m, n, s) for n, s in zip(new, state)), new[0] * m  # padding keeps the state
