"""Shared test helpers: the real `lstmlab` command in a subprocess, for single runs and tiny sweeps;
the offline IMDB and GloVe data and the IMDB corpus read from it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pandas as pd
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from lstmlab.models import SequenceModel, step_loops
from lstmlab.trainer import Trainer
from lstmlab.tasks.imdb_archive import load_imdb
from lstmlab.tasks.imdb_corpus import ImdbCorpus

ROOT = Path(__file__).resolve().parents[1]
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
HAS_CPP_COMPILER = any(shutil.which(c) for c in ("g++", "c++", "clang++"))  # torch.compile's CPU backend needs one
LAB = Path(sys.executable).with_name("lstmlab")
TINY_ADDER = ["task.train_size=600", "task.test_size=200", "task.eval_size=200", "model.hidden_size=8",
              "trainer.max_epochs=2", "trainer.progress=false", "trainer.num_threads=1"]


@pytest.fixture(params=["cpp", "python"], ids=["cpp_loops", "python_loops"])
def loops(request, monkeypatch):
    """Run a test with the manual backward's loops in C++ (where they apply) and in Python
    (lstmlab.models.step_loops); the C++ half is skipped where they cannot be built."""
    if request.param == "cpp" and step_loops.compiled() is None:
        pytest.skip("the C++ step loops cannot be built here (see the warning)")
    monkeypatch.setenv(step_loops.ENV, request.param)
    return request.param


def run_lab(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    """Runs `lstmlab ARGS` with its outputs in cwd; returns the finished process."""
    environment = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"} | (env or {})
    return subprocess.run([str(LAB), *args], cwd=cwd, capture_output=True, text=True, env=environment, timeout=600)


def wait_for_file(path: Path, proc: subprocess.Popen, timeout: float = 300.0) -> None:
    """Polls for ``path``, waiting on the process between polls; fails if it exits or time runs out."""
    for _ in range(int(timeout / 0.05)):
        if path.exists():
            return
        try:
            proc.wait(timeout=0.05)
        except subprocess.TimeoutExpired:
            continue
        pytest.fail(f"lstmlab exited ({proc.returncode}) before writing {path}: {proc.stderr.read()[-2000:]}")
    pytest.fail(f"no {path} after {timeout} s")


@pytest.fixture
def lab(tmp_path):
    """lab(*overrides) runs lstmlab with hydra.run.dir=tmp_path/run."""

    def call(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
        return run_lab(*args, f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path, env=env)

    call.run_dir = tmp_path / "run"
    return call


TINY = [
    "task.train_size=300", "task.test_size=100", "task.eval_size=100", "task.eval_bits=[16]",
    "trainer.max_epochs=1", "trainer.progress=false", "trainer.num_threads=1",
]


def sweep(sweep_dir: Path, *overrides: str, env: dict | None = None) -> subprocess.CompletedProcess:
    command = [str(LAB), "-m", *overrides, *TINY, f"hydra.sweep.dir={sweep_dir}"]
    return subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=600,
                          env=os.environ | (env or {}))


def read_result(run_dir: Path) -> pd.Series:
    """The one row of a run's result.csv."""
    frame = pd.read_csv(run_dir / "result.csv")
    assert len(frame) == 1
    return frame.iloc[0]


def evaluate_saved_model(run_dir: Path) -> dict[str, float]:
    """A finished run's model.pt, built and evaluated anew on the task its config names: the
    metrics its result.csv should report."""
    cfg = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    task = instantiate(cfg.task)
    net = SequenceModel(instantiate(cfg.model, input_size=task.input_size), **task.network_options())
    net.load_state_dict(torch.load(run_dir / "model.pt", weights_only=True))
    return task.evaluate(Trainer(optimizer=None, device="cpu").predictor(net))


def results(sweep_dir: Path) -> pd.DataFrame:
    return pd.read_csv(sweep_dir / "results.csv")


@pytest.fixture(scope="session")
def interrupted(tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path]:
    """seed=0,1,2 with a real SIGINT as job 1 starts: job 0 finished, job 1 incomplete."""
    sweep_dir = tmp_path_factory.mktemp("interrupted")
    tests_on_path = os.pathsep.join(filter(None, [str(ROOT / "tests"), os.environ.get("PYTHONPATH")]))
    proc = sweep(sweep_dir, "seed=0,1,2", "model.hidden_size=4",
                 "+hydra.callbacks.interrupt={_target_:interrupt.InterruptAtJob,job:1}",
                 env={"PYTHONPATH": tests_on_path})
    return proc, sweep_dir


# the offline IMDB and GloVe subsets next to the checkout (tests of the IMDB data layer)
DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SMALL = DATA / "imdb" / "aclImdb_small.tar.gz"
GLOVE = DATA / "glove" / "glove.6B.100d.imdb.txt.gz"
needs_small = pytest.mark.skipif(not SMALL.is_file(), reason=f"small IMDB subset not found at {SMALL}")
needs_glove = pytest.mark.skipif(not GLOVE.is_file(), reason=f"GloVe subset not found at {GLOVE}")


@pytest.fixture
def no_network(monkeypatch):
    """No test may reach the internet: any real urlopen fails as if offline."""

    def offline(*args, **kwargs):
        raise urllib.error.URLError("network disabled in tests")

    monkeypatch.setattr(urllib.request, "urlopen", offline)


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> ImdbCorpus:
    if not SMALL.is_file():
        pytest.skip(f"small IMDB subset not found at {SMALL}")
    return load_imdb(SMALL, cache_dir=tmp_path_factory.mktemp("cache"), progress=False)
