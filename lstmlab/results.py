"""The one place that writes a run's results. Every file is written atomically.

A run directory holds:

- ``metrics.csv``: one row per epoch: ``EPOCH_COLUMNS`` (``epoch, step, seconds,
  train_loss``), then each metric the task's ``evaluate`` returns (e.g. ``test_loss,
  test_acc, exhaustive_acc``). The trainer makes these rows.
- ``result.csv``: one row: the command that made it (``COMMAND_COLUMNS``: ``overrides``,
  ``choices``, from Hydra's ``.hydra/``), the resolved config flattened to dotted columns
  (``model.hidden_size``, ...; :func:`lstmlab.config_keys.flatten_config`), then the final metrics, then ``RUN_COLUMNS`` (``epochs``,
  ``stop_reason``, ``params``, ``train_seconds``, ``device``, ``threads``, ``monitor``,
  ``monitor_mode``, ``figures``, ``status``); see :func:`run_summary`. It is written last; ``status`` says
  how the run ended (finished, interrupted, diverged, failed).
- ``model.pt``: the trained state_dict (``torch.load(path, weights_only=True)``).
- ``last.pt``: a checkpoint at the end of every epoch, to resume from (``trainer.resume``);
  ``best.pt``: the same, from the epoch where the monitored metric was best so far.
  Their format is defined in ``lstmlab/checkpoint.py``.

A job of a sweep that fails writes ``result.csv`` with ``status=failed`` and ``error`` (one
line) and ``traceback.txt``, no ``model.pt``. A sweep directory gets ``results.csv``: one row
per job (``lstmlab/runs.py`` builds it).
"""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Any, Iterable, Mapping

import pandas as pd
import torch
import yaml

from . import checkpoint
from .checkpoint import EPOCH_COLUMNS, TrainState  # EPOCH_COLUMNS: metrics.csv's first columns
from .config_keys import flatten_config
from .files import atomic_write_bytes

METRICS_FILE = "metrics.csv"
RESULT_FILE = "result.csv"
MODEL_FILE = "model.pt"
RESULTS_FILE = "results.csv"
TRACEBACK_FILE = "traceback.txt"
CURVES_FILE = "curves.png"  # drawn from metrics.csv by lstmlab/plots.py

RESULT_FILES = (RESULT_FILE, MODEL_FILE, TRACEBACK_FILE)  # what a run writes when it ends
#: all a run leaves in its directory, with CURVES_FILE and the figures its result.csv lists (a
#: task's own, e.g. prediction.png), which a later run in the same directory replaces
EARLIER_RUN_FILES = RESULT_FILES + (METRICS_FILE, checkpoint.LAST_FILE, checkpoint.BEST_FILE)
COMMAND_COLUMNS = ("overrides", "choices")  # result.csv's first columns: the command that made it
BOOKKEEPING = EPOCH_COLUMNS[:3]  # the ones that are not metrics
RUN_COLUMNS = ("epochs", "stop_reason", "params", "train_seconds", "device", "threads", "monitor",
               "monitor_mode", "figures", "status")  # result.csv's last columns; figures: the PNGs it drew


def hydra_record(run_dir: Path | str, name: str) -> Any:
    """``run_dir/.hydra/<name>.yaml``, which Hydra writes as each run or job starts; {} if unreadable."""
    try:
        return yaml.safe_load((Path(run_dir) / ".hydra" / f"{name}.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        return {}


def hydra_meta(run_dir: Path | str) -> dict:
    """The ``hydra`` section of ``run_dir/.hydra/hydra.yaml`` (job number, config-group choices); {} if unreadable."""
    return hydra_record(run_dir, "hydra").get("hydra") or {}


def command_of(run_dir: Path | str, meta: Mapping | None = None) -> dict[str, str]:
    """The command that last started in ``run_dir``, from Hydra's record: its ``overrides``, and
    the option each config group got, overridden or not (``choices``: 'task=adder
    model=hand_lstm trainer=default', Hydra's own groups left out); {} without a record.
    ``meta``: :func:`hydra_meta` of ``run_dir``, where the caller has read it already."""
    overrides = hydra_record(run_dir, "overrides")
    meta = hydra_meta(run_dir) if meta is None else meta
    if not overrides and not meta:
        return {}
    choices = (meta.get("runtime") or {}).get("choices") or {}
    return {
        "overrides": " ".join(map(str, overrides or [])),
        "choices": " ".join(f"{group}={option}" for group, option in choices.items()
                            if option is not None and not str(group).startswith("hydra/")),
    }


def run_files(run_dir: Path | str) -> list[str]:
    """The names of the files a run left in ``run_dir`` that are there now: EARLIER_RUN_FILES,
    CURVES_FILE and the figures its result.csv lists (no other file: a report, your own)."""
    run_dir = Path(run_dir)
    figures = ((stored_as_text(run_dir) or {}).get("figures") or "").split()
    names = dict.fromkeys([*EARLIER_RUN_FILES, CURVES_FILE, *figures])
    return [name for name in names if "/" not in name and (run_dir / name).is_file()]


def run_summary(last_row: Mapping, *, epochs: int, stop_reason: str, train_seconds: float, status: str,
                about: Mapping) -> dict:
    """result.csv's columns after the config: the last epoch's metrics, then RUN_COLUMNS
    (``about`` gives params, device, threads, monitor, monitor_mode and, drawn, figures)."""
    metrics = {k: v for k, v in last_row.items() if k not in BOOKKEEPING}
    run = {"epochs": epochs, "stop_reason": stop_reason, "train_seconds": round(train_seconds, 3),
           "figures": "", "status": status, **about}
    return metrics | {column: run[column] for column in RUN_COLUMNS}


def atomic_write_csv(path: Path, frame: pd.DataFrame) -> None:
    atomic_write_bytes(path, frame.to_csv(index=False).encode())


def torch_bytes(obj: Any) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def atomic_torch_save(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, torch_bytes(obj))


def read_result(run_dir: Path | str, **read_csv) -> dict | None:
    """The row of ``run_dir/result.csv`` as a dict, or None when there is none (yet)."""
    try:
        frame = pd.read_csv(Path(run_dir) / RESULT_FILE, **read_csv)
    except (FileNotFoundError, pd.errors.EmptyDataError):
        return None
    return frame.iloc[0].to_dict() if len(frame) else None


def as_csv_text(row: Mapping[str, Any]) -> dict[str, str]:
    """Each value as the text result.csv holds for it (to compare a config with a stored row)."""
    text = pd.DataFrame([dict(row)]).to_csv(index=False)
    return pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False).iloc[0].to_dict()


def stored_as_text(run_dir: Path | str) -> dict[str, str] | None:
    """``result.csv``'s row as raw text values, or None when there is none."""
    return read_result(run_dir, dtype=str, keep_default_na=False)


def write_results(sweep_dir: Path | str, frame: pd.DataFrame) -> Path:
    """A sweep's ``results.csv`` (one row per job), written atomically."""
    path = Path(sweep_dir) / RESULTS_FILE
    atomic_write_csv(path, frame)
    return path


class RunRecorder:
    """Collects a run's per-epoch rows and final row, and writes them into ``run_dir``."""

    def __init__(
        self,
        run_dir: Path | str,
        flush_seconds: float = 2.0,
        config: Mapping | None = None,
        history: list[dict] | tuple = (),
        monitor: str | None = None,
        kept: tuple[str, ...] = (),
        carried: Mapping[str, Path] | None = None,
    ) -> None:
        """``history``: the rows of the epochs a resumed run has already done (empty for a new run).
        ``kept``: files in ``run_dir`` this run goes on from (see :data:`EARLIER_RUN_FILES`).
        ``carried``: files of another directory this run goes on from, copied in by its first
        write under the given names (a run resumed elsewhere keeps the best.pt of its epochs)."""
        self.run_dir = Path(run_dir)
        self.rows: list[dict] = [dict(row) for row in history]
        self._row_lines = [checkpoint.history_line(row) for row in self.rows]  # as every checkpoint holds them
        self.flush_seconds = flush_seconds
        self.config = dict(config or {})
        self.monitor = monitor
        self.checkpoint_epoch = self.rows[-1]["epoch"] if self.rows else 0
        self.saved_checkpoint: Path | None = None  # this run's last.pt, once written
        self._kept = kept
        self._carried = dict(carried or {})
        self._earlier_removed = False
        self._last_flush = 0.0

    def add_epoch(self, row: dict) -> None:
        """Keeps the row; rewrites metrics.csv at most every ``flush_seconds`` (and on finish)."""
        self.rows.append(dict(row))
        self._row_lines.append(checkpoint.history_line(row))
        if time.monotonic() - self._last_flush >= self.flush_seconds:
            self.flush_metrics()

    def flush_metrics(self) -> None:
        if self.rows:
            atomic_write_csv(self.run_dir / METRICS_FILE, pd.DataFrame(self.rows))
        self._last_flush = time.monotonic()

    def end_epoch(self, state: TrainState) -> None:
        """Records the epoch's row and saves ``last.pt`` (and ``best.pt`` if it improved)."""
        self._remove_earlier_results()
        self.add_epoch(state.row)
        data = torch_bytes(checkpoint.to_payload(state, self.config, self._row_lines, self.monitor))
        atomic_write_bytes(self.run_dir / checkpoint.LAST_FILE, data)
        if state.improved:
            atomic_write_bytes(self.run_dir / checkpoint.BEST_FILE, data)
        self.checkpoint_epoch = state.epoch
        self.saved_checkpoint = self.run_dir / checkpoint.LAST_FILE

    def _remove_earlier_results(self) -> None:
        """Called by the first write: removes the files of an earlier run in the same directory
        (:func:`run_files`, less those this run goes on from), so that none of them is taken for
        this run's. Until then the directory holds the earlier run as it was, so bad input or a
        kill before the first write loses nothing."""
        if self._earlier_removed:
            return
        self._earlier_removed = True
        self._remove(name for name in run_files(self.run_dir) if name not in self._kept)
        for name, source in self._carried.items():
            atomic_write_bytes(self.run_dir / name, Path(source).read_bytes())

    def _remove(self, names: Iterable[str]) -> None:
        for name in names:
            (self.run_dir / name).unlink(missing_ok=True)

    def save_model(self, state_dict: Mapping[str, torch.Tensor]) -> Path:
        self._remove_earlier_results()
        path = self.run_dir / MODEL_FILE
        atomic_torch_save(path, {k: v.detach().cpu() for k, v in state_dict.items()})
        return path

    def write_result(self, config: Mapping, summary: Mapping[str, Any]) -> Path:
        """The run's one-row summary: the command that started it (as Hydra recorded it when it
        did; a later command in the same directory that stops before its first write changes
        ``.hydra/``, not this), the flattened config, then the summary's columns."""
        self._remove_earlier_results()
        self.flush_metrics()
        row = command_of(self.run_dir) | flatten_config(config) | dict(summary)
        path = self.run_dir / RESULT_FILE
        atomic_write_csv(path, pd.DataFrame([row]))
        return path

    def write_failed(self, config: Mapping, error: str, traceback: str = "", earlier: Iterable[str] = ()) -> Path:
        """A failed run: ``result.csv`` with ``status=failed`` and the one-line ``error``.

        The checkpoints and metrics of the epochs it saved stay, to look into; ``earlier`` names
        files of an earlier run in the directory (none of this run's), which go."""
        self._earlier_removed = True
        self._remove((*RESULT_FILES, *earlier))
        if traceback:
            atomic_write_bytes(self.run_dir / TRACEBACK_FILE, traceback.encode())
        return self.write_result(config, {"status": "failed", "error": error})
