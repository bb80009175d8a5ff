"""sin → cos regression (SPEC.md experiment 2).

``points`` values of t evenly spaced over [start_pi·π, end_pi·π]; the input is sin t, the
target cos t. The first ``train_fraction`` of the points train, the rest test.

Layout, as in the note: the n training points are reshaped to (window, n/window, 1) and read
sequence-first, so element [i, j] is point (n/window)·i + j: sequence j holds every
(n/window)-th point, starting at point j. With the defaults, 100 points -> 20 steps ×
batch 5 × 1 feature. The trainer gets the same data batch-first, (5, 20, 1); the test half
is laid out the same way. Loss and metrics are MSE over every step.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import Batch, Curve, LinePlot, Predict, Task, batches_of


def strided_sequences(values: Tensor, window: int) -> Tensor:
    """Points (n,) -> batch-first sequences (n/window, window, 1): the note's
    ``values.reshape(window, -1, 1)`` read sequence-first, transposed."""
    return values.reshape(window, -1, 1).transpose(0, 1).contiguous()


def time_order(sequences: Tensor) -> Tensor:
    """Inverse of :func:`strided_sequences`: (B, T, 1) -> the points (B·T,) in time order."""
    return sequences.transpose(0, 1).reshape(-1)


def check_time_axis(points: int, start_pi: float, end_pi: float) -> None:
    """ValueError naming the key unless there are at least 2 points over a non-empty interval."""
    if points < 2:
        raise ValueError(f"task.points={points}: expected a number >= 2")
    if not end_pi > start_pi:
        raise ValueError(f"task.end_pi={end_pi}: expected more than task.start_pi={start_pi}")


def split_sizes(points: int, train_fraction: float, window: int) -> tuple[int, int]:
    """(train points, test points), or ValueError naming the key when they cannot be laid out."""
    if window < 1:
        raise ValueError(f"task.window={window}: expected a number >= 1")
    if not 0.0 < train_fraction < 1.0:
        raise ValueError(f"task.train_fraction={train_fraction}: expected a fraction strictly between 0 and 1")
    n_train = round(points * train_fraction)
    n_test = points - n_train
    if window > min(n_train, n_test):
        raise ValueError(
            f"task.window={window}: expected at most the {min(n_train, n_test)} points of the smaller half "
            f"({n_train} train, {n_test} test of task.points={points})"
        )
    if n_train % window or n_test % window:
        raise ValueError(
            f"task.window={window}: expected a divisor of both halves ({n_train} train, {n_test} test points)"
        )
    return n_train, n_test


class SinCosTask(Task):
    monitor = "test_mse"

    def __init__(
        self,
        points: int = 200,
        start_pi: float = 0.0,
        end_pi: float = 12.0,
        window: int = 20,
        train_fraction: float = 0.5,
    ) -> None:
        check_time_axis(points, start_pi, end_pi)
        n_train, _ = split_sizes(points, train_fraction, window)
        t = torch.linspace(start_pi * math.pi, end_pi * math.pi, points, dtype=torch.float64)
        self.t = t
        self.window = window
        self.n_train = n_train
        x, y = torch.sin(t).float(), torch.cos(t).float()
        self.train_inputs = strided_sequences(x[:n_train], window)
        self.train_targets = strided_sequences(y[:n_train], window)
        self.test_inputs = strided_sequences(x[n_train:], window)
        self.test_targets = strided_sequences(y[n_train:], window)

    @property
    def input_size(self) -> int:
        return 1

    def network_options(self) -> dict:
        return {"output_size": 1, "readout": "every_step"}

    def num_train_batches(self, batch_size: int) -> int:
        return -(-len(self.train_inputs) // batch_size)

    def train_batches(self, batch_size, shuffle, generator):
        return batches_of(self.train_inputs, self.train_targets, batch_size, shuffle, generator)

    def loss(self, outputs: Tensor, batch: Batch) -> Tensor:
        return F.mse_loss(outputs, batch.targets)

    def _predict_halves(self, predict: Predict) -> tuple[Tensor, Tensor]:
        """The model's outputs on the train and the test sequences, in one forward pass."""
        inputs = torch.cat([self.train_inputs, self.test_inputs])
        targets = torch.cat([self.train_targets, self.test_targets])
        outputs = predict(Batch(inputs, targets))
        return outputs[: len(self.train_inputs)], outputs[len(self.train_inputs) :]

    @property
    def metric_modes(self) -> dict[str, str]:
        return {"train_mse": "min", "test_mse": "min"}

    def evaluate(self, predict: Predict) -> dict[str, float]:
        train_out, test_out = self._predict_halves(predict)
        return {
            "train_mse": F.mse_loss(train_out, self.train_targets).item(),
            "test_mse": F.mse_loss(test_out, self.test_targets).item(),
        }

    def prediction(self, predict: Predict) -> Tensor:
        """The model's output at every point, in time order (train half, then test half)."""
        train_out, test_out = self._predict_halves(predict)
        return torch.cat([time_order(train_out), time_order(test_out)])

    def figures(self, predict: Predict) -> dict[str, LinePlot]:
        t = self.t.float()
        predicted = self.prediction(predict)
        end_of_training = float((self.t[self.n_train - 1] + self.t[self.n_train]) / 2)
        return {
            "prediction": LinePlot(
                title="sin → cos: input, target and the model's prediction",
                xlabel="t",
                ylabel="value",
                curves=[
                    Curve(t, torch.sin(t), "input sin t"),
                    Curve(t, torch.cos(t), "target cos t"),
                    Curve(t, predicted, "prediction", dashed=True),
                ],
                vlines=[(end_of_training, "end of training data")],
            )
        }
