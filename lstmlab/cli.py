"""The command line: wires a task, a model, the trainer and the results writer together."""

from __future__ import annotations

import logging
import math
import os
import random
import sys
from pathlib import Path

import hydra
import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from . import sweep
from .errors import LabError, one_line
from .models import SequenceModel
from .results import RunRecorder
from .schema import register_configs, validate

log = logging.getLogger("lstmlab")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build(node: DictConfig, **kwargs):
    """hydra.utils.instantiate, with a constructor's ValueError reported as bad input."""
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as exc:
        if isinstance(exc.__cause__, (ValueError, LabError)):
            raise LabError(one_line(exc)) from exc
        raise


def run(cfg: DictConfig, run_dir: Path) -> dict:
    """Trains cfg.model on cfg.task and writes metrics.csv, model.pt and result.csv."""
    validate(cfg)
    seed_everything(cfg.seed)
    trainer = build(cfg.trainer, seed=cfg.seed)
    task = build(cfg.task)
    rnn = build(cfg.model, input_size=task.input_size)
    net = SequenceModel(rnn, **task.network_options())
    params = sum(p.numel() for p in net.parameters())
    log.info("task %s | model %s | %d parameters | device %s", type(task).__name__, rnn, params, trainer.device)

    monitor, mode = trainer.monitor_of(task)
    recorder = RunRecorder(run_dir)
    fit = trainer.fit(net, task, on_epoch=_recording(recorder))
    recorder.save_model(net.state_dict())
    final = {k: v for k, v in fit.metrics.items() if k not in ("epoch", "step", "seconds")}
    summary = final | {
        "epochs": fit.epochs,
        "stop_reason": fit.stop_reason,
        "params": params,
        "train_seconds": round(fit.train_seconds, 3),
        "device": str(trainer.device),
        "threads": torch.get_num_threads(),
        "monitor": monitor,
        "monitor_mode": mode,
        "status": "finished",
    }
    recorder.write_result(OmegaConf.to_container(cfg, resolve=True), summary)
    print(" | ".join(f"{k} {_fmt(v)}" for k, v in final.items()))
    print(f"results in {run_dir}")
    return summary


def _recording(recorder: RunRecorder):
    """The per-epoch callback: records the row; a non-finite training loss ends the run."""

    def on_epoch(row: dict) -> None:
        recorder.add_epoch(row)
        if not math.isfinite(row["train_loss"]):
            recorder.flush_metrics()
            raise FloatingPointError(
                f"train_loss is {row['train_loss']} at epoch {row['epoch']}: training diverged"
                " (try a lower trainer.optimizer.lr or trainer.grad_clip)"
            )

    return on_epoch


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
    if hydra_cfg.mode == RunMode.MULTIRUN:
        return sweep.run_job(cfg, run_dir, run, launcher=hydra_cfg.launcher)
    return sweep.objective(run(cfg, run_dir))


def main() -> None:
    """Console entry point: Hydra's app, with bad input reported in one line (exit 2)."""
    register_configs()
    full_trace = os.environ.get("HYDRA_FULL_ERROR") == "1"
    os.environ["HYDRA_FULL_ERROR"] = "1"  # let errors reach us; we print them in one line
    try:
        app()
    except KeyboardInterrupt:
        sweep.close_open_sweep(interrupted=True)
        print("lstmlab: interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as exc:  # noqa: BLE001 - the one place that turns errors into a message
        sweep.close_open_sweep(interrupted=False)
        if full_trace or not _is_bad_input(exc):
            raise
        print(f"lstmlab: error: {one_line(exc)}", file=sys.stderr)
        sys.exit(2)
    outcome = sweep.last_outcome()
    if outcome is not None and len(outcome.failed):
        sys.exit(1)


def _is_bad_input(exc: BaseException) -> bool:
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    return isinstance(exc, (LabError, HydraException, OmegaConfBaseException))


if __name__ == "__main__":
    main()
