"""The one training loop. It sees a task and a network only through their small interfaces."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from .checkpoint import EPOCH_COLUMNS, TrainState
from .errors import LabError, first_line
from .tasks.base import Batch, Predict, Task

log = logging.getLogger("lstmlab")

EpochCallback = Callable[[dict], None]
CheckpointCallback = Callable[[TrainState], None]


class Diverged(Exception):
    """The training loss became NaN or infinite, or an update overflowed float32; the weights of that
    step are not used."""

    def __init__(self, epoch: int, step: int, detail: str) -> None:
        super().__init__(f"training diverged at epoch {epoch}, step {step}: {detail}")
        self.epoch, self.step = epoch, step


def resolve_device(name: str) -> torch.device:
    """``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps`` -> a device that exists here."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise LabError(f"trainer.device={name}: expected auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise LabError(f"trainer.device={name}: no CUDA GPU is available here (use trainer.device=cpu or auto)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise LabError(f"trainer.device={name}: only {torch.cuda.device_count()} CUDA device(s) here")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise LabError(f"trainer.device={name}: MPS is not available here (use trainer.device=cpu or auto)")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise LabError(f"trainer.device={name}: expected auto, cpu, cuda, cuda:N or mps")
    return device


@dataclass
class FitResult:
    epochs: int
    stop_reason: str  # target_metric | target_loss | max_epochs
    metrics: dict = field(default_factory=dict)  # the last epoch's row
    best: float | None = None
    train_seconds: float = 0.0


class Trainer:
    def __init__(
        self,
        optimizer: Callable[..., torch.optim.Optimizer],
        device: str = "auto",
        max_epochs: int = 20,
        batch_size: int = 64,
        shuffle: bool = True,
        grad_clip: float = 0.0,
        monitor: str | None = None,
        mode: str | None = None,
        target_metric: float | None = None,
        target_loss: float | None = None,
        num_threads: int = 0,
        log_every: int = 1,
        eval_every: int = 1,
        progress: bool = True,
        detect_anomaly: bool = False,
        compile: bool = False,
        seed: int = 0,
    ) -> None:
        self.make_optimizer = optimizer
        self.device = resolve_device(device)
        self.num_threads = num_threads
        if num_threads:
            torch.set_num_threads(num_threads)  # now, so that what the run records is what it uses
        self.max_epochs = max_epochs
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.grad_clip = grad_clip
        self.monitor = monitor
        self.mode = mode
        self.target_metric = target_metric
        self.target_loss = target_loss
        self.log_every = log_every
        self.eval_every = eval_every
        self.progress = progress
        self.detect_anomaly = detect_anomaly
        self.compile = compile
        self.seed = seed

    def fit(
        self,
        net: nn.Module,
        task: Task,
        on_epoch: EpochCallback | None = None,
        start: TrainState | None = None,
        on_checkpoint: CheckpointCallback | None = None,
    ) -> FitResult:
        """Trains ``net`` on ``task`` for up to ``max_epochs`` epochs.

        ``on_epoch(row)`` gets each epoch's metrics row; ``on_checkpoint(state)`` gets the full
        :class:`TrainState` at each epoch's end (to save it); ``start`` is such a state to go
        on from, exactly where it stopped (no further epoch if its last one already meets
        ``target_metric`` or ``target_loss``). A NaN or infinite loss, or an optimizer update that
        overflows float32, raises :class:`Diverged`.
        """
        monitor, mode = self.monitor_of(task)
        net.to(self.device)
        run = self.runner(net)
        self._warned_of_lengths = False
        optimizer = self._optimizer_for(net)
        generator = torch.Generator().manual_seed(self.seed)
        steps_per_epoch = task.num_train_batches(self.batch_size)
        result = FitResult(epochs=0, stop_reason="max_epochs")
        first, step, offset = 1, 0, 0.0
        if start is not None:
            start.restore(net, optimizer, generator)
            first, step, offset = start.epoch + 1, start.step, start.seconds
            result.epochs, result.metrics, result.best = start.epoch, dict(start.row), start.best
            reason = self._reached_target(result.metrics, monitor, mode)
            if reason:  # interrupted while saving the epoch that met the target: the run is over
                first, result.stop_reason = self.max_epochs + 1, reason
        begin = time.perf_counter() - offset
        bar = tqdm(total=self.max_epochs * steps_per_epoch, initial=(first - 1) * steps_per_epoch, desc="train",
                   unit="step", disable=not self.progress, mininterval=0.5, dynamic_ncols=True)
        with bar, logging_redirect_tqdm(), torch.autograd.set_detect_anomaly(self.detect_anomaly):
            for epoch in range(first, self.max_epochs + 1):
                train_loss, step = self._train_epoch(net, run, task, optimizer, generator, bar, epoch, step)
                row = dict(zip(EPOCH_COLUMNS, (epoch, step, 0.0, train_loss)))
                if self._evaluates(epoch, train_loss):
                    row.update(self.evaluate(net, task, run))
                row["seconds"] = round(time.perf_counter() - begin, 4)
                result.epochs, result.metrics = epoch, row
                value = row.get(monitor)
                improved = _better(value, result.best, mode)
                if improved:
                    result.best = value
                if on_epoch:
                    on_epoch(row)
                if on_checkpoint:
                    on_checkpoint(TrainState.capture(net, optimizer, generator, epoch=epoch, step=step,
                                                     seconds=row["seconds"], best=result.best,
                                                     improved=improved, row=row))
                reason = self._reached_target(row, monitor, mode)
                if epoch % self.log_every == 0 or reason or epoch == self.max_epochs:
                    log.info(_describe(row))
                if reason:
                    result.stop_reason = reason
                    bar.total = bar.n  # ends full: the run is done, not stopped at a fraction of max_epochs
                    break
        result.train_seconds = time.perf_counter() - begin
        return result

    def _optimizer_for(self, net: nn.Module) -> torch.optim.Optimizer:
        try:
            return self.make_optimizer(net.parameters())
        except (TypeError, ValueError) as exc:  # an argument the optimizer does not take, or a bad value
            raise LabError(f"trainer.optimizer: {first_line(exc)}") from None

    def monitor_of(self, task: Task) -> tuple[str, str]:
        """The metric to watch, the trainer's if set, else the task's; and its mode (max | min),
        the trainer's if set, else what the task says of that metric."""
        return resolve_monitor(task, self.monitor, self.mode)

    def _evaluates(self, epoch: int, train_loss: float) -> bool:
        """Whether the epoch is evaluated: every ``eval_every``-th, and the last, whether it is
        the last by ``max_epochs`` or by ``target_loss``."""
        stops = self.target_loss is not None and train_loss < self.target_loss
        return epoch % self.eval_every == 0 or epoch == self.max_epochs or stops

    def runner(self, net: nn.Module) -> nn.Module:
        """What the batches run through: ``net``, or with ``compile`` net compiled by
        ``torch.compile`` (which shares its parameters; checkpoints keep saving ``net``)."""
        return torch.compile(net) if self.compile else net

    def _train_epoch(self, net, run, task, optimizer, generator, bar, epoch: int, step: int) -> tuple[float, int]:
        """One pass over the training data through ``run`` (see :meth:`runner`); returns the mean
        loss and the global step reached."""
        net.train()
        total, steps = 0.0, 0
        for batch in task.train_batches(self.batch_size, self.shuffle, generator):
            inputs, lengths = self._to_device(batch)
            if run is not net and lengths is not None and not self._warned_of_lengths:
                self._warned_of_lengths = True
                log.warning("trainer.compile=true: this task's batches have lengths, so torch.compile "
                            "compiles anew for every new shape; it pays for fixed-length tasks (adder, sin_cos)")
            loss = task.loss(run(inputs, lengths), Batch(inputs, batch.targets.to(self.device), lengths))
            value = loss.item()
            if not math.isfinite(value):
                raise Diverged(epoch, step + steps + 1, f"loss is {value}")
            optimizer.zero_grad(set_to_none=True)
            try:
                loss.backward()
            except RuntimeError as exc:  # trainer.detect_anomaly: a NaN appeared in the backward pass
                if self.detect_anomaly and "nan" in str(exc).lower():
                    raise Diverged(epoch, step + steps + 1, str(exc).strip().splitlines()[0]) from exc
                raise
            if self.grad_clip:
                nn.utils.clip_grad_norm_(net.parameters(), self.grad_clip)
            try:
                optimizer.step()
            except RuntimeError as exc:  # a step too large for float32 (Adam's first step size, lr / (1 - β1), is 10·lr)
                if "overflow" not in str(exc):
                    raise
                raise Diverged(epoch, step + steps + 1, f"the optimizer's update overflowed ({first_line(exc)})") from exc
            total += value
            steps += 1
            bar.update(1)
            bar.set_postfix(loss=f"{total / steps:.4g}", refresh=False)
        return total / max(steps, 1), step + steps

    def _to_device(self, batch: Batch):
        lengths = None if batch.lengths is None else batch.lengths.to(self.device)
        return batch.inputs.to(self.device, non_blocking=True), lengths

    def evaluate(self, net: nn.Module, task: Task, run: nn.Module | None = None) -> dict[str, float]:
        return task.evaluate(self.predictor(net, run))

    def predictor(self, net: nn.Module, run: nn.Module | None = None) -> Predict:
        """The task-facing view of the network: a batch -> its outputs on the CPU, eval mode, no
        grad; run through ``run`` (see :meth:`runner`) if given."""
        net.eval()
        run = net if run is None else run

        @torch.no_grad()
        def predict(batch: Batch) -> torch.Tensor:
            inputs, lengths = self._to_device(batch)
            return run(inputs, lengths).float().cpu()

        return predict

    def _reached_target(self, row: dict, monitor: str, mode: str) -> str | None:
        value = row.get(monitor)
        if self.target_metric is not None and value is not None:
            if (value >= self.target_metric) if mode == "max" else (value <= self.target_metric):
                return "target_metric"
        if self.target_loss is not None and row["train_loss"] < self.target_loss:
            return "target_loss"
        return None


def resolve_monitor(task: Task, monitor: str | None, mode: str | None) -> tuple[str, str]:
    """(monitor or the task's, mode or what the task says of that metric)."""
    modes = {"train_loss": "min", **task.metric_modes}
    monitor = monitor or task.monitor
    if monitor not in modes:
        raise LabError(f"trainer.monitor={monitor}: expected one of {', '.join(modes)} "
                       f"(the metrics of {type(task).__name__})")
    return monitor, mode or modes[monitor]


def _better(value: float | None, best: float | None, mode: str) -> bool:
    """Whether an epoch's value of the monitored metric (None if not evaluated) beats the best so
    far (None before the first); a NaN never does."""
    if value is None or math.isnan(value):
        return False
    return best is None or (value > best if mode == "max" else value < best)


def _describe(row: dict) -> str:
    parts = [f"epoch {row['epoch']}"]
    parts += [f"{k} {v:.4g}" for k, v in row.items() if k not in ("epoch", "step")]
    return " | ".join(parts)
