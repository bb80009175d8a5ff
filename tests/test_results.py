"""The results writer: atomic files, loadable weights."""

import os

import pandas as pd
import pytest
import torch

from lstmlab.checkpoint import TrainState
from lstmlab.files import atomic_write_bytes
from lstmlab.results import EARLIER_RUN_FILES, RunRecorder

# an earlier run's files: all a run writes, with the curves and a task's figure (sin_cos's)
AN_EARLIER_RUNS_FILES = (*EARLIER_RUN_FILES, "curves.png", "prediction.png")
NOT_A_RUNS_FILES = ("report.png", "report.md", "my_notes.png")  # lstmlab-report's, and the user's own


def _earlier_run_in(run_dir):
    for name in AN_EARLIER_RUNS_FILES + NOT_A_RUNS_FILES:
        (run_dir / name).write_text("earlier run")
    # the earlier run's result.csv lists the figures it drew
    pd.DataFrame([{"seed": 1, "figures": "curves.png prediction.png", "status": "finished"}]).to_csv(
        run_dir / "result.csv", index=False)


def test_failed_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "result.csv"
    atomic_write_bytes(path, b"old")

    def broken_fsync(fd):
        raise OSError("disk full")

    monkeypatch.setattr("os.fsync", broken_fsync)
    with pytest.raises(OSError):
        atomic_write_bytes(path, b"new and half-written")
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["result.csv"]


def test_recorder_writes_metrics_result_and_model(tmp_path):
    recorder = RunRecorder(tmp_path, flush_seconds=3600)
    recorder.add_epoch({"epoch": 1, "step": 10, "seconds": 0.5, "train_loss": 0.7, "test_acc": 0.5})
    recorder.add_epoch({"epoch": 2, "step": 20, "seconds": 1.0, "train_loss": 0.3, "test_acc": 0.9})
    recorder.save_model({"w": torch.ones(2)})
    recorder.write_result({"model": {"hidden_size": 4}}, {"test_acc": 0.9, "status": "finished"})
    metrics = pd.read_csv(tmp_path / "metrics.csv")
    assert metrics["epoch"].tolist() == [1, 2]
    assert list(metrics.columns[:4]) == ["epoch", "step", "seconds", "train_loss"]
    result = pd.read_csv(tmp_path / "result.csv")
    assert result.loc[0, "model.hidden_size"] == 4 and result.loc[0, "status"] == "finished"
    assert torch.equal(torch.load(tmp_path / "model.pt", weights_only=True)["w"], torch.ones(2))


def test_written_files_get_ordinary_permissions(tmp_path):
    atomic_write_bytes(tmp_path / "result.csv", b"x")
    mask = os.umask(0)
    os.umask(mask)
    assert (tmp_path / "result.csv").stat().st_mode & 0o777 == 0o666 & ~mask


def _epoch_state(epoch: int, improved: bool) -> TrainState:
    row = {"epoch": epoch, "step": 10 * epoch, "seconds": 0.5, "train_loss": 0.7}
    return TrainState(epoch=epoch, step=10 * epoch, seconds=0.5, best=None, improved=improved, row=row,
                      model={"w": torch.ones(2)}, optimizer={}, rng={})


@pytest.mark.parametrize("kept", [(), ("last.pt", "metrics.csv", "best.pt")], ids=["new-run", "resumed-here"])
def test_an_earlier_runs_files_stay_until_the_first_epoch_is_saved(tmp_path, kept):
    """A run in the directory of an earlier one (same hydra.run.dir): bad input before training
    loses nothing; once an epoch is saved, no file of the earlier run claims to describe it."""
    _earlier_run_in(tmp_path)
    before = {name: (tmp_path / name).read_bytes() for name in AN_EARLIER_RUNS_FILES}
    history = [_epoch_state(1, True).row] if kept else []
    recorder = RunRecorder(tmp_path, config={"model": {"hidden_size": 4}}, history=history, kept=kept)
    assert all((tmp_path / name).read_bytes() == data for name, data in before.items())  # nothing touched yet
    recorder.end_epoch(_epoch_state(len(history) + 1, improved=False))
    left = sorted(p.name for p in tmp_path.iterdir())
    # a run resumed in its own directory keeps best.pt: the best of the epochs it goes on from
    assert left == sorted(["last.pt", "metrics.csv", *NOT_A_RUNS_FILES] + (["best.pt"] if kept else []))


def test_a_new_run_stopped_before_its_first_epoch_leaves_only_its_result(tmp_path):
    _earlier_run_in(tmp_path)
    RunRecorder(tmp_path).write_result({"seed": 0}, {"status": "interrupted", "epochs": 0})
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["result.csv", *NOT_A_RUNS_FILES])


def test_a_failed_job_keeps_the_checkpoints_of_its_epochs(tmp_path):
    """A sweep records a failure with a recorder of its own; the epochs saved before stay."""
    for name in EARLIER_RUN_FILES:
        (tmp_path / name).write_text("this run's")
    RunRecorder(tmp_path).write_failed({"seed": 0}, "RuntimeError: boom", "Traceback ...")
    assert (tmp_path / "last.pt").read_text() == (tmp_path / "best.pt").read_text() == "this run's"
    assert not (tmp_path / "model.pt").exists() and (tmp_path / "traceback.txt").read_text() == "Traceback ..."
