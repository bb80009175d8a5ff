"""Multirun sweeps that lose nothing.

- :func:`run_job` wraps a sweep's job: a job that raises is recorded in its ``result.csv``
  (``status=failed``, ``error``) and the sweep goes on; a job whose ``result.csv`` says it
  finished with the same config (an earlier run of the same sweep) is not run again, and one
  that was interrupted with the same config goes on from its ``last.pt``.
- :func:`job_threads` splits the cores between jobs that run side by side.
- :class:`SweepResults` (a Hydra callback, see ``conf/config.yaml``) rebuilds the sweep's
  ``results.csv`` from its jobs when the multirun ends and prints a summary; the console
  entry does the same when a sweep is interrupted or aborted (:func:`close_open_sweep`).
"""

from __future__ import annotations

import copy
import logging
import math
import os
import shlex
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import pandas as pd
import torch
import yaml
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from .checkpoint import LAST_FILE
from .errors import LabError, one_line
from .results import (
    RESULTS_FILE,
    RunRecorder,
    as_csv_text,
    flatten_config,
    read_result,
    stored_as_text,
    write_results,
)

log = logging.getLogger("lstmlab")

FINISHED, FAILED, DIVERGED, INTERRUPTED = "finished", "failed", "diverged", "interrupted"
INCOMPLETE = "incomplete"  # no result.csv: running, killed, or stopped before its training began
STATUSES = (FINISHED, FAILED, DIVERGED, INTERRUPTED, INCOMPLETE)  # the order the summary counts them in
LEAD_COLUMNS = ["job", "status", "overrides", "error", "dir"]


# ---------------------------------------------------------------- one job
def objective(summary: Mapping[str, Any]) -> float:
    """The run's monitored metric (its ``monitor`` column), nan when it has none."""
    name = summary.get("monitor")
    try:
        return float(summary[name])
    except (KeyError, TypeError, ValueError):
        return math.nan


def run_job(cfg: DictConfig, run_dir: Path, train: Callable[[DictConfig, Path], dict],
            launcher: DictConfig | None = None) -> float | None:
    """Runs ``train(cfg, run_dir)`` as a job of a sweep; returns its objective (None if it failed).

    A job that finished in an earlier run of the sweep is not run again; one that was interrupted
    goes on from its ``last.pt`` (``trainer.resume``), as if it had never stopped.
    """
    config = _plain(cfg)
    earlier = finished_before(run_dir, config)
    if earlier is not None:
        log.info("finished in an earlier run of this sweep, not run again: %s", run_dir)
        return objective(earlier)
    epoch = resumable_epoch(run_dir, config)
    if epoch is not None:
        log.info("interrupted after epoch %d in an earlier run of this sweep, resumed from its %s: %s",
                 epoch, LAST_FILE, run_dir)
        cfg = resuming_from(cfg, run_dir)
    threads = job_threads(launcher, available_cores()) if not cfg.trainer.num_threads else 0
    if threads:
        torch.set_num_threads(threads)
    try:
        return objective(train(cfg, run_dir))
    except Exception as exc:  # noqa: BLE001 - a failed job is recorded, the sweep goes on
        error = describe(exc)
        log.error("job failed: %s (traceback in %s)", error, run_dir / "traceback.txt")
        RunRecorder(run_dir).write_failed(config, error, traceback.format_exc())
        return None  # not a number: Optuna records a failed trial and goes on


def _plain(cfg: DictConfig) -> dict:
    try:
        return OmegaConf.to_container(cfg, resolve=True)
    except Exception:  # noqa: BLE001 - a broken interpolation is recorded as written
        return OmegaConf.to_container(cfg, resolve=False)


def describe(exc: BaseException) -> str:
    """One line: bad input as lstmlab reports it, anything else with its exception type."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    if isinstance(exc, (LabError, HydraException, OmegaConfBaseException)):
        return one_line(exc)
    return f"{type(exc).__name__}: {one_line(exc)}"


def finished_before(run_dir: Path, config: Mapping) -> dict | None:
    """The stored result when ``run_dir`` holds a finished run of exactly this config."""
    if stored_run(run_dir, config, FINISHED) is None:
        return None
    return read_result(run_dir)


def resumable_epoch(run_dir: Path, config: Mapping) -> int | None:
    """The epoch to go on from when ``run_dir`` holds an interrupted run of exactly this config
    with its ``last.pt`` and epochs left to train; None otherwise, or when the config sets
    ``trainer.resume`` itself."""
    trainer = config.get("trainer") or {}
    stored = None if trainer.get("resume") else stored_run(run_dir, config, INTERRUPTED)
    if stored is None or not (run_dir / LAST_FILE).is_file():
        return None
    epoch = _as_int(stored.get("epochs"))
    return epoch if epoch and epoch < trainer.get("max_epochs", 0) else None


def stored_run(run_dir: Path, config: Mapping, status: str) -> dict[str, str] | None:
    """``run_dir``'s result.csv row (as text) when it says ``status`` and holds exactly this config.

    A ``trainer.resume`` naming ``run_dir`` itself (a job this module resumed) counts as unset.
    """
    stored = stored_as_text(run_dir)
    if not stored or stored.get("status") != status:
        return None
    if stored.get("trainer.resume") == str(run_dir):
        stored["trainer.resume"] = ""
    current = as_csv_text(flatten_config(config))
    if any(stored.get(key) != value for key, value in current.items()):
        return None
    return stored


def _as_int(text: str | None) -> int | None:
    try:
        return int(float(text))
    except (TypeError, ValueError):
        return None


def resuming_from(cfg: DictConfig, run_dir: Path) -> DictConfig:
    """A copy of ``cfg`` that goes on from ``run_dir``'s ``last.pt``."""
    resumed = copy.deepcopy(cfg)
    resumed.trainer.resume = str(run_dir)
    return resumed


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def job_threads(launcher: Mapping | None, cores: int) -> int:
    """Torch threads for one job so that jobs running side by side x threads <= cores.

    joblib with ``n_jobs=k`` (``-1`` = all cores): ``max(1, cores // k)``; submitit with
    ``cpus_per_task=c``: ``c``; otherwise 0 (torch's default).
    """
    if not launcher:
        return 0
    target = str(launcher.get("_target_", ""))
    if "JoblibLauncher" in target:
        n_jobs = launcher.get("n_jobs") or -1
        parallel = n_jobs if n_jobs > 0 else max(1, cores + 1 + n_jobs)
        return max(1, cores // parallel)
    if "submitit" in target and launcher.get("cpus_per_task"):
        return int(launcher["cpus_per_task"])
    return 0


# ---------------------------------------------------------------- a sweep's table
def run_dirs(root: Path) -> list[Path]:
    """The run directories at or under ``root``: those Hydra wrote a ``.hydra/`` into."""
    return sorted({p.parent for p in Path(root).rglob(".hydra") if p.is_dir()})


def job_row(run_dir: Path, root: Path) -> dict:
    """One row of results.csv: job number, status, overrides, error, dir, choices, then result.csv's row.

    ``choices`` is the option each config group got, overridden or not ('task=adder model=hand_lstm
    trainer=default', Hydra's own groups left out), so that a group one sweep did not override
    still has a value when sweeps are compared.
    """
    meta = _read_yaml(run_dir / ".hydra" / "hydra.yaml").get("hydra", {})
    overrides = _read_yaml(run_dir / ".hydra" / "overrides.yaml") or []
    result = read_result(run_dir)
    if result is None:  # running, interrupted or killed: the config Hydra saved
        config = _read_yaml(run_dir / ".hydra" / "config.yaml") or {}
        result = flatten_config(config) | {"status": INCOMPLETE}
    num = (meta.get("job") or {}).get("num")
    choices = (meta.get("runtime") or {}).get("choices") or {}
    lead = {
        "job": num if isinstance(num, int) else None,  # a single run has none
        "status": result.pop("status", INCOMPLETE),
        "overrides": " ".join(map(str, overrides)),
        "error": result.pop("error", ""),
        "dir": run_dir.relative_to(root).as_posix() if run_dir != root else ".",
        "choices": " ".join(f"{group}={option}" for group, option in choices.items()
                            if option is not None and not str(group).startswith("hydra/")),
    }
    return lead | result


def _read_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError):
        return {}


def collect(root: Path) -> pd.DataFrame:
    """One row per run under ``root`` (finished, failed or incomplete), ordered by job number."""
    root = Path(root)
    rows = [job_row(d, root) for d in run_dirs(root)]
    frame = _nullable_numbers(pd.DataFrame(rows))
    if frame.empty:
        return pd.DataFrame(columns=LEAD_COLUMNS)
    frame = frame.sort_values(["job", "dir"], key=_natural, na_position="last", kind="stable")
    return frame[LEAD_COLUMNS + [c for c in frame.columns if c not in LEAD_COLUMNS]].reset_index(drop=True)


def _nullable_numbers(frame: pd.DataFrame) -> pd.DataFrame:
    """Numeric columns as pandas' nullable dtypes (a job number stays 3, not 3.0, beside a run
    without one); text columns left as Python strings."""
    converted = frame.convert_dtypes()
    text = [c for c in frame.columns if converted[c].dtype == "string"]
    converted[text] = frame[text]
    return converted


def _natural(column: pd.Series) -> pd.Series:
    numbers = pd.to_numeric(column, errors="coerce")
    return numbers if numbers.notna().all() else column.astype(str)


def parse_overrides(text: Any) -> dict[str, str]:
    """'model.hidden_size=8 seed=1' -> {'model.hidden_size': '8', 'seed': '1'}."""
    if not isinstance(text, str) or not text.strip():
        return {}
    try:
        items = shlex.split(text)
    except ValueError:
        items = text.split()
    pairs = (item.split("=", 1) for item in items if "=" in item)
    return {key.lstrip("+~"): value for key, value in pairs}


# ---------------------------------------------------------------- the end of a sweep
@dataclass
class SweepOutcome:
    sweep_dir: Path
    frame: pd.DataFrame

    @property
    def failed(self) -> pd.DataFrame:
        return self.frame[self.frame["status"] == FAILED]


_open_sweep: Path | None = None
_last_outcome: SweepOutcome | None = None


def last_outcome() -> SweepOutcome | None:
    """The sweep this process closed last (None if it ran none)."""
    return _last_outcome


def close_open_sweep(interrupted: bool = False) -> SweepOutcome | None:
    """Rebuilds results.csv of the multirun in progress (if any) and prints its summary."""
    global _open_sweep, _last_outcome
    if _open_sweep is None:
        return None
    sweep_dir, _open_sweep = _open_sweep, None
    frame = collect(sweep_dir)
    if frame.empty:
        return None
    write_results(sweep_dir, frame)
    _last_outcome = SweepOutcome(sweep_dir, frame)
    print_summary(_last_outcome, interrupted)
    return _last_outcome


def print_summary(outcome: SweepOutcome, interrupted: bool = False) -> None:
    from .report import short_table, swept_keys  # report builds on this module

    state = "interrupted" if interrupted else "done"
    jobs = len(outcome.frame)
    print(f"\nsweep {state}: {jobs} job{'' if jobs == 1 else 's'} ({count_statuses(outcome.frame['status'])}); "
          f"results in {outcome.sweep_dir / RESULTS_FILE}")
    table = short_table(outcome.frame)
    if table:
        print(table)
    if len(outcome.failed):
        varying = swept_keys(outcome.frame, over=())
        lines = [f"  job {_job(r.job)} [{_shown(r.overrides, varying)}]: {r.error}" for r in outcome.failed.itertuples()]
        print(f"{len(lines)} failed job(s):\n" + "\n".join(lines), file=sys.stderr)
    sys.stdout.flush()


def count_statuses(statuses: pd.Series) -> str:
    """'2 finished, 1 interrupted': each status present, in the order of STATUSES, then any other."""
    counts = statuses.astype(str).value_counts()
    order = [s for s in STATUSES if s in counts] + sorted(s for s in counts.index if s not in STATUSES)
    return ", ".join(f"{counts[s]} {s}" for s in order)


def _shown(overrides: str, keys: list[str]) -> str:
    """The overrides that tell the jobs of the sweep apart (all of them if none do)."""
    parsed = parse_overrides(overrides)
    return " ".join(f"{k}={parsed[k]}" for k in keys if k in parsed) or overrides


def _job(value) -> str:
    return "?" if pd.isna(value) else str(int(value))


class SweepResults(Callback):
    """Hydra callback: when a multirun ends, writes ``results.csv`` and prints the summary."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        global _open_sweep
        _open_sweep = Path(config.hydra.sweep.dir)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        close_open_sweep(interrupted=False)
