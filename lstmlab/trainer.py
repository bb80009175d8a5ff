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

from .errors import LabError
from .tasks.base import Batch, Task

log = logging.getLogger("lstmlab")

EpochCallback = Callable[[dict], None]


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
        seed: int = 0,
    ) -> None:
        self.make_optimizer = optimizer
        self.device = resolve_device(device)
        self.num_threads = num_threads
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
        self.seed = seed

    def fit(self, net: nn.Module, task: Task, on_epoch: EpochCallback | None = None) -> FitResult:
        monitor = self.monitor or task.monitor
        mode = self.mode or (task.monitor_mode if monitor == task.monitor else "min")
        if self.num_threads:
            torch.set_num_threads(self.num_threads)
        net.to(self.device)
        optimizer = self.make_optimizer(net.parameters())
        generator = torch.Generator().manual_seed(self.seed)
        steps_per_epoch = task.num_train_batches(self.batch_size)
        result = FitResult(epochs=0, stop_reason="max_epochs")
        start, step = time.perf_counter(), 0
        bar = tqdm(total=self.max_epochs * steps_per_epoch, desc="train", unit="step",
                   disable=not self.progress, mininterval=0.5, dynamic_ncols=True)
        with bar, logging_redirect_tqdm():
            for epoch in range(1, self.max_epochs + 1):
                train_loss, steps = self._train_epoch(net, task, optimizer, generator, bar)
                step += steps
                row = {"epoch": epoch, "step": step, "seconds": 0.0, "train_loss": train_loss}
                if epoch % self.eval_every == 0 or epoch == self.max_epochs:
                    row.update(self.evaluate(net, task))
                row["seconds"] = round(time.perf_counter() - start, 4)
                result.epochs, result.metrics = epoch, row
                value = row.get(monitor)
                if value is not None and (result.best is None or _better(value, result.best, mode)):
                    result.best = value
                if on_epoch:
                    on_epoch(row)
                reason = self._reached_target(row, monitor, mode)
                if epoch % self.log_every == 0 or reason or epoch == self.max_epochs:
                    log.info(_describe(row))
                if reason:
                    result.stop_reason = reason
                    break
        result.train_seconds = time.perf_counter() - start
        return result

    def _train_epoch(self, net, task, optimizer, generator, bar) -> tuple[float, int]:
        net.train()
        total, steps = 0.0, 0
        for batch in task.train_batches(self.batch_size, self.shuffle, generator):
            inputs, lengths = self._to_device(batch)
            loss = task.loss(net(inputs, lengths), Batch(inputs, batch.targets.to(self.device), lengths))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if self.grad_clip:
                nn.utils.clip_grad_norm_(net.parameters(), self.grad_clip)
            optimizer.step()
            total += loss.item()
            steps += 1
            bar.update(1)
            bar.set_postfix(loss=f"{total / steps:.4g}", refresh=False)
        return total / max(steps, 1), steps

    def _to_device(self, batch: Batch):
        lengths = None if batch.lengths is None else batch.lengths.to(self.device)
        return batch.inputs.to(self.device, non_blocking=True), lengths

    @torch.no_grad()
    def evaluate(self, net: nn.Module, task: Task) -> dict[str, float]:
        net.eval()

        def predict(batch: Batch) -> torch.Tensor:
            inputs, lengths = self._to_device(batch)
            return net(inputs, lengths).float().cpu()

        return task.evaluate(predict)

    def _reached_target(self, row: dict, monitor: str, mode: str) -> str | None:
        value = row.get(monitor)
        if self.target_metric is not None and value is not None:
            if (value >= self.target_metric) if mode == "max" else (value <= self.target_metric):
                return "target_metric"
        if self.target_loss is not None and row["train_loss"] < self.target_loss:
            return "target_loss"
        return None


def _better(value: float, best: float, mode: str) -> bool:
    if math.isnan(value):
        return False
    return value > best if mode == "max" else value < best


def _describe(row: dict) -> str:
    parts = [f"epoch {row['epoch']}"]
    parts += [f"{k} {v:.4g}" for k, v in row.items() if k not in ("epoch", "step")]
    return " | ".join(parts)
