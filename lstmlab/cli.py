"""The command line: wires a task, a model, the trainer and the results writer together."""

from __future__ import annotations

import contextlib
import logging
import os
import random
import re
import shlex
import signal
import sys
import traceback
from pathlib import Path
from typing import Callable

import hydra
import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from . import checkpoint, interrupts, sweep
from .config_keys import flatten_config
from .errors import LabError, one_line
from .models import SequenceModel
from .results import METRICS_FILE, RUN_COLUMNS, RunRecorder, run_summary
from .schema import register_configs, validate
from .trainer import Diverged, resolve_monitor

log = logging.getLogger("lstmlab")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build(group: str, node: DictConfig | dict, **kwargs):
    """hydra.utils.instantiate of the config group ``group``, with a constructor's ValueError,
    or a ``_target_`` that cannot be imported, reported as bad input."""
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as exc:
        if isinstance(exc.__cause__, (ValueError, LabError)):
            raise LabError(one_line(exc)) from exc
        unknown = re.match(r"Error locating target '([^']+)'", str(exc))
        if unknown:
            target = unknown[1]
            missing = _missing_module(exc)
            why = (f"it imports {missing}, which is not installed" if missing and not target.startswith(missing)
                   else "no such class or function to build")
            raise LabError(f"{_key_of_target(node, target, group)}={target}: {why}") from exc
        raise


def _missing_module(exc: BaseException) -> str | None:
    """The name of the module whose absence made ``exc`` (a ModuleNotFoundError in its chain), if any."""
    while exc is not None:
        if isinstance(exc, ModuleNotFoundError):
            return exc.name
        exc = exc.__cause__ or exc.__context__
    return None


def _key_of_target(node, target: str, prefix: str) -> str:
    """The dotted key of the ``_target_`` that names ``target`` in ``node`` (``prefix._target_`` if none does)."""
    tree = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node
    found = [key for key, value in flatten_config(tree, prefix=f"{prefix}.").items()
             if key.endswith("_target_") and value == target]
    return found[0] if found else f"{prefix}._target_"


def run(cfg: DictConfig, run_dir: Path, overrides: list[str] | None = None) -> dict:
    """Trains cfg.model on cfg.task and writes metrics.csv, checkpoints, model.pt and result.csv.

    ``trainer.resume`` goes on from a checkpoint. On Ctrl-C or SIGTERM the finished epochs are
    kept, result.csv says ``status=interrupted`` and the interrupt is raised again; a NaN or
    infinite loss, or an update that overflows float32, ends the run with ``status=diverged``.
    ``overrides`` (the command line's) only serve to print the command that resumes the run.
    """
    validate(cfg)
    config = OmegaConf.to_container(cfg, resolve=True)
    resumed = checkpoint.load_for_resume(cfg.trainer.resume, config) if cfg.trainer.resume else None
    seed_everything(cfg.seed)
    trainer = build("trainer", _trainer_options(config), seed=cfg.seed)
    if resumed and resumed.state.epoch >= trainer.max_epochs:  # e.g. stopped while its last epoch was saved
        log.info("%s has done %d epochs (trainer.max_epochs=%d): nothing left to train; raise "
                 "trainer.max_epochs to train on", resumed.path, resumed.state.epoch, trainer.max_epochs)
    task = build("task", cfg.task)
    monitor, mode = trainer.monitor_of(task)
    best_restarts = bool(resumed) and _restart_best_if_monitor_changed(resumed, task, monitor, mode)
    rnn = build("model", cfg.model, input_size=task.input_size)
    net = SequenceModel(rnn, **task.network_options())
    params = sum(p.numel() for p in net.parameters())
    log.info("task %s | model %s | %d parameters | device %s", type(task).__name__, rnn, params, trainer.device)

    about = {"params": params, "device": str(trainer.device), "threads": torch.get_num_threads(),
             "monitor": monitor, "monitor_mode": mode}
    recorder = RunRecorder(run_dir, config=config, history=resumed.history if resumed else (), monitor=monitor,
                           kept=_files_gone_on_from(resumed, run_dir, best_restarts),
                           carried=_best_carried_over(resumed, run_dir, best_restarts))
    if resumed:
        log.info("resuming from %s after epoch %d", resumed.path, resumed.state.epoch)
    stopped = _Stopped(recorder, config, about, resumed, overrides or [])
    try:
        fit = trainer.fit(net, task, start=resumed.state if resumed else None,
                          on_checkpoint=lambda state: _end_epoch(recorder, state))
    except KeyboardInterrupt as exc:
        with _second_signal_ignored():
            stopped.interrupted(exc)
        raise
    except Diverged as exc:
        with interrupts.deferred():
            return stopped.diverged(exc)
    except BaseException:
        if recorder.saved_checkpoint is not None:  # the epochs it saved in last.pt, to look into the failure
            with interrupts.deferred(), contextlib.suppress(OSError):
                recorder.flush_metrics()
        raise
    summary = _write_finished(recorder, fit, about, net, lambda: write_plots(run_dir, task, trainer.predictor(net)))
    final = {k: v for k, v in summary.items() if k not in RUN_COLUMNS}
    print(" | ".join(f"{k} {_fmt(v)}" for k, v in final.items()))
    print(f"stopped after {fit.epochs} epoch{'' if fit.epochs == 1 else 's'} ({fit.stop_reason})")
    print(f"results in {run_dir}")
    return summary


def _write_finished(recorder: RunRecorder, fit, about: dict, net, plot: Callable[[], list[str]]) -> dict:
    """model.pt, metrics.csv, the plots and, last, result.csv of a finished run; its summary.
    A signal meanwhile waits until all are written."""
    try:
        with interrupts.deferred():
            recorder.save_model(net.state_dict())
            recorder.flush_metrics()
            figures = plot()
            summary = run_summary(fit.metrics, epochs=fit.epochs, stop_reason=fit.stop_reason,
                                  train_seconds=fit.train_seconds, status="finished",
                                  about=about | {"figures": " ".join(figures)})
            recorder.write_result(recorder.config, summary)
    except KeyboardInterrupt as exc:
        _say_of_run(f"interrupted after the run finished; its results are complete in {_shown(recorder.run_dir)}")
        exc.reported = True
        raise
    return summary


def _restart_best_if_monitor_changed(resumed: checkpoint.Checkpoint, task, monitor: str, mode: str) -> bool:
    """A best value kept for another metric, or the other way round, means nothing now: it is
    dropped (True) if the monitored metric or its mode changed."""
    before = resolve_monitor(task, resumed.monitor, resumed.config["trainer"].get("mode"))
    if before == (monitor, mode):
        return False
    log.info("resuming with trainer.monitor=%s (%s) instead of %s (%s): the best so far, and best.pt, "
             "start again from this run's epochs", monitor, mode, *before)
    resumed.state.best = None
    return True


def _files_gone_on_from(resumed: checkpoint.Checkpoint | None, run_dir: Path, best_restarts: bool) -> tuple[str, ...]:
    """The files in ``run_dir`` a run goes on from: when it resumes a checkpoint of that same
    directory, its last.pt, metrics.csv and (unless the best starts again) best.pt."""
    if resumed is None or resumed.path.parent.resolve() != run_dir.resolve():
        return ()
    return (checkpoint.LAST_FILE, METRICS_FILE) + (() if best_restarts else (checkpoint.BEST_FILE,))


def _best_carried_over(resumed: checkpoint.Checkpoint | None, run_dir: Path, best_restarts: bool) -> dict[str, Path]:
    """When a run resumes a checkpoint of another directory: that directory's best.pt (or the
    checkpoint itself, if it is one) when it holds the best so far, to copy into ``run_dir``."""
    if resumed is None or best_restarts or resumed.path.parent.resolve() == run_dir.resolve():
        return {}
    path = resumed.path if resumed.path.name == checkpoint.BEST_FILE else resumed.path.parent / checkpoint.BEST_FILE
    if resumed.state.best is None or not path.is_file():
        return {}
    try:
        best = checkpoint.load(path)
    except LabError:
        return {}
    as_lines = lambda rows: [checkpoint.history_line(row) for row in rows]  # noqa: E731 - NaN equals NaN there
    ours = as_lines(best.history) == as_lines(resumed.history[: len(best.history)])  # an epoch it goes on from
    return {checkpoint.BEST_FILE: path} if ours and best.state.best == resumed.state.best else {}


@contextlib.contextmanager
def _second_signal_ignored():
    """Runs the block to its end; a signal that arrives meanwhile (a second Ctrl-C while the
    first is handled) is dropped: the run is stopping already."""
    try:
        with interrupts.deferred():
            yield
    except KeyboardInterrupt:
        pass


def _trainer_options(config: dict) -> dict:
    """The trainer's keys less ``resume`` (read here, not by the Trainer)."""
    return {k: v for k, v in config["trainer"].items() if k != "resume"}


def _end_epoch(recorder: RunRecorder, state) -> None:
    with interrupts.deferred():  # a signal now waits until the epoch is fully saved
        recorder.end_epoch(state)


class _Stopped:
    """Writes result.csv and says what happened when a run stops before it finishes."""

    def __init__(self, recorder, config, about, resumed, overrides) -> None:
        self.recorder, self.config, self.about = recorder, config, about
        self.resumed, self.overrides = resumed, overrides

    def _write(self, status: str) -> dict:
        rows = self.recorder.rows
        last = rows[-1] if rows else {}
        summary = run_summary(last, epochs=last.get("epoch", 0), stop_reason=status,
                              train_seconds=last.get("seconds", 0.0), status=status, about=self.about)
        self.recorder.write_result(self.config, summary)
        return summary

    def _checkpoint(self) -> Path | None:
        """The checkpoint of the last finished epoch: this run's last.pt, or the one it resumed from."""
        if self.recorder.saved_checkpoint is not None:
            return self.recorder.saved_checkpoint
        return self.resumed.path if self.resumed else None

    def interrupted(self, exc: KeyboardInterrupt) -> None:
        self._write("interrupted")
        name = getattr(exc, "signum", None)
        name = signal.Signals(name).name if name else "SIGINT"
        kept = self._checkpoint()
        if kept is None:
            _say_of_run(f"interrupted ({name}) before the first epoch finished; nothing to resume from")
        else:
            _say_of_run(f"interrupted ({name}); kept epoch {self.recorder.checkpoint_epoch} in {_shown(kept)}. "
                        f"To resume: {self._resume_command(kept)}")
        exc.reported = True

    def diverged(self, exc: Diverged) -> dict:
        summary = self._write("diverged")
        kept = self._checkpoint()
        where = f"last good checkpoint (epoch {self.recorder.checkpoint_epoch}): {_shown(kept)}" if kept else "no epoch finished"
        _say_of_run(f"{exc}; {where}")
        _DIVERGED.append(self.recorder.run_dir)
        return summary

    def _resume_command(self, kept: Path) -> str:
        run_dir = self.recorder.run_dir
        source = run_dir if kept == run_dir / checkpoint.LAST_FILE else kept
        args = [o for o in self.overrides if not o.startswith(("trainer.resume=", "+trainer.resume="))]
        args += [f"trainer.resume={_shown(source)}", f"hydra.run.dir={_shown(run_dir)}"]
        return " ".join(["lstmlab", *map(shlex.quote, args)])


def _shown(path: Path) -> str:
    """A path relative to the working directory when it lies inside it (as users type them)."""
    path = Path(path).absolute()
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _say(message: str) -> None:
    print(f"lstmlab: {message}", file=sys.stderr, flush=True)


def _say_of_run(message: str) -> None:
    """A line about the run: on the terminal (stderr), and at the end of its cli.log."""
    _say(message)
    _to_run_log(message)


def _to_run_log(message: str) -> None:
    """The line into the log files of the run (cli.log), not again on the terminal."""
    record = log.makeRecord(log.name, logging.ERROR, __file__, 0, message, None, None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


_DIVERGED: list[Path] = []  # run directories whose training diverged (main() exits 1)


def write_plots(run_dir: Path, task, predict) -> list[str]:
    """curves.png and the task's figures; the names of those drawn. A plotting failure is
    logged and does not fail the run."""
    from . import plots  # matplotlib is imported only once a run has trained

    drawn: list[Path | None] = []
    try:
        drawn.append(plots.write_curves(run_dir))
        drawn.extend(plots.write_figures(run_dir, task.figures(predict)))
    except Exception:  # noqa: BLE001 - the trained model and metrics are already written
        log.exception("could not draw the plots of %s", run_dir)
    return [path.name for path in drawn if path is not None]


def _fmt(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


@hydra.main(version_base="1.3", config_path="pkg://lstmlab.conf", config_name="config")
def app(cfg: DictConfig) -> float | None:
    """Trains one configuration; returns the monitored metric (the objective for sweepers).

    In a multirun a failing job is recorded (``status=failed``) instead of ending the sweep,
    and a job that finished in an earlier run of the same sweep is not run again.
    """
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    overrides = list(hydra_cfg.overrides.task)
    try:
        if hydra_cfg.mode == RunMode.MULTIRUN:
            return sweep.run_job(cfg, run_dir, lambda c, d: run(c, d, overrides=overrides), launcher=hydra_cfg.launcher)
        summary = run(cfg, run_dir, overrides=overrides)
    except KeyboardInterrupt as exc:
        if not getattr(exc, "reported", False):  # main() says so on the terminal
            _to_run_log("interrupted before training started")
        raise
    except Exception as exc:
        if _is_bad_input(exc) and not _FULL_TRACE:
            _to_run_log(f"error: {one_line(exc)}")
            raise _BadInput(exc) from exc  # past Hydra's job runner, which would print its own line
        raise
    return sweep.objective(summary)


class _BadInput(BaseException):
    """Carries a bad-input error from a job to main() without Hydra's "Error executing job" line."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


_FULL_TRACE = False  # HYDRA_FULL_ERROR=1 was set by the user: let every error raise with its traceback


def main() -> None:
    """Console entry point: Hydra's app, with bad input reported in one line (exit 2).

    Exit codes: 0 finished, 1 a run diverged or a sweep job failed, 2 bad input, 130 / 143 interrupted
    by SIGINT / SIGTERM.
    """
    register_configs()
    interrupts.install()
    _DIVERGED.clear()
    global _FULL_TRACE
    _FULL_TRACE = full_trace = os.environ.get("HYDRA_FULL_ERROR") == "1"
    os.environ["HYDRA_FULL_ERROR"] = "1"  # let errors reach us; we print them in one line
    try:
        app()
    except _BadInput as exc:
        _say(f"error: {one_line(exc.error)}")
        sys.exit(2)
    except KeyboardInterrupt as exc:
        sweep.close_open_sweep(interrupted=True)
        if not getattr(exc, "reported", False):
            _say("interrupted before training started")
        sys.exit(interrupts.exit_code(exc))
    except Exception as exc:  # noqa: BLE001 - the one place that turns errors into a message
        outcome = sweep.close_open_sweep(interrupted=False)
        if outcome is not None and len(outcome.failed) == len(outcome.frame) and not full_trace:
            # e.g. Optuna's sweeper, asked for the best of trials that all failed
            _say(f"every job of the sweep failed or diverged, so the sweeper stopped: {one_line(exc)}")
            sys.exit(1)
        if outcome is None and _raised_by_launcher_plugin(exc) and not full_trace:
            # e.g. hydra/launcher=slurm where there is no SLURM
            _say(f"error: hydra/launcher could not start the jobs: {one_line(exc)}")
            sys.exit(2)
        if full_trace or not _is_bad_input(exc):
            raise
        _say(f"error: {one_line(exc)}")
        sys.exit(2)
    outcome = sweep.last_outcome()
    if _DIVERGED or (outcome is not None and len(outcome.failed)):
        sys.exit(1)


def _raised_by_launcher_plugin(exc: BaseException) -> bool:
    """Whether ``exc`` came from a Hydra launcher plugin (joblib, submitit, ...) or what it calls."""
    files = [frame.f_code.co_filename for frame, _ in traceback.walk_tb(exc.__traceback__)]
    return any("hydra_plugins" in f and "launcher" in f for f in files)


def _is_bad_input(exc: BaseException) -> bool:
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    if isinstance(exc, OSError) and exc.filename:  # e.g. a run directory that cannot be written
        return True
    return isinstance(exc, (LabError, HydraException, OmegaConfBaseException))


if __name__ == "__main__":
    main()
