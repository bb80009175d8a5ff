"""Multirun sweeps that lose nothing.

- :func:`run_job` wraps a sweep's job: a job that raises is recorded in its ``result.csv``
  (``status=failed``, ``error``) and the sweep goes on; a job whose ``result.csv`` says it
  finished with the same config (an earlier run of the same sweep) is not run again, and one
  that was interrupted with the same config goes on from its ``last.pt``.
- :func:`job_threads` splits the cores between jobs that run side by side.
- :class:`SweepResults` (a Hydra callback, see ``conf/config.yaml``) rebuilds the sweep's
  ``results.csv`` from its jobs (:func:`lstmlab.runs.collect`) when the multirun ends and
  prints a summary (:func:`lstmlab.report.print_summary`); the console entry does the same
  when a sweep is interrupted or aborted (:func:`close_open_sweep`).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import os
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import pandas as pd
import torch
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from .checkpoint import BEST_FILE, LAST_FILE
from .config_keys import flatten_config
from .errors import LabError, one_line
from .report import failed_jobs, print_summary
from .results import (METRICS_FILE, RESULTS_FILE, RunRecorder, as_csv_text, read_result, run_files, stored_as_text,
                      write_results)
from .runs import FINISHED, INTERRUPTED, collect, run_dirs, written_at

log = logging.getLogger("lstmlab")

DEFAULT_THREADS = torch.get_num_threads()  # torch's own choice, for jobs with trainer.num_threads=0


# ---------------------------------------------------------------- one job
def objective(summary: Mapping[str, Any]) -> float | None:
    """The run's monitored metric (its ``monitor`` column), nan when it has none; None when the
    run did not finish (a diverged run's last good metric is not its result): for Optuna, a
    failed trial."""
    if summary.get("status", FINISHED) != FINISHED:
        return None
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
    found = _file_stamps(run_dir)  # files an earlier run left here, to tell them from this job's
    epoch = resumable_epoch(run_dir, config)
    if epoch is not None:
        log.info("interrupted after epoch %d in an earlier run of this sweep, resumed from its %s: %s",
                 epoch, LAST_FILE, run_dir)
        cfg = resuming_from(cfg, run_dir)
    if not cfg.trainer.num_threads:  # the launcher's share of the cores, else torch's default, not an earlier job's
        torch.set_num_threads(job_threads(launcher, available_cores()) or DEFAULT_THREADS)
    try:
        return objective(train(cfg, run_dir))
    except Exception as exc:  # noqa: BLE001 - a failed job is recorded, the sweep goes on
        error = describe(exc)
        log.error("job failed: %s (traceback in %s)", error, run_dir / "traceback.txt")
        gone_on_from = (LAST_FILE, METRICS_FILE, BEST_FILE) if _resumes_from(cfg, run_dir) else ()
        untouched = [name for name, stamp in found.items()
                     if name not in gone_on_from and _file_stamps(run_dir).get(name) == stamp]
        RunRecorder(run_dir).write_failed(config, error, traceback.format_exc(), earlier=untouched)
        return None  # not a number: Optuna records a failed trial and goes on


def _resumes_from(cfg: DictConfig, run_dir: Path) -> bool:
    """Whether the job goes on from a checkpoint in ``run_dir`` (this module's resume, or its own
    ``trainer.resume``)."""
    resume = cfg.trainer.get("resume")
    if not resume:
        return False
    path = Path(str(resume)).expanduser()
    return (path if path.is_dir() else path.parent).resolve() == run_dir.resolve()


def _file_stamps(run_dir: Path) -> dict[str, tuple[int, int]]:
    """Each run file in ``run_dir`` (:func:`~lstmlab.results.run_files`) by (inode, mtime): a file
    rewritten since (atomically, so a new inode) has another stamp."""
    stamps = {}
    for name in run_files(run_dir):
        with contextlib.suppress(OSError):
            status = (run_dir / name).stat()
            stamps[name] = (status.st_ino, status.st_mtime_ns)
    return stamps


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
    with its ``last.pt``; None otherwise, or when the config sets ``trainer.resume`` itself."""
    trainer = config.get("trainer") or {}
    stored = None if trainer.get("resume") else stored_run(run_dir, config, INTERRUPTED)
    if stored is None or not (run_dir / LAST_FILE).is_file():
        return None
    epoch = _as_int(stored.get("epochs"))
    return epoch or None


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
    ``cpus_per_task=c``: ``c``; submitit_local without it: 1 (it starts every job of the sweep
    at once); otherwise 0 (torch's default).
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
    if "submitit" in target and "LocalLauncher" in target:  # all the jobs at once, on this machine
        return 1
    return 0


# ---------------------------------------------------------------- the end of a sweep
@dataclass
class SweepOutcome:
    sweep_dir: Path
    frame: pd.DataFrame

    @property
    def failed(self) -> pd.DataFrame:
        return failed_jobs(self.frame)


@dataclass
class _OpenSweep:
    """A multirun in progress: its directory, and the job directories of another sweep that
    were already there when it began (with when their ``.hydra/`` was written): they are that
    sweep's until one of this sweep's jobs starts in them. A re-run of the same sweep (the
    same overrides) owns every job directory there."""

    sweep_dir: Path
    earlier: dict[Path, int | None]

    @classmethod
    def starting(cls, sweep_dir: Path, overrides: list[str]) -> "_OpenSweep":
        if _overrides_of_last_multirun(sweep_dir) == overrides:
            return cls(sweep_dir, {})
        return cls(sweep_dir, {d: written_at(d) for d in run_dirs(sweep_dir)})

    def job_dirs(self) -> tuple[list[Path], int]:
        """The directories of this sweep's jobs, and how many others (an earlier sweep's) lie beside them."""
        dirs = run_dirs(self.sweep_dir)
        ours = [d for d in dirs if d not in self.earlier or written_at(d) != self.earlier[d]]
        return ours, len(dirs) - len(ours)


def _overrides_of_last_multirun(sweep_dir: Path) -> list[str] | None:
    """The command-line overrides of the multirun that last ran in ``sweep_dir`` (Hydra keeps
    its config there, in multirun.yaml, and rewrites it after this sweep's start)."""
    try:
        saved = OmegaConf.load(sweep_dir / "multirun.yaml")
        return list(OmegaConf.to_container(saved.hydra.overrides.task))
    except Exception:  # noqa: BLE001 - none, or unreadable: taken as another sweep's
        return None


_open_sweep: _OpenSweep | None = None
_last_outcome: SweepOutcome | None = None


def last_outcome() -> SweepOutcome | None:
    """The sweep this process closed last (None if it ran none)."""
    return _last_outcome


def close_open_sweep(interrupted: bool = False) -> SweepOutcome | None:
    """Rebuilds results.csv of the multirun in progress (if any) and prints its summary."""
    global _open_sweep, _last_outcome
    if _open_sweep is None:
        return None
    ending, _open_sweep = _open_sweep, None
    sweep_dir, (dirs, others) = ending.sweep_dir, ending.job_dirs()
    if others:
        log.warning("%s also holds %d job director%s of an earlier sweep, left out of its %s",
                    sweep_dir, others, "y" if others == 1 else "ies", RESULTS_FILE)
    frame = collect(sweep_dir, dirs)
    if frame.empty:
        return None
    write_results(sweep_dir, frame)
    _last_outcome = SweepOutcome(sweep_dir, frame)
    print_summary(sweep_dir, frame, interrupted)
    return _last_outcome


class SweepResults(Callback):
    """Hydra callback: when a multirun ends, writes ``results.csv`` and prints the summary."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        global _open_sweep
        _open_sweep = _OpenSweep.starting(Path(config.hydra.sweep.dir), list(config.hydra.overrides.task))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if close_open_sweep(interrupted=False) is None:
            print("\nsweep done: no job ran", flush=True)
