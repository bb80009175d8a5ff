"""Length-bucketed batches and padding (lstmlab.tasks.batching)."""

from __future__ import annotations

import torch

from lstmlab.tasks.batching import bucket_batches, pad_batch


# --------------------------------------------------------------------------- batching


def test_bucket_batches_cover_every_index_once_with_similar_lengths():
    lengths = torch.randint(5, 500, (1000,), generator=torch.Generator().manual_seed(0)).tolist()
    batches = bucket_batches(lengths, 32, torch.Generator().manual_seed(0))
    assert sorted(i for b in batches for i in b) == list(range(1000))
    assert [len(b) for b in batches].count(32) == 31 and len(batches) == 32
    spread = max(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches)
    assert spread < 40  # random batches of 32 would each span most of 5..500
    assert batches == bucket_batches(lengths, 32, torch.Generator().manual_seed(0))
    assert batches != bucket_batches(lengths, 32, torch.Generator().manual_seed(1))


def test_bucket_batches_without_shuffle_go_from_short_to_long():
    batches = bucket_batches([3, 1, 2, 5, 4], 2, shuffle=False)
    assert batches == [[1, 2], [0, 4], [3]]


def test_pad_batch_pads_right_with_pad_id_and_returns_lengths():
    padded, lengths = pad_batch([[5, 6, 7], torch.tensor([8])])
    assert padded.tolist() == [[5, 6, 7], [8, 0, 0]] and padded.dtype == torch.int64
    assert lengths.tolist() == [3, 1]
