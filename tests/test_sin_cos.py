"""sin → cos regression (lstmlab/tasks/sin_cos.py): the note's data layout, the stopping rule,
bad sizes, and the CLI run end to end with its plots."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch
from torch import nn

from lstmlab.errors import LabError
from lstmlab.models import HandLSTM, SequenceModel
from lstmlab.schema import SinCosConf
from lstmlab.tasks.base import Batch
from lstmlab.tasks.sin_cos import SinCosTask, strided_sequences, time_order
from lstmlab.trainer import Trainer

PNG = b"\x89PNG\r\n\x1a\n"


def note_points():
    """The note's data: 200 points over [0, 12π], input sin t, target cos t."""
    t = torch.linspace(0, 12 * math.pi, 200, dtype=torch.float64)
    return torch.sin(t).float(), torch.cos(t).float()


# ---------------------------------------------------------------- data layout
def test_training_half_is_the_notes_reshape_fed_batch_first():
    x, y = note_points()
    task = SinCosTask()
    note_x = x[:100].reshape(-1, 5, 1)  # the note: (20 steps, batch 5, 1 feature), sequence-first
    assert note_x.shape == (20, 5, 1)
    assert task.train_inputs.shape == (5, 20, 1)  # what the trainer gets: batch-first
    assert torch.equal(task.train_inputs.transpose(0, 1), note_x)
    assert torch.equal(task.train_targets.transpose(0, 1), y[:100].reshape(-1, 5, 1))
    # sequence j holds every 5th point starting at j: element [step i, sequence j] = point 5i + j
    assert torch.equal(task.train_inputs[2, :, 0], x[2:100:5])
    assert task.train_inputs[3, 7, 0] == x[5 * 7 + 3]


def test_test_half_is_the_second_half_laid_out_the_same_way():
    x, y = note_points()
    task = SinCosTask()
    assert torch.equal(task.test_inputs.transpose(0, 1), x[100:].reshape(-1, 5, 1))
    assert torch.equal(task.test_targets.transpose(0, 1), y[100:].reshape(-1, 5, 1))


def test_one_full_batch_per_epoch():
    task = SinCosTask()
    batches = list(task.train_batches(100_000, shuffle=False, generator=torch.Generator()))
    assert task.num_train_batches(100_000) == len(batches) == 1
    assert torch.equal(batches[0].inputs, task.train_inputs)


def test_a_sequence_first_lstm_sees_the_notes_tensor():
    """SequenceModel hands a batch_first=False LSTM the note's (20, 5, 1) tensor: same outputs."""
    x, _ = note_points()
    task = SinCosTask()
    torch.manual_seed(0)
    net = SequenceModel(nn.LSTM(1, 16), **task.network_options())
    with torch.no_grad():
        note_out = net.head(net.rnn(x[:100].reshape(-1, 5, 1))[0])  # LSTM then Linear at every step
        ours = net(task.train_inputs)
    assert torch.allclose(ours.transpose(0, 1), note_out, atol=1e-6)


def test_time_order_inverts_the_layout_and_prediction_is_on_the_time_axis():
    values = torch.arange(60.0)
    assert torch.equal(time_order(strided_sequences(values, 12)), values)
    task = SinCosTask(points=120, window=10)
    prediction = task.prediction(lambda batch: batch.targets)  # a perfect model
    assert torch.allclose(prediction, torch.cos(task.t).float())


def test_figure_draws_sin_cos_and_the_prediction_with_the_end_of_training():
    task = SinCosTask()
    plot = task.figures(lambda batch: batch.targets)["prediction"]
    labels = [c.label for c in plot.curves]
    assert labels == ["input sin t", "target cos t", "prediction"]
    assert [c.dashed for c in plot.curves] == [False, False, True]
    assert all(len(c.x) == len(c.y) == 200 for c in plot.curves)
    (x_end, _), = plot.vlines
    assert task.t[99] < x_end < task.t[100]


def test_evaluate_reports_train_and_test_mse():
    task = SinCosTask()
    metrics = task.evaluate(lambda batch: torch.zeros_like(batch.targets))
    cos = torch.cos(task.t)
    assert metrics["train_mse"] == pytest.approx(float((cos[:100] ** 2).mean()), rel=1e-5)
    assert metrics["test_mse"] == pytest.approx(float((cos[100:] ** 2).mean()), rel=1e-5)


# ---------------------------------------------------------------- sizes
@pytest.mark.parametrize(
    "keys, message",
    [
        ({"window": 150}, "task.window=150: expected at most the 100 points"),
        ({"window": 30}, "task.window=30: expected a divisor"),
        ({"train_fraction": 1.5}, "task.train_fraction=1.5: expected a fraction"),
        ({"train_fraction": 0.0}, "task.train_fraction=0.0: expected a fraction"),
        ({"points": 1}, "task.points=1: expected a number >= 2"),
        ({"end_pi": 0.0}, "task.end_pi=0.0: expected more than task.start_pi"),
        ({"window": 0}, "task.window=0: expected a number >= 1"),
    ],
)
def test_bad_sizes_name_the_key_in_the_schema_and_the_constructor_alike(keys, message):
    with pytest.raises(LabError, match=message.replace("(", r"\(")):
        SinCosConf(**keys)
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        SinCosTask(**keys)


def test_other_sizes_lay_out_the_same_way():
    task = SinCosTask(points=300, end_pi=4.0, window=15, train_fraction=0.6)
    assert task.train_inputs.shape == (12, 15, 1) and task.test_inputs.shape == (8, 15, 1)


# ---------------------------------------------------------------- stopping rule
def _fit(target_loss, max_epochs):
    task = SinCosTask()
    torch.manual_seed(0)
    net = SequenceModel(HandLSTM(1, 16, batch_first=False), **task.network_options())
    optimizer = lambda params: torch.optim.Adam(params, lr=1e-2)  # noqa: E731
    trainer = Trainer(optimizer, device="cpu", max_epochs=max_epochs, batch_size=100_000, shuffle=False,
                      target_loss=target_loss, num_threads=1, progress=False)
    rows = []
    return trainer.fit(net, task, on_epoch=rows.append), rows


def test_stops_at_the_first_epoch_whose_training_loss_is_below_the_target():
    _, rows = _fit(None, 12)
    losses = [row["train_loss"] for row in rows]
    target = sorted(losses)[3]  # reached after a few epochs, not at once
    first_below = next(i for i, loss in enumerate(losses) if loss < target) + 1
    fit, stopped_rows = _fit(target, 12)
    assert fit.stop_reason == "target_loss"
    assert fit.epochs == len(stopped_rows) == first_below
    assert stopped_rows[-1]["train_loss"] < target <= min(row["train_loss"] for row in stopped_rows[:-1])


# ---------------------------------------------------------------- the CLI end to end
SIN_COS = ["task=sin_cos", "trainer.progress=false"]


def test_cli_trains_reports_test_mse_and_draws_both_plots(lab):
    done = lab(*SIN_COS, "trainer.max_epochs=30")
    assert done.returncode == 0, done.stderr
    metrics = pd.read_csv(lab.run_dir / "metrics.csv")
    assert list(metrics["epoch"]) == list(range(1, 31))
    assert {"train_loss", "train_mse", "test_mse"} <= set(metrics.columns)
    assert metrics["train_loss"].iloc[-1] < metrics["train_loss"].iloc[0]
    result = pd.read_csv(lab.run_dir / "result.csv").iloc[0]
    assert result["epochs"] == 30 and result["stop_reason"] == "max_epochs"
    assert result["model.batch_first"] == False  # noqa: E712 - sequence-first, as in the note
    assert 0 < result["test_mse"] == pytest.approx(metrics["test_mse"].iloc[-1])
    assert "test_mse" in done.stdout and "stopped after 30 epochs (max_epochs)" in done.stdout
    for name in ("prediction.png", "curves.png"):
        assert (lab.run_dir / name).read_bytes().startswith(PNG)


def test_cli_stops_once_the_training_loss_is_below_target_loss(lab):
    done = lab(*SIN_COS, "model=torch_lstm", "model.bidirectional=true", "trainer.target_loss=10")
    assert done.returncode == 0, done.stderr
    result = pd.read_csv(lab.run_dir / "result.csv").iloc[0]
    assert result["epochs"] == 1 and result["stop_reason"] == "target_loss"
    assert (lab.run_dir / "prediction.png").exists() and (lab.run_dir / "curves.png").exists()


def test_cli_rejects_bad_sizes_in_one_line(lab):
    override = "task.window=150"  # longer than either half of the data
    done = lab(*SIN_COS, override)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [done.stderr.strip()] and override in done.stderr
    assert not (lab.run_dir / "result.csv").exists() and not (lab.run_dir / "metrics.csv").exists()
