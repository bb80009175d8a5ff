"""Shared by the tests: running the real CLI."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

LAB = Path(sys.executable).parent / "lstmlab"
TINY_ADDER = [
    "task=adder",
    "task.train_size=64",
    "task.test_size=32",
    "task.eval_size=16",
    "task.eval_bits=[16]",
    "trainer.max_epochs=1",
    "trainer.progress=false",
    "model.hidden_size=4",
]


def run_lab(run_dir: Path, *overrides: str) -> subprocess.CompletedProcess:
    """`lstmlab <overrides> hydra.run.dir=<run_dir>`, as a user would type it."""
    return subprocess.run(
        [str(LAB), *overrides, f"hydra.run.dir={run_dir}"], capture_output=True, text=True, timeout=300
    )


def read_result(run_dir: Path) -> dict:
    with open(run_dir / "result.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1
    return rows[0]
