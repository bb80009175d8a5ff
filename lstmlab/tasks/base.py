"""The small interface through which the trainer and the CLI see a task."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Callable, Iterator, NamedTuple

import torch
from torch import Tensor


class Batch(NamedTuple):
    inputs: Tensor  # (B, T, F) floats, or (B, T) token ids
    targets: Tensor
    lengths: Tensor | None = None  # (B,) valid steps of a padded batch; None = all T


Predict = Callable[[Batch], Tensor]  # the model's outputs for a batch, on the CPU, no grad


@dataclass
class Curve:
    """One line of a figure: y against x (1-d tensors of equal length)."""

    x: Tensor
    y: Tensor
    label: str
    dashed: bool = False


@dataclass
class LinePlot:
    """What a task wants drawn, as data: lstmlab/plots.py draws it (tasks never see matplotlib)."""

    title: str
    xlabel: str
    ylabel: str
    curves: list[Curve]
    vlines: list[tuple[float, str]] = field(default_factory=list)  # (x, label) vertical markers


class Task(ABC):
    """Data and metric of one experiment.

    A task says what the network must look like (``network_options``: input features,
    output size, read-out), yields training batches, computes the loss, and evaluates a
    prediction function on its test data. It never sees the model itself.
    """

    #: the metric the trainer watches unless told another
    monitor: str = "test_loss"

    @property
    @abstractmethod
    def metric_modes(self) -> dict[str, str]:
        """Every metric ``evaluate`` reports, with "max" where higher is better, else "min"."""

    @property
    @abstractmethod
    def input_size(self) -> int:
        """Features per time step that reach the recurrent layer."""

    @abstractmethod
    def network_options(self) -> dict:
        """Keyword arguments for :class:`lstmlab.models.SequenceModel` (output_size, readout, ...)."""

    @abstractmethod
    def train_batches(self, batch_size: int, shuffle: bool, generator: torch.Generator) -> Iterator[Batch]:
        """One epoch of training batches."""

    @abstractmethod
    def num_train_batches(self, batch_size: int) -> int:
        """How many batches ``train_batches`` yields."""

    @abstractmethod
    def loss(self, outputs: Tensor, batch: Batch) -> Tensor:
        """Scalar training loss of the model's outputs on a batch."""

    @abstractmethod
    def evaluate(self, predict: Predict) -> dict[str, float]:
        """Metrics on the task's test data, e.g. {"test_loss": ..., "test_acc": ...}."""

    def figures(self, predict: Predict) -> dict[str, LinePlot]:
        """Task-specific figures of the trained model, by file stem (e.g. "prediction"); none by default."""
        return {}


def batches_of(inputs: Tensor, targets: Tensor, batch_size: int, shuffle: bool, generator: torch.Generator):
    """Fixed-length data in batches, in order or shuffled by ``generator``."""
    n = inputs.shape[0]
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    for start in range(0, n, batch_size):
        index = order[start : start + batch_size]
        yield Batch(inputs[index], targets[index])


def in_chunks(predict: Predict, inputs: Tensor, targets: Tensor, chunk: int = 8192) -> Tensor:
    """The model's outputs on a large held-out set, computed chunk by chunk."""
    return torch.cat([predict(Batch(inputs[s : s + chunk], targets[s : s + chunk])) for s in range(0, len(inputs), chunk)])
