"""Buffers reused between calls: never handed out twice at once, and reused once given back."""

from concurrent.futures import ThreadPoolExecutor

import torch

from lstmlab.models import scratch as scratch_module
from lstmlab.models.scratch import MAX_LENT, Lease, borrow, give_back, scratch


def in_a_fresh_thread(fn):
    """Run fn where no buffer has been kept yet (they are kept per thread)."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(fn).result()


def test_borrowed_buffers_are_never_shared_while_lent():
    in_a_fresh_thread(borrow_and_give_back)


def borrow_and_give_back():
    like = torch.empty(0)
    first = borrow((100, 8), like)
    second = borrow((100, 8), like)
    first.fill_(1.0)
    second.fill_(2.0)
    assert torch.all(first == 1.0) and torch.all(second == 2.0)
    give_back(first)
    third = borrow((50, 8), like)  # fits in the buffer given back: reuses its memory
    assert third.data_ptr() == first.data_ptr()
    assert torch.all(second == 2.0)


def test_named_scratch_is_reused_and_grows():
    in_a_fresh_thread(named_scratch)


def named_scratch():
    like = torch.empty(0, dtype=torch.float64)
    small = scratch("test_named", (4, 4), like)
    again = scratch("test_named", (2, 8), like)
    assert again.data_ptr() == small.data_ptr() and again.dtype == torch.float64
    bigger = scratch("test_named", (10, 10), like)
    assert bigger.shape == (10, 10)
    other = scratch("test_other_name", (4, 4), like)
    assert other.data_ptr() != bigger.data_ptr()


def test_borrowing_finds_the_buffer_again_for_a_slightly_larger_batch_and_keeps_the_largest():
    in_a_fresh_thread(sizes_that_vary)


def sizes_that_vary():
    like = torch.empty(0)
    first = borrow((100, 8), like)
    address = first.data_ptr()
    give_back(first)
    again = borrow((110, 8), like)  # 10% more rows (sequence lengths vary): the same memory
    assert again.data_ptr() == address
    give_back(again)
    small = [borrow((4, 8), like) for _ in range(MAX_LENT)]
    for buffer in small:
        give_back(buffer)  # more than MAX_LENT given back: the smallest are dropped, not the large one
    assert borrow((100, 8), like).data_ptr() == address
    assert borrow((2, 8), like).data_ptr() in {b.data_ptr() for b in small}  # the smallest that fits


def test_kept_buffers_stay_under_the_memory_cap(monkeypatch):
    monkeypatch.setattr(scratch_module, "MAX_KEPT_BYTES", 3 * 100 * 4)  # three 100-float buffers
    in_a_fresh_thread(lend_more_than_the_cap)


def lend_more_than_the_cap():
    like = torch.empty(0)
    lent = [borrow((80,), like) for _ in range(4)]  # 90 floats each, with the eighth of headroom
    for buffer in lent:
        give_back(buffer)
    kept = scratch_module._local.free
    assert len(kept) == 3 and sum(b.numel() for b in kept) <= 300


def test_a_lease_gives_its_buffers_back_when_freed():
    in_a_fresh_thread(lease_and_free)


def lease_and_free():
    like = torch.empty(0)
    lease = Lease(borrow((64, 8), like))
    lent = lease.tensors[0].data_ptr()
    assert borrow((64, 8), like).data_ptr() != lent  # still lent: another buffer
    del lease
    assert borrow((64, 8), like).data_ptr() == lent  # given back with the lease
