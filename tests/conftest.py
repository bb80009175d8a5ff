"""Shared test helpers: run the real `lstmlab` command in a subprocess."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

LAB = Path(sys.executable).with_name("lstmlab")
TINY_ADDER = ["task.train_size=600", "task.test_size=200", "task.eval_size=200", "model.hidden_size=8",
              "trainer.max_epochs=2", "trainer.progress=false", "trainer.num_threads=1"]


def run_lab(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    """Runs `lstmlab ARGS` with its outputs in cwd; returns the finished process."""
    environment = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"} | (env or {})
    return subprocess.run([str(LAB), *args], cwd=cwd, capture_output=True, text=True, env=environment, timeout=600)


@pytest.fixture
def lab(tmp_path):
    """lab(*overrides) runs lstmlab with hydra.run.dir=tmp_path/run."""

    def call(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
        return run_lab(*args, f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path, env=env)

    call.run_dir = tmp_path / "run"
    return call
