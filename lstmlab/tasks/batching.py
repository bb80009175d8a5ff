"""Batches of token-id sequences: length-bucketed index batches, and right-padding into one tensor."""

from __future__ import annotations

from typing import Sequence

import torch

from .text import PAD_ID


# --------------------------------------------------------------------------- batching


def bucket_batches(
    lengths: Sequence[int] | torch.Tensor,
    batch_size: int,
    generator: torch.Generator | None = None,
    shuffle: bool = True,
) -> list[list[int]]:
    """Index batches of similar length: sort by length, cut into ``batch_size`` chunks.

    With ``shuffle``, equal lengths are ordered at random and the batch order is shuffled,
    both from ``generator`` (so a seed gives the same batches). Without, batches go from
    shortest to longest. Every index appears exactly once.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}; expected a positive integer")
    lengths = torch.as_tensor(lengths, dtype=torch.float64)
    keys = lengths + torch.rand(len(lengths), generator=generator, dtype=torch.float64) * 0.5 if shuffle else lengths
    order = torch.argsort(keys, stable=True)
    batches = list(torch.split(order, batch_size))
    if shuffle:
        batches = [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]
    return [batch.tolist() for batch in batches]


def pad_batch(seqs: Sequence[Sequence[int] | torch.Tensor], pad_id: int = PAD_ID) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad id sequences to (B, T_max) int64 with ``pad_id``; also return their lengths (B,)."""
    tensors = [torch.as_tensor(s, dtype=torch.int64) for s in seqs]
    lengths = torch.tensor([len(t) for t in tensors], dtype=torch.int64)
    padded = torch.full((len(tensors), int(lengths.max()) if len(tensors) else 0), pad_id, dtype=torch.int64)
    for row, t in enumerate(tensors):
        padded[row, : len(t)] = t
    return padded, lengths
