"""What a checkpoint holds, and reading one back safely.

A checkpoint (``last.pt`` every epoch, ``best.pt`` when the monitored metric improves) is a
plain dict that ``torch.load(path, weights_only=True)`` reads: the model's and optimizer's
state, the epoch and step reached, the best metric so far, every random number generator's
state (torch, CUDA, python, numpy and the trainer's data-order generator), the metric rows
so far and the run's resolved config. Writing it is the results writer's job
(``lstmlab/results.py``); this module defines the format and checks it on the way in.
"""

from __future__ import annotations

import copy
import json
import pickle
import random
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from .config_keys import flatten_config
from .errors import LabError, first_line

FORMAT = "lstmlab-checkpoint"
FORMAT_VERSION = 2  # 2: the metric rows as one text of JSON lines (1: a list of dicts)
LAST_FILE = "last.pt"
BEST_FILE = "best.pt"

#: config keys that must match to resume: the model's shape, the data, the seed and the kind of
#: optimizer. Other trainer keys (learning rate, batch size, epochs, ...) may change; the run
#: then goes on as told, no longer the twin of a run never stopped.
RESUME_MUST_MATCH = ("model.", "task.", "seed", "trainer.optimizer._target_")
#: ... except these task keys, which say how the data is fetched and shown, not what it is
#: (moving a run to another machine changes them; ``task.data_path`` must still match)
RESUME_MAY_DIFFER = ("task.cache_dir", "task.download", "task.progress", "task.eval_batch_size")


# ---------------------------------------------------------------- random number generators
def capture_rng(data_order: torch.Generator) -> dict[str, Any]:
    """Every generator's state, as tensors and plain values (``weights_only`` loadable)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": [version, list(internal), gauss_next],
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "data_order": data_order.get_state(),
    }


def restore_rng(rng: Mapping[str, Any], data_order: torch.Generator) -> None:
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] and torch.cuda.is_available() and len(rng["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(rng["cuda"])
    version, internal, gauss_next = rng["python"]
    random.setstate((version, tuple(internal), gauss_next))
    state = rng["numpy"]
    np.random.set_state((state["kind"], state["keys"].numpy().astype(np.uint32), state["pos"],
                         state["has_gauss"], state["gauss"]))
    data_order.set_state(rng["data_order"])


# ---------------------------------------------------------------- the trainer's state
EPOCH_COLUMNS = ("epoch", "step", "seconds", "train_loss")  # an epoch's row starts so; the task's metrics follow


@dataclass
class TrainState:
    """Where training stands at the end of an epoch: everything needed to go on exactly."""

    epoch: int
    step: int
    seconds: float  # training time so far
    best: float | None  # best value of the monitored metric so far
    improved: bool  # this epoch set ``best``
    row: dict  # this epoch's metrics row: EPOCH_COLUMNS, then the task's metrics
    model: dict = field(repr=False)
    optimizer: dict = field(repr=False)
    rng: dict = field(repr=False)

    @classmethod
    def capture(cls, net: nn.Module, optimizer: torch.optim.Optimizer, data_order: torch.Generator,
                **progress) -> "TrainState":
        # copies: on the CPU .cpu() and state_dict() hand back the live tensors, which training goes on changing
        return cls(model=_cpu_copy(net.state_dict()), optimizer=_cpu_copy(optimizer.state_dict()),
                   rng=capture_rng(data_order), **progress)

    def restore(self, net: nn.Module, optimizer: torch.optim.Optimizer, data_order: torch.Generator) -> None:
        """Loads the weights and optimizer state; the optimizer keeps its configured settings."""
        net.load_state_dict(self.model)
        settings = [{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups]
        optimizer.load_state_dict(self.optimizer)
        for group, configured in zip(optimizer.param_groups, settings):
            group.update(configured)
        restore_rng(self.rng, data_order)


def history_line(row: Mapping) -> str:
    """One metric row as a checkpoint keeps it: a JSON line (NaN for a metric not evaluated)."""
    return json.dumps(dict(row), default=float)


def _cpu_copy(value: Any) -> Any:
    """A copy of nested dicts, lists and tuples with every tensor copied to the CPU."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {k: _cpu_copy(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_cpu_copy(v) for v in value)
    return copy.copy(value)


def to_payload(state: TrainState, config: Mapping, history: list[dict] | list[str], monitor: str | None) -> dict:
    """The dict a checkpoint file holds. ``history``: the metric rows, or their
    :func:`history_line` s (a writer that keeps them saves re-encoding every row on every epoch).

    The rows go in as one text: torch.save pickles a list of dicts one object at a time in Python,
    about 2 µs a row on every save, which over a run of 10,000 tiny epochs came to minutes."""
    lines = [line if isinstance(line, str) else history_line(line) for line in history]
    return {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "epoch": state.epoch,
        "step": state.step,
        "seconds": state.seconds,
        "best": state.best,
        "monitor": monitor,
        "model": state.model,
        "optimizer": state.optimizer,
        "rng": state.rng,
        "history": "\n".join(lines),
        "config": dict(config),
    }


_PAYLOAD_KEYS = ("epoch", "step", "seconds", "best", "monitor", "model", "optimizer", "rng", "history", "config")


@dataclass
class Checkpoint:
    path: Path
    state: TrainState
    history: list[dict]
    config: dict
    monitor: str | None


# ---------------------------------------------------------------- reading
def read_torch_file(path: Path | str, what: str) -> Any:
    """``torch.load(weights_only=True)`` with a missing, truncated or foreign file in one line."""
    path = Path(path)
    if not path.is_file():
        raise LabError(f"{path}: no such {what}" + (" (a directory)" if path.is_dir() else ""))
    problem = _unreadable(path)
    if problem:
        raise LabError(f"{path}: not a readable {what}: {problem}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise LabError(f"{path}: not an lstmlab {what}: it holds objects other than tensors and plain values "
                       "(refused by torch.load(weights_only=True))") from None
    except (RuntimeError, EOFError, ValueError, OSError) as exc:
        raise LabError(f"{path}: not a readable {what}: {first_line(exc)[:200]}") from None


def _unreadable(path: Path) -> str | None:
    """Why a file cannot be what torch.save wrote (a zip archive), or None."""
    with path.open("rb") as f:
        head = f.read(4)
    if not head:
        return "the file is empty"
    if not zipfile.is_zipfile(path):
        return "truncated (an incomplete torch file)" if head == b"PK\x03\x04" else "not a file torch.save wrote"
    return None


def load(path: Path | str) -> Checkpoint:
    """Reads a checkpoint file (``last.pt``/``best.pt``), checking its format and version."""
    path = Path(path)
    data = read_torch_file(path, "checkpoint")
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        hint = " (it looks like a model state_dict such as model.pt; resume from last.pt)" if _is_state_dict(data) else ""
        raise LabError(f"{path}: not an lstmlab checkpoint{hint}")
    version = data.get("version")
    if not isinstance(version, int):
        raise LabError(f"{path}: an incomplete lstmlab checkpoint: it has no format version")
    if version > FORMAT_VERSION:
        raise LabError(f"{path}: checkpoint format version {version} is newer than this lstmlab reads "
                       f"(up to {FORMAT_VERSION}); upgrade lstmlab")
    missing = [key for key in _PAYLOAD_KEYS if key not in data]
    if missing:
        raise LabError(f"{path}: an incomplete lstmlab checkpoint: it has no {', '.join(missing)}")
    history = _rows_of(data["history"])
    state = TrainState(epoch=data["epoch"], step=data["step"], seconds=data["seconds"], best=data["best"],
                       improved=False, row=history[-1] if history else {}, model=data["model"],
                       optimizer=data["optimizer"], rng=data["rng"])
    return Checkpoint(path=path, state=state, history=history, config=data["config"], monitor=data["monitor"])


def _rows_of(history: str | list[dict]) -> list[dict]:
    """The metric rows from a checkpoint's history: JSON lines (version 2) or a list (version 1)."""
    if isinstance(history, str):
        return [json.loads(line) for line in history.splitlines()]
    return [dict(row) for row in history]


def load_weights(path: Path | str) -> dict[str, torch.Tensor]:
    """The model's state_dict from ``model.pt``, ``last.pt`` or ``best.pt``."""
    data = read_torch_file(path, "model file")
    if isinstance(data, dict) and data.get("format") == FORMAT:
        return load(path).state.model
    if not _is_state_dict(data):
        raise LabError(f"{path}: not a model state_dict or lstmlab checkpoint")
    return data


def _is_state_dict(data: Any) -> bool:
    return isinstance(data, dict) and bool(data) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in data.items())


# ---------------------------------------------------------------- resuming
def resume_file(path: Path | str) -> Path:
    """A checkpoint file, or a run directory -> its ``last.pt``."""
    path = Path(path)
    if path.is_dir():
        if not (path / LAST_FILE).is_file():
            raise LabError(f"trainer.resume={path}: no {LAST_FILE} in this directory "
                           "(a run writes it when its first epoch finishes)")
        return path / LAST_FILE
    if not path.exists():
        raise LabError(f"trainer.resume={path}: no such file or directory")
    return path


def load_for_resume(path: Path | str, config: Mapping) -> Checkpoint:
    """The checkpoint to go on from, refused in one line if its config does not match."""
    try:
        checkpoint = load(resume_file(path))
    except LabError as exc:
        message = str(exc)
        raise LabError(message if message.startswith("trainer.resume=") else f"trainer.resume={message}") from None
    differences = config_differences(checkpoint.config, config)
    if differences:
        raise LabError(f"trainer.resume={path}: the checkpoint was trained with another config: "
                       + "; ".join(differences))
    return checkpoint


def config_differences(saved: Mapping, current: Mapping) -> list[str]:
    """'key: X in the checkpoint, Y now' for each key that must match to resume."""
    old, new = flatten_config(saved), flatten_config(current)
    keys = sorted(k for k in old.keys() | new.keys()
                  if k.startswith(RESUME_MUST_MATCH) and k not in RESUME_MAY_DIFFER)
    return [f"{k}: {old.get(k, '<absent>')} in the checkpoint, {new.get(k, '<absent>')} now"
            for k in keys if old.get(k, "<absent>") != new.get(k, "<absent>")]
