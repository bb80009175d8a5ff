"""Shared helpers: tiny sweeps through the real command line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
LAB = Path(sys.executable).parent / "lstmlab"
TINY = [
    "task.train_size=300", "task.test_size=100", "task.eval_size=100", "task.eval_bits=[16]",
    "trainer.max_epochs=1", "trainer.progress=false", "trainer.num_threads=1",
]


def sweep(sweep_dir: Path, *overrides: str, env: dict | None = None) -> subprocess.CompletedProcess:
    command = [str(LAB), "-m", *overrides, *TINY, f"hydra.sweep.dir={sweep_dir}"]
    return subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=600,
                          env=os.environ | (env or {}))


def results(sweep_dir: Path) -> pd.DataFrame:
    return pd.read_csv(sweep_dir / "results.csv")


@pytest.fixture(scope="session")
def interrupted(tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path]:
    """seed=0,1,2 with a real SIGINT as job 1 starts: job 0 finished, job 1 incomplete."""
    sweep_dir = tmp_path_factory.mktemp("interrupted")
    proc = sweep(sweep_dir, "seed=0,1,2", "model.hidden_size=4",
                 "+hydra.callbacks.interrupt={_target_:interrupt.InterruptAtJob,job:1}",
                 env={"PYTHONPATH": str(ROOT / "tests")})
    return proc, sweep_dir


