"""Checkpoints: format, exact resume after a real SIGINT / SIGTERM, refusal of a mismatch, NaN guard."""

from __future__ import annotations

import io
import math
import os
import random
import re
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import LAB, wait_for_file

from lstmlab import checkpoint, cli
from lstmlab.errors import LabError

STEPS_PER_EPOCH = 32  # 2000 pairs in batches of 64
# the serial adder, tiny and single-threaded, so that two runs on the CPU agree bit for bit
TINY = ["task.train_size=2000", "task.test_size=200", "task.eval_bits=[16]", "task.eval_size=200",
        "model.hidden_size=8", "trainer.num_threads=1", "trainer.device=cpu", "trainer.target_metric=null",
        "trainer.progress=false", "seed=1"]
MANY_EPOCHS = "trainer.max_epochs=500"  # a run that is still training when the signal comes


def _env() -> dict:
    return {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}


def lstmlab(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(LAB), *args], capture_output=True, text=True, env=_env(), timeout=600)


def interrupted_run(run_dir: Path, signum: int, *args: str) -> subprocess.CompletedProcess:
    """Starts a long run, sends ``signum`` once its first epoch's last.pt exists, waits for the exit."""
    proc = subprocess.Popen([str(LAB), *TINY, MANY_EPOCHS, *args, f"hydra.run.dir={run_dir}"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    try:
        wait_for_file(run_dir / checkpoint.LAST_FILE, proc, timeout=300)
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def metrics(run_dir: Path) -> pd.DataFrame:
    """metrics.csv without its wall-clock column."""
    return pd.read_csv(run_dir / "metrics.csv").drop(columns="seconds")


def result(run_dir: Path) -> dict:
    return pd.read_csv(run_dir / "result.csv").iloc[0].to_dict()


def resume_command(stderr: str) -> list[str]:
    """The arguments of the 'To resume: lstmlab ...' command the interrupted run printed."""
    command = stderr.strip().splitlines()[-1].split("To resume: ", 1)[1]
    return shlex.split(command)[1:]


@pytest.fixture
def in_process(monkeypatch, capfd):
    """Runs ``lstmlab.cli.main`` in this process (no start-up cost); returns (exit code, stderr)."""
    monkeypatch.setenv("HYDRA_FULL_ERROR", "0")  # restored afterwards (main() sets it to 1)
    handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}

    def call(*args: str) -> tuple[int, str]:
        monkeypatch.setattr(sys, "argv", ["lstmlab", *args])
        with pytest.raises(SystemExit) as exited:
            cli.main()
        return exited.value.code, capfd.readouterr().err

    yield call
    for signum, handler in handlers.items():
        signal.signal(signum, handler)


@pytest.fixture(scope="module")
def terminated(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """A run stopped by SIGTERM after its first epoch (shared; tests copy it before changing it)."""
    run_dir = tmp_path_factory.mktemp("terminated") / "run"
    return run_dir, interrupted_run(run_dir, signal.SIGTERM, "task.loss=mse")


# ---------------------------------------------------------------- the real thing, end to end
def test_sigint_then_resume_equals_an_uninterrupted_run(tmp_path):
    run_dir = tmp_path / "run"
    stopped = interrupted_run(run_dir, signal.SIGINT)
    assert stopped.returncode == 130, stopped.stderr
    done = checkpoint.load(run_dir / "last.pt").state.epoch
    assert done >= 1
    assert metrics(run_dir)["epoch"].tolist() == list(range(1, done + 1))  # the partial epoch is dropped
    assert result(run_dir)["status"] == "interrupted" and result(run_dir)["epochs"] == done
    assert not (run_dir / "model.pt").exists()

    total = done + 2
    args = [a for a in resume_command(stopped.stderr) if not a.startswith("trainer.max_epochs=")]
    resumed = lstmlab(*args, f"trainer.max_epochs={total}")
    assert resumed.returncode == 0, resumed.stderr
    reference = lstmlab(*TINY, f"trainer.max_epochs={total}", f"hydra.run.dir={tmp_path / 'reference'}")
    assert reference.returncode == 0, reference.stderr

    pd.testing.assert_frame_equal(metrics(run_dir), metrics(tmp_path / "reference"), check_exact=True)
    ours, theirs = result(run_dir), result(tmp_path / "reference")
    for column in ("train_loss", "test_loss", "test_acc", "exhaustive_acc", "acc_16bit", "epochs", "status"):
        assert ours[column] == theirs[column], column
    weights = torch.load(run_dir / "model.pt", weights_only=True)
    expected = torch.load(tmp_path / "reference" / "model.pt", weights_only=True)
    assert weights.keys() == expected.keys()
    assert all(torch.equal(weights[k], expected[k]) for k in expected)


def test_sigterm_keeps_the_last_finished_epoch_and_says_how_to_resume(terminated):
    run_dir, stopped = terminated
    assert stopped.returncode == 143
    lines = stopped.stderr.strip().splitlines()
    assert len(lines) == 1 and "interrupted (SIGTERM)" in lines[0], stopped.stderr
    assert f"trainer.resume={run_dir} hydra.run.dir={run_dir}" in lines[0]
    assert "task.loss=mse" in resume_command(stopped.stderr)
    done = checkpoint.load(run_dir / "last.pt").state.epoch
    assert metrics(run_dir)["epoch"].tolist() == list(range(1, done + 1))
    assert result(run_dir)["status"] == "interrupted"
    assert "Traceback" not in stopped.stderr
    assert "interrupted (SIGTERM); kept epoch" in (run_dir / "cli.log").read_text().splitlines()[-1]


def test_a_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(terminated, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(terminated[0], run_dir)
    before = checkpoint.load(run_dir / "last.pt")
    # Adam at lr 1e30 makes the MSE overflow on the next step
    diverged = lstmlab(*TINY, "task.loss=mse", "trainer.optimizer.lr=1e30", f"trainer.max_epochs={before.state.epoch + 3}",
                       f"trainer.resume={run_dir}", f"hydra.run.dir={run_dir}")
    assert diverged.returncode == 1, diverged.stderr
    lines = diverged.stderr.strip().splitlines()
    assert len(lines) == 1, diverged.stderr
    assert re.search(rf"diverged at epoch {before.state.epoch + 1}, step \d+: loss is (inf|nan)", lines[0])
    assert f"{run_dir / 'last.pt'}" in lines[0]
    after = checkpoint.load(run_dir / "last.pt")
    assert after.state.epoch == before.state.epoch
    assert all(torch.equal(after.state.model[k], before.state.model[k]) for k in before.state.model)
    assert result(run_dir)["status"] == "diverged"
    assert metrics(run_dir)["epoch"].tolist() == list(range(1, before.state.epoch + 1))


def test_resume_refuses_a_checkpoint_of_another_model_shape(terminated, tmp_path, in_process):
    code, stderr = in_process(*TINY, "task.loss=mse", "model.hidden_size=9", MANY_EPOCHS,
                              f"trainer.resume={terminated[0]}", f"hydra.run.dir={tmp_path}")
    assert code == 2
    lines = stderr.strip().splitlines()
    assert len(lines) == 1
    assert "model.hidden_size: 8 in the checkpoint, 9 now" in lines[0]
    assert "task.loss" not in lines[0]  # only the keys that differ
    assert not (tmp_path / "result.csv").exists()


def test_resuming_a_checkpoint_with_no_epochs_left_finishes_the_run_at_once(terminated, tmp_path):
    """As when the signal came while the last epoch was being saved: the printed command finishes it."""
    done = checkpoint.load(terminated[0] / "last.pt").state.epoch
    proc = lstmlab(*TINY, "task.loss=mse", f"trainer.max_epochs={done}", f"trainer.resume={terminated[0]}",
                   f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr
    assert f"has done {done} epochs (trainer.max_epochs={done}): nothing left to train" in proc.stdout + proc.stderr
    assert (result(tmp_path)["status"], result(tmp_path)["epochs"]) == ("finished", done)
    assert len(pd.read_csv(tmp_path / "metrics.csv")) == done and (tmp_path / "model.pt").exists()


def test_best_pt_holds_the_best_epoch(terminated):
    run_dir = terminated[0]
    best = checkpoint.load(run_dir / "best.pt")
    rows = pd.read_csv(run_dir / "metrics.csv")
    assert best.monitor == "exhaustive_acc"
    assert best.state.best == rows["exhaustive_acc"].max()
    assert best.history[-1]["exhaustive_acc"] == best.state.best
    assert checkpoint.load_weights(run_dir / "best.pt").keys() == best.state.model.keys()


# ---------------------------------------------------------------- the format
def test_rng_states_survive_a_weights_only_round_trip():
    data_order = torch.Generator().manual_seed(3)
    saved = checkpoint.capture_rng(data_order)
    buffer = io.BytesIO()
    torch.save(saved, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)

    def draw():
        return (torch.rand(3).tolist(), random.random(), np.random.rand(3).tolist(), np.random.randn(),
                torch.randperm(10, generator=data_order).tolist())

    first = draw()
    checkpoint.restore_rng(loaded, data_order)
    assert draw() == first


def test_config_differences_name_only_shape_and_task_keys():
    saved = {"seed": 0, "model": {"hidden_size": 8}, "task": {"bits": 8}, "trainer": {"max_epochs": 5}}
    grown = {**saved, "trainer": {"max_epochs": 50}}
    assert checkpoint.config_differences(saved, grown) == []
    other = {**saved, "model": {"hidden_size": 16}, "task": {"bits": 8, "extra": 1}}
    assert checkpoint.config_differences(saved, other) == [
        "model.hidden_size: 8 in the checkpoint, 16 now", "task.extra: <absent> in the checkpoint, 1 now"]
    # how the data is fetched and shown may change, e.g. on another machine
    moved = {**saved, "task": {"bits": 8, "cache_dir": "/scratch", "progress": False, "eval_batch_size": 512}}
    assert checkpoint.config_differences(saved, moved) == []


def test_load_weights_reads_model_pt_and_refuses_other_files(tmp_path):
    torch.save({"head.weight": torch.ones(2)}, tmp_path / "model.pt")
    assert torch.equal(checkpoint.load_weights(tmp_path / "model.pt")["head.weight"], torch.ones(2))
    torch.save({"steps": [1, 2]}, tmp_path / "other.pt")
    with pytest.raises(LabError, match="other.pt: not a model state_dict"):
        checkpoint.load_weights(tmp_path / "other.pt")


# ---------------------------------------------------------------- stopping without losing anything
def test_a_resume_refused_for_bad_input_keeps_the_earlier_result(terminated, tmp_path, in_process):
    run_dir = tmp_path / "run"
    shutil.copytree(terminated[0], run_dir)
    code, stderr = in_process(*TINY, "task.loss=mse", MANY_EPOCHS, "+trainer.optimizer.momentum=0.9",
                              f"trainer.resume={run_dir}", f"hydra.run.dir={run_dir}")
    assert code == 2 and "trainer.optimizer:" in stderr and "momentum" in stderr
    assert result(run_dir)["status"] == "interrupted"  # the earlier run's result.csv, as it was


def test_resuming_with_another_monitor_starts_the_best_again(tmp_path):
    """After one epoch the best exhaustive accuracy is half a percent; an MSE loss of 0.24 would
    never beat it, and best.pt would stay at an epoch the new metric never chose."""
    run_dir = tmp_path / "run"
    first = lstmlab(*TINY, "task.loss=mse", "trainer.max_epochs=1", f"hydra.run.dir={run_dir}")
    assert first.returncode == 0, first.stderr
    assert checkpoint.load(run_dir / "best.pt").state.best < 0.01
    proc = lstmlab(*TINY, "task.loss=mse", "trainer.max_epochs=2", "trainer.monitor=test_loss",
                   f"trainer.resume={run_dir}", f"hydra.run.dir={run_dir}")
    assert proc.returncode == 0, proc.stderr
    best = checkpoint.load(run_dir / "best.pt")
    assert (best.monitor, best.state.epoch) == ("test_loss", 2)
    assert best.state.best == metrics(run_dir)["test_loss"].iloc[-1]


def test_metrics_csv_holds_every_saved_epoch_when_a_run_fails(tmp_path, in_process, monkeypatch):
    from lstmlab.results import RunRecorder
    from lstmlab.trainer import Trainer

    monkeypatch.setattr(cli, "RunRecorder", lambda *a, **k: RunRecorder(*a, **k, flush_seconds=1e9))
    evaluate, epochs = Trainer.evaluate, []

    def fails_in_epoch_3(self, *args):  # each epoch is evaluated once
        epochs.append(len(epochs) + 1)
        if epochs[-1] == 3:
            raise RuntimeError("a bug in epoch 3")
        return evaluate(self, *args)

    monkeypatch.setattr(Trainer, "evaluate", fails_in_epoch_3)
    monkeypatch.setattr(sys, "argv", ["lstmlab", *TINY, MANY_EPOCHS, f"hydra.run.dir={tmp_path / 'run'}"])
    with pytest.raises(RuntimeError, match="a bug in epoch 3"):
        cli.main()
    assert metrics(tmp_path / "run")["epoch"].tolist() == [1, 2]  # as last.pt holds them


def test_a_signal_while_a_finished_run_is_written_waits_and_is_reported(tmp_path, in_process, monkeypatch):
    monkeypatch.setattr(cli, "write_plots", lambda *args: os.kill(os.getpid(), signal.SIGINT) or [])
    code, stderr = in_process(*TINY, "trainer.max_epochs=1", f"hydra.run.dir={tmp_path / 'run'}")
    assert code == 130
    assert stderr.strip().splitlines() == [
        f"lstmlab: interrupted after the run finished; its results are complete in {tmp_path / 'run'}"]
    assert result(tmp_path / "run")["status"] == "finished" and (tmp_path / "run" / "model.pt").exists()


def test_a_second_ctrl_c_while_the_first_is_handled_changes_nothing(tmp_path, in_process, monkeypatch):
    from lstmlab.results import RunRecorder
    from lstmlab.trainer import Trainer

    train_epoch, write_result = Trainer._train_epoch, RunRecorder.write_result

    def ctrl_c_in_epoch_2(self, *args):
        if args[-2] == 2:  # (net, run, task, optimizer, generator, bar, epoch, step)
            os.kill(os.getpid(), signal.SIGINT)
        return train_epoch(self, *args)

    def ctrl_c_again(self, *args):
        os.kill(os.getpid(), signal.SIGINT)  # arrives while the first one's result.csv is written
        return write_result(self, *args)

    monkeypatch.setattr(Trainer, "_train_epoch", ctrl_c_in_epoch_2)
    monkeypatch.setattr(RunRecorder, "write_result", ctrl_c_again)
    code, stderr = in_process(*TINY, MANY_EPOCHS, f"hydra.run.dir={tmp_path / 'run'}")
    assert code == 130
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lstmlab: interrupted (SIGINT); kept epoch 1 in"), stderr
    assert result(tmp_path / "run")["status"] == "interrupted"


def test_a_ctrl_c_before_training_is_in_the_runs_log(tmp_path, in_process, monkeypatch):
    """e.g. while a large dataset is read: the directory then holds no result.csv, and its log says why."""
    monkeypatch.setattr(cli, "SequenceModel", lambda *args, **kwargs: os.kill(os.getpid(), signal.SIGINT))
    code, stderr = in_process(*TINY, f"hydra.run.dir={tmp_path / 'run'}")
    assert code == 130 and stderr.strip() == "lstmlab: interrupted before training started"
    assert (tmp_path / "run" / "cli.log").read_text().splitlines()[-1].endswith("interrupted before training started")


def test_a_run_resumed_into_another_directory_keeps_the_best_pt_of_its_epochs(tmp_path):
    """Its later epochs do not beat the best so far (lr 1e-30: the weights stay put), so it never
    writes a best.pt of its own: the one it goes on from comes along."""
    first, second = tmp_path / "first", tmp_path / "second"
    proc = lstmlab(*TINY, "trainer.max_epochs=1", f"hydra.run.dir={first}")
    assert proc.returncode == 0, proc.stderr
    proc = lstmlab(*TINY, "trainer.max_epochs=2", "trainer.optimizer.lr=1e-30",
                   f"trainer.resume={first / 'last.pt'}", f"hydra.run.dir={second}")
    assert proc.returncode == 0, proc.stderr
    assert pd.read_csv(second / "metrics.csv")["epoch"].tolist() == [1, 2]
    assert (second / "best.pt").read_bytes() == (first / "best.pt").read_bytes()
    assert checkpoint.load(second / "best.pt").state.epoch == 1


def _saved(tmp_path, payload) -> Path:
    return _saved_as(tmp_path / "last.pt", payload)


def test_the_metric_rows_come_back_from_a_checkpoint_as_they_went_in(tmp_path):
    rows = [{"epoch": 1, "step": 10, "seconds": 0.25, "train_loss": 0.5, "test_acc": float("nan")},
            {"epoch": 2, "step": 20, "seconds": 0.5, "train_loss": 1 / 3, "test_acc": 0.875}]
    state = checkpoint.TrainState(epoch=2, step=20, seconds=0.5, best=0.875, improved=True, row=rows[-1],
                                  model={"w": torch.ones(2)}, optimizer={}, rng={})
    payload = checkpoint.to_payload(state, {"seed": 0}, rows, "test_acc")
    assert isinstance(payload["history"], str)  # one object for torch.save to pickle, however long the run
    loaded = checkpoint.load(_saved(tmp_path, payload)).history
    assert [type(v) for v in loaded[0].values()] == [int, int, float, float, float]
    assert math.isnan(loaded[0].pop("test_acc")) and loaded == [{k: v for k, v in rows[0].items() if k != "test_acc"},
                                                                 rows[1]]


def test_a_checkpoint_of_format_1_still_loads(tmp_path):
    rows = [{"epoch": 1, "step": 10, "seconds": 0.25, "train_loss": 0.5}]
    state = checkpoint.TrainState(epoch=1, step=10, seconds=0.25, best=None, improved=False, row=rows[-1],
                                  model={"w": torch.ones(2)}, optimizer={}, rng={})
    payload = checkpoint.to_payload(state, {"seed": 0}, rows, None) | {"version": 1, "history": rows}
    assert checkpoint.load(_saved(tmp_path, payload)).history == rows


@pytest.mark.parametrize("best_pt", ["of-its-epochs", "of-another-run", "another-best", "none"])
def test_only_a_best_pt_of_the_epochs_a_run_goes_on_from_comes_along(tmp_path, best_pt):
    rows = [{"epoch": 1, "step": 1, "seconds": 0.1, "acc": 0.5}, {"epoch": 2, "step": 2, "seconds": 0.2, "acc": 0.4}]

    def saved(name, history, best):
        state = checkpoint.TrainState(epoch=len(history), step=len(history), seconds=0.1, best=best, improved=True,
                                      row=history[-1], model={"w": torch.ones(1)}, optimizer={}, rng={})
        return _saved_as(tmp_path / "source" / name, checkpoint.to_payload(state, {"seed": 0}, history, "acc"))

    last = saved("last.pt", rows, best=0.5)
    if best_pt != "none":
        history = {"of-another-run": [rows[0] | {"acc": 0.5, "seconds": 9.0}]}.get(best_pt, rows[:1])
        saved("best.pt", history, best=0.6 if best_pt == "another-best" else 0.5)
    carried = cli._best_carried_over(checkpoint.load(last), tmp_path / "new", best_restarts=False)
    assert carried == ({"best.pt": tmp_path / "source" / "best.pt"} if best_pt == "of-its-epochs" else {})


def _saved_as(path: Path, payload) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(payload, path)
    return path
