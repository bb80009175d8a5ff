"""The app's per-epoch recording: a diverged loss ends the run with a one-line reason."""

import pandas as pd
import pytest

from lstmlab.cli import _recording
from lstmlab.results import RunRecorder


def test_a_non_finite_training_loss_ends_the_run_and_keeps_the_epochs(tmp_path):
    on_epoch = _recording(RunRecorder(tmp_path, flush_seconds=3600))
    on_epoch({"epoch": 1, "step": 10, "seconds": 0.1, "train_loss": 0.7})
    with pytest.raises(FloatingPointError, match="train_loss is nan at epoch 2: training diverged"):
        on_epoch({"epoch": 2, "step": 20, "seconds": 0.2, "train_loss": float("nan")})
    assert pd.read_csv(tmp_path / "metrics.csv")["epoch"].tolist() == [1, 2]
