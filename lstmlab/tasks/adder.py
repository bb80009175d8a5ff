"""8-bit binary addition (SPEC.md experiment 1), in three layouts.

- ``serial``: the textbook bit-serial layout. Least significant bit first, one step per bit
  position with the two operand bits as features, one sum bit out per step. Length-agnostic,
  so it is also evaluated on longer numbers (``eval_bits``).
- ``parallel``: the reference note's layout. Two steps (the bits of a, then of b), 8 features
  each, most significant bit first; the 8 sum bits are read from the last step.
- ``flat``: 16 steps of one bit (a then b, MSB first), the 8 sum bits read from the last step.

Operands are drawn so that the sum fits: a, b < 2**(bits-1). Numbers are handled as bit
tensors throughout, so 64-bit and longer evaluations are exact.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import Batch, Predict, Task, batches_of, in_chunks

TRAIN_BITS = 8
ENCODINGS = ("serial", "parallel", "flat")
LOSSES = ("bce", "mse")


def random_operands(n: int, bits: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """n pairs (a, b) uniform in 0..2**(bits-1)-1 as LSB-first bit tensors (n, bits)."""

    def draw() -> Tensor:
        low = torch.randint(0, 2, (n, bits - 1), generator=generator, dtype=torch.int64)
        return torch.cat([low, torch.zeros(n, 1, dtype=torch.int64)], dim=1)

    return draw(), draw()


def all_operands(bits: int = TRAIN_BITS) -> tuple[Tensor, Tensor]:
    """Every pair a, b in 0..2**(bits-1)-1 (16,384 pairs at 8 bits), as LSB-first bits."""
    values = torch.arange(2 ** (bits - 1))
    a, b = torch.cartesian_prod(values, values).unbind(1)
    return to_bits(a, bits), to_bits(b, bits)


def pairs_drawn(a: Tensor, b: Tensor, bits: int = TRAIN_BITS) -> Tensor:
    """Which of :func:`all_operands`' pairs occur among the LSB-first bit pairs (a, b): (2**(2·(bits-1)),) bool."""
    weights = 1 << torch.arange(bits)
    span = 2 ** (bits - 1)
    drawn = torch.zeros(span * span, dtype=torch.bool)
    drawn[(a * weights).sum(1) * span + (b * weights).sum(1)] = True  # cartesian_prod's order: a major, b minor
    return drawn


def to_bits(values: Tensor, bits: int) -> Tensor:
    """Integers (n,) -> LSB-first bits (n, bits)."""
    return (values.unsqueeze(1) >> torch.arange(bits)) & 1


def add_bits(a: Tensor, b: Tensor) -> Tensor:
    """Sum of two LSB-first bit tensors, by ripple carry (exact at any length)."""
    carry = torch.zeros_like(a[:, 0])
    out = []
    for k in range(a.shape[1]):
        total = a[:, k] + b[:, k] + carry
        out.append(total & 1)
        carry = total >> 1
    return torch.stack(out, dim=1)


def encode(a: Tensor, b: Tensor, encoding: str) -> tuple[Tensor, Tensor]:
    """Operand bits -> (inputs, targets) in the given layout, as float tensors."""
    total = add_bits(a, b)
    if encoding == "serial":
        return torch.stack([a, b], dim=2).float(), total.float()  # (n, bits, 2), (n, bits)
    msb_a, msb_b, msb_sum = a.flip(1), b.flip(1), total.flip(1)
    if encoding == "parallel":
        return torch.stack([msb_a, msb_b], dim=1).float(), msb_sum.float()  # (n, 2, 8), (n, 8)
    return torch.cat([msb_a, msb_b], dim=1).unsqueeze(2).float(), msb_sum.float()  # (n, 16, 1)


class AdderTask(Task):
    monitor = "exhaustive_acc"

    def __init__(
        self,
        encoding: str = "serial",
        train_size: int = 80_000,
        test_size: int = 20_000,
        eval_bits: list[int] | tuple[int, ...] = (16, 32),
        eval_size: int = 10_000,
        loss: str = "bce",
        seed: int = 0,
    ) -> None:
        if encoding not in ENCODINGS:
            raise ValueError(f"task.encoding: expected one of {', '.join(ENCODINGS)}, got {encoding!r}")
        if loss not in LOSSES:
            raise ValueError(f"task.loss: expected {' or '.join(LOSSES)}, got {loss!r}")
        self.encoding = encoding
        self.loss_name = loss
        generator = torch.Generator().manual_seed(seed)
        a, b = random_operands(train_size + test_size, TRAIN_BITS, generator)
        inputs, targets = encode(a, b, encoding)
        self.train_inputs, self.train_targets = inputs[:train_size], targets[:train_size]
        self.test_inputs, self.test_targets = inputs[train_size:], targets[train_size:]
        self.exhaustive = encode(*all_operands(), encoding)
        # the pairs the training draws never contain (about 124 of 16,384 at 80,000 draws): the
        # test split is drawn like the training one, so nearly all its pairs occur in training too
        unseen = ~pairs_drawn(a[:train_size], b[:train_size])
        self.unseen = (self.exhaustive[0][unseen], self.exhaustive[1][unseen]) if unseen.any() else None
        # longer numbers: only the serial layout is length-agnostic
        lengths = list(eval_bits) if encoding == "serial" else []
        self.long_sets = {bits: encode(*random_operands(eval_size, bits, generator), encoding) for bits in lengths}

    @property
    def input_size(self) -> int:
        return self.train_inputs.shape[2]

    def network_options(self) -> dict:
        if self.encoding == "serial":
            return {"output_size": 1, "readout": "every_step"}
        return {"output_size": TRAIN_BITS, "readout": "last_step"}

    def num_train_batches(self, batch_size: int) -> int:
        return -(-len(self.train_inputs) // batch_size)

    def train_batches(self, batch_size, shuffle, generator):
        return batches_of(self.train_inputs, self.train_targets, batch_size, shuffle, generator)

    def _squeeze(self, outputs: Tensor) -> Tensor:
        return outputs.squeeze(2) if self.encoding == "serial" else outputs

    def loss(self, outputs: Tensor, batch: Batch) -> Tensor:
        outputs = self._squeeze(outputs)
        if self.loss_name == "mse":  # the note: raw outputs against the bits, threshold 0.5
            return F.mse_loss(outputs, batch.targets)
        return F.binary_cross_entropy_with_logits(outputs, batch.targets)

    def _bits(self, outputs: Tensor) -> Tensor:
        threshold = 0.5 if self.loss_name == "mse" else 0.0
        return (self._squeeze(outputs) > threshold).float()

    def _exact_match(self, predict: Predict, inputs: Tensor, targets: Tensor) -> tuple[float, Tensor]:
        outputs = in_chunks(predict, inputs, targets)
        correct = (self._bits(outputs) == targets).all(dim=1)
        return correct.float().mean().item(), outputs

    @property
    def metric_modes(self) -> dict[str, str]:
        unseen = ["unseen_acc"] if self.unseen is not None else []
        accuracies = ["test_acc", *unseen, "exhaustive_acc", *(f"acc_{bits}bit" for bits in self.long_sets)]
        return {"test_loss": "min", **dict.fromkeys(accuracies, "max")}

    def evaluate(self, predict: Predict) -> dict[str, float]:
        test_acc, outputs = self._exact_match(predict, self.test_inputs, self.test_targets)
        metrics = {
            "test_loss": self.loss(outputs, Batch(self.test_inputs, self.test_targets)).item(),
            "test_acc": test_acc,
        }
        if self.unseen is not None:
            metrics["unseen_acc"] = self._exact_match(predict, *self.unseen)[0]
        metrics["exhaustive_acc"] = self._exact_match(predict, *self.exhaustive)[0]
        for bits, (inputs, targets) in self.long_sets.items():
            metrics[f"acc_{bits}bit"] = self._exact_match(predict, inputs, targets)[0]
        return metrics
