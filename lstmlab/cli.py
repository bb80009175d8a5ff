"""The command line: wires a task, a model, the trainer and the results writer together."""

from __future__ import annotations

import logging
import os
import random
import sys
from pathlib import Path

import hydra
import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

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

    recorder = RunRecorder(run_dir)
    fit = trainer.fit(net, task, on_epoch=recorder.add_epoch)
    recorder.save_model(net.state_dict())
    recorder.flush_metrics()
    write_plots(run_dir, task, trainer.predictor(net))
    final = {k: v for k, v in fit.metrics.items() if k not in ("epoch", "step", "seconds")}
    summary = final | {
        "epochs": fit.epochs,
        "stop_reason": fit.stop_reason,
        "params": params,
        "train_seconds": round(fit.train_seconds, 3),
        "device": str(trainer.device),
        "status": "finished",
    }
    recorder.write_result(OmegaConf.to_container(cfg, resolve=True), summary)
    print(" | ".join(f"{k} {_fmt(v)}" for k, v in final.items()))
    print(f"stopped after {fit.epochs} epochs ({fit.stop_reason})")
    print(f"results in {run_dir}")
    return summary


def write_plots(run_dir: Path, task, predict) -> None:
    """curves.png and the task's figures; a plotting failure is logged and does not fail the run."""
    from . import plots  # matplotlib is imported only once a run has trained

    try:
        plots.write_curves(run_dir)
        plots.write_figures(run_dir, task.figures(predict))
    except Exception:  # noqa: BLE001 - the trained model and metrics are already written
        log.exception("could not draw the plots of %s", run_dir)


def _fmt(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


@hydra.main(version_base="1.3", config_path="pkg://lstmlab.conf", config_name="config")
def app(cfg: DictConfig) -> float | None:
    """One job: returns the monitored metric, the objective a sweeper optimises."""
    try:
        summary = run(cfg, Path(HydraConfig.get().runtime.output_dir))
    except LabError as exc:
        exit_with_one_line(exc)  # here, not in main(): Hydra would first log the job's failure
    monitor = cfg.trainer.monitor
    return summary.get(monitor) if monitor else None


_SHOW_TRACEBACKS = os.environ.get("HYDRA_FULL_ERROR") == "1"


def exit_with_one_line(exc: BaseException) -> None:
    """Bad input: one line on stderr and exit code 2; the full trace with HYDRA_FULL_ERROR=1."""
    if _SHOW_TRACEBACKS:
        raise exc
    print(f"lstmlab: error: {one_line(exc)}", file=sys.stderr)
    sys.exit(2)


def main() -> None:
    """Console entry point: Hydra's app, with bad input reported in one line (exit 2)."""
    register_configs()
    os.environ["HYDRA_FULL_ERROR"] = "1"  # let Hydra's own errors reach us, to print in one line
    try:
        app()
    except Exception as exc:  # noqa: BLE001 - the one place that turns errors into a message
        if not _is_bad_input(exc):
            raise
        exit_with_one_line(exc)


def _is_bad_input(exc: BaseException) -> bool:
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    return isinstance(exc, (LabError, HydraException, OmegaConfBaseException))


if __name__ == "__main__":
    main()
