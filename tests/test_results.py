"""The results writer: atomic files, loadable weights."""

import os

import pandas as pd
import pytest
import torch

from lstmlab.results import RunRecorder, atomic_write_bytes


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
