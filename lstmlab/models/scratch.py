"""Buffers reused from call to call for the large temporaries of the forward and backward passes.

Fresh memory costs a page fault per 4 KB page on first touch, and glibc hands allocations over
32 MB straight back to the system, so a temporary the size of a whole sequence would pay its
page faults again on every call (for ∂L/∂a at B=64, T=200, H=256: about a tenth of the whole
step). Buffers here are kept per thread, on the CPU only (elsewhere a plain new tensor), and
nothing a forward or backward pass returns may be a view of one. Three kinds of use:
:func:`scratch` for a value used and dropped within one call, :func:`borrow` / :func:`give_back`
for one that outlives it, and :class:`Lease` for one kept for as long as a graph node lives.
"""

from __future__ import annotations

import math
import threading

import torch
from torch import Tensor

MAX_BYTES = 256 << 20  # larger temporaries are not kept
# buffers kept for :func:`borrow` per thread: in training a bidirectional layer has 4 gates
# buffers out (the last batch's graph is still alive while the next forward pass runs)
MAX_LENT = 8
MAX_KEPT_BYTES = 1 << 30  # and at most this much memory in them
_local = threading.local()


def _keeps(numel: int, like: Tensor) -> bool:
    return like.device.type == "cpu" and numel * like.element_size() <= MAX_BYTES


def _new_buffer(numel: int, like: Tensor) -> Tensor:
    """A flat buffer to keep from call to call, made as a normal tensor even under
    ``torch.inference_mode``: later calls, with autograd, could not write into an inference tensor."""
    with torch.inference_mode(False):
        return torch.empty(numel, dtype=like.dtype, device=like.device)


def scratch(name: str, shape: tuple[int, ...], like: Tensor) -> Tensor:
    """An uninitialised tensor of ``like``'s dtype and device: one buffer per name and thread,
    for a value used and dropped within one call."""
    numel = math.prod(shape)
    if not _keeps(numel, like):
        return like.new_empty(shape)
    buffers = _local.__dict__.setdefault("named", {})
    buffer = buffers.get(name)
    if buffer is None or buffer.dtype != like.dtype or buffer.numel() < numel:
        buffer = buffers[name] = _new_buffer(numel, like)
    return buffer[:numel].view(shape)


def borrow(shape: tuple[int, ...], like: Tensor) -> Tensor:
    """An uninitialised tensor that is the caller's alone until :func:`give_back`; for a value
    that outlives one call (several may be out at once).

    It is cut from the smallest kept buffer it fits in, or from a new one an eighth larger than
    asked, so that batches of slightly different sizes (sequence lengths vary) find it again."""
    numel = math.prod(shape)
    if not _keeps(numel, like):
        return like.new_empty(shape)
    free = _local.__dict__.setdefault("free", [])
    fits = [k for k, buffer in enumerate(free) if buffer.dtype == like.dtype and buffer.numel() >= numel]
    if fits:
        buffer = free.pop(min(fits, key=lambda k: free[k].numel()))
    else:
        buffer = _new_buffer(numel + numel // 8, like)
    return buffer[:numel].view(shape)


def give_back(tensor: Tensor) -> None:
    """Return a tensor from :func:`borrow` (it must no longer be used). The largest buffers are
    kept, at most MAX_LENT of them and MAX_KEPT_BYTES in all."""
    whole = tensor if tensor._base is None else tensor._base  # the flat buffer it was cut from
    if not (whole.is_contiguous() and _keeps(whole.numel(), whole)):
        return
    free = _local.__dict__.setdefault("free", [])
    free.append(whole.view(-1))
    while len(free) > MAX_LENT or sum(b.numel() * b.element_size() for b in free) > MAX_KEPT_BYTES:
        free.pop(min(range(len(free)), key=lambda k: free[k].numel()))


class Lease:
    """Tensors from :func:`borrow`, given back when this object is freed: kept on an autograd
    Function's ctx, they stay lent for as long as its graph node lives, backward or not."""

    def __init__(self, *tensors: Tensor) -> None:
        self.tensors = tensors

    def __del__(self) -> None:
        try:
            for tensor in self.tensors:
                give_back(tensor)
        except Exception:  # at interpreter exit the module may already be gone
            pass
