"""lstmlab/plots.py: curves.png from any run's metrics.csv, and a task's figures as PNGs."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from matplotlib.image import imread

from lstmlab.plots import curves_figure, is_loss_column, main, write_curves, write_figures
from lstmlab.tasks.base import Curve, LinePlot

PNG = b"\x89PNG\r\n\x1a\n"


def _metrics(tmp_path, **columns):
    epochs = range(1, 6)
    frame = pd.DataFrame({"epoch": epochs, "step": epochs, "seconds": [0.1 * e for e in epochs], **columns})
    frame.to_csv(tmp_path / "metrics.csv", index=False)


def test_curves_png_from_metrics_csv(tmp_path):
    _metrics(tmp_path, train_loss=[1.0, 0.5, 0.1, 0.01, 0.0], test_mse=[1.0, 0.6, 0.2, 0.05, 0.04])
    path = write_curves(tmp_path)
    assert path == tmp_path / "curves.png" and path.read_bytes().startswith(PNG)
    assert not list(tmp_path.glob(".*.tmp"))  # written atomically, no temporary file left


def test_metrics_other_than_losses_get_a_second_panel(tmp_path):
    _metrics(tmp_path, train_loss=[1.0, 0.5, 0.2, 0.1, 0.05])
    losses_only = imread(write_curves(tmp_path)).shape[1]
    _metrics(tmp_path, train_loss=[1.0, 0.5, 0.2, 0.1, 0.05], test_acc=[0.1, 0.5, 0.9, 1.0, 1.0])
    assert imread(write_curves(tmp_path)).shape[1] == 2 * losses_only


def test_test_metrics_of_a_run_evaluated_every_other_epoch_are_drawn(tmp_path):
    nan = float("nan")
    _metrics(tmp_path, train_loss=[1.0, 0.5, 0.2, 0.1, 0.05], test_loss=[nan, 0.6, nan, 0.3, nan],
             test_acc=[nan, 0.5, nan, 0.9, nan])
    figure = curves_figure(pd.read_csv(tmp_path / "metrics.csv"))
    lines = {line.get_label(): line for axes in figure.axes for line in axes.get_lines()}
    for name, values in (("test_loss", [0.6, 0.3]), ("test_acc", [0.5, 0.9])):
        assert list(lines[name].get_xdata()) == [2, 4] and list(lines[name].get_ydata()) == values
        assert lines[name].get_marker() == "o"  # its few points are visible
    assert len(lines["train_loss"].get_xdata()) == 5 and lines["train_loss"].get_marker() == "None"
    assert write_curves(tmp_path).read_bytes().startswith(PNG)


def test_loss_columns():
    assert [c for c in ("train_loss", "test_loss", "test_mse", "test_acc", "acc_16bit") if is_loss_column(c)] == [
        "train_loss", "test_loss", "test_mse"]


def test_no_curves_without_metrics(tmp_path):
    assert write_curves(tmp_path) is None
    assert not (tmp_path / "curves.png").exists()


def test_task_figures_are_written_by_name(tmp_path):
    x = torch.linspace(0, 1, 10)
    plot = LinePlot("title", "x", "y", [Curve(x, x, "a"), Curve(x, -x, "b", dashed=True)], vlines=[(0.5, "mid")])
    (path,) = write_figures(tmp_path, {"prediction": plot})
    assert path == tmp_path / "prediction.png" and path.read_bytes().startswith(PNG)
    assert write_figures(tmp_path, {}) == []


def test_the_command_redraws_each_run_and_prints_the_paths(tmp_path, capsys):
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        _metrics(tmp_path / name, train_loss=[1.0, 0.5, 0.2, 0.1, 0.05])
    assert main([str(tmp_path / "a"), str(tmp_path / "b")]) == 0
    assert capsys.readouterr().out.splitlines() == [str(tmp_path / "a" / "curves.png"), str(tmp_path / "b" / "curves.png")]
    assert (tmp_path / "b" / "curves.png").read_bytes().startswith(PNG)


def test_the_command_refuses_what_is_not_a_run_directory(tmp_path, capsys):
    _metrics(tmp_path, train_loss=[1.0, 0.5, 0.2, 0.1, 0.05])
    nope = tmp_path / "nope"
    assert main([str(tmp_path), str(nope)]) == 2
    out, err = capsys.readouterr()
    assert (out, err) == ("", f"python -m lstmlab.plots: error: {nope}: no metrics.csv (expected a run directory)\n")
    assert not (tmp_path / "curves.png").exists()  # nothing drawn when one of them is wrong
    pd.DataFrame(columns=["epoch", "step", "seconds", "train_loss"]).to_csv(tmp_path / "metrics.csv", index=False)
    assert main([str(tmp_path)]) == 2
    assert capsys.readouterr().err == (f"python -m lstmlab.plots: error: {tmp_path / 'metrics.csv'}: "
                                       "no epochs yet, nothing to draw\n")


def test_the_command_has_help_and_needs_a_run_directory(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0 and capsys.readouterr().out.startswith("usage: python -m lstmlab.plots [-h] RUN_DIR")
    with pytest.raises(SystemExit) as exit_:
        main([])
    assert exit_.value.code == 2 and "the following arguments are required: RUN_DIR" in capsys.readouterr().err
