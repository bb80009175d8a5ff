"""lstmlab-report: grouping by swept keys, mean ± std over seeds, the best row, half-finished sweeps."""

from __future__ import annotations

import math
import subprocess
import sys
import warnings
from pathlib import Path

import pandas as pd
import pytest
import yaml
from matplotlib.image import imread
from conftest import ROOT

from lstmlab.plots import new_figure
from lstmlab.report import _plot_curves, _plot_vs_key, format_frame, main, plot, print_summary, summarise, to_markdown
from lstmlab.results import RunRecorder, run_summary

REPORT = Path(sys.executable).parent / "lstmlab-report"


def rows(**columns) -> pd.DataFrame:
    frame = pd.DataFrame(columns)
    frame["monitor"], frame["monitor_mode"] = "acc", "max"
    return frame


def sweep_frame() -> pd.DataFrame:
    """hidden 4 and 16 over seeds 0, 1 (hidden 16 seed 1 failed), hidden 8 over seeds 0, 1."""
    hidden = [4, 4, 8, 8, 16, 16]
    seeds = [0, 1] * 3
    return rows(
        job=range(6),
        status=["finished"] * 5 + ["failed"],
        overrides=[f"model.hidden_size={h} seed={s}" for h, s in zip(hidden, seeds)],
        **{"model.hidden_size": hidden, "seed": seeds},
        acc=[0.5, 0.7, 0.9, 0.8, 0.6, math.nan],
        test_loss=[0.3, 0.1, 0.05, 0.07, 0.2, math.nan],
        params=[133, 133, 393, 393, 1297, 1297],
        epochs=[2, 2, 4, 4, 2, math.nan],
        train_seconds=[1.0, 3.0, 4.0, 4.0, 2.0, math.nan],
    )


def test_groups_by_swept_keys_with_mean_and_std_over_seeds():
    summary, keys, metrics = summarise(sweep_frame())
    assert keys == ["model.hidden_size"]
    assert metrics == ["acc", "test_loss", "params", "sec_per_epoch"]
    assert list(summary["model.hidden_size"]) == ["4", "8", "16"]  # numeric order, not text order
    assert list(summary["runs"]) == [2, 2, 1] and list(summary["failed"]) == [0, 0, 1]
    assert summary["acc_mean"].tolist() == pytest.approx([0.6, 0.85, 0.6])
    assert math.isclose(summary.loc[0, "acc_std"], math.sqrt(0.02))  # sample std of 0.5, 0.7
    assert math.isnan(summary.loc[2, "acc_std"])  # one finished seed: no spread
    assert summary["sec_per_epoch_mean"].tolist() == [1.0, 1.0, 1.0]
    assert summary["best"].tolist() == [False, True, False]


def test_every_setting_that_ties_for_the_best_is_marked():
    """e.g. several sizes that all reach 100% on the adder: the first is no better than the others."""
    frame = sweep_frame()
    frame["acc"] = [0.9, 1.0, 1.0, 1.0, 1.0, math.nan]  # hidden 8 and 16 both average 1.0
    summary, _, _ = summarise(frame)
    assert summary["best"].tolist() == [False, True, True]


def test_best_row_follows_the_monitor_mode():
    frame = sweep_frame()
    frame["monitor"], frame["monitor_mode"] = "test_loss", "min"
    summary, _, metrics = summarise(frame)
    assert metrics[0] == "test_loss"
    assert summary["best"].tolist() == [False, True, False]  # 0.06 mean loss at hidden 8


def test_table_cells_and_markdown():
    summary, keys, metrics = summarise(sweep_frame())
    cells = format_frame(summary, keys, metrics)
    assert list(cells.columns) == ["model.hidden_size", "runs", "failed", "acc", "test_loss",
                                   "params", "sec_per_epoch", "best"]
    assert cells.loc[1, "acc"] == "0.85 ± 0.071" and cells.loc[1, "best"] == "*"
    assert cells.loc[2, "acc"] == "0.6" and cells.loc[2, "params"] == "1297"
    markdown = to_markdown(cells).splitlines()
    assert markdown[0].startswith("| model.hidden_size | runs | failed | acc |")
    assert markdown[3] == "| 8 | 2 | 0 | 0.85 ± 0.071 | 0.06 ± 0.014 | 393 | 1 ± 0 | * |"


def test_two_swept_keys_and_no_swept_key():
    frame = rows(
        status=["finished"] * 4,
        overrides=["model=torch_lstm model.bidirectional=false", "model=torch_lstm model.bidirectional=true",
                   "model=hand_lstm model.bidirectional=false", "model=hand_lstm model.bidirectional=true"],
        **{"model.bidirectional": [False, True, False, True]},
        acc=[0.1, 0.2, 0.3, 0.4],
    )
    summary, keys, _ = summarise(frame)
    assert keys == ["model", "model.bidirectional"] and len(summary) == 4
    summary, keys, _ = summarise(frame.assign(overrides="seed=0"))
    assert keys == [] and summary["runs"].tolist() == [4] and summary["acc_mean"].item() == 0.25


def test_report_on_a_half_finished_sweep(interrupted, tmp_path):
    _, sweep_dir = interrupted
    proc = subprocess.run([str(REPORT), str(sweep_dir), "--out", str(tmp_path / "r"), "--plot"],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "incomplete" in proc.stdout.splitlines()[0]
    table = pd.read_csv(tmp_path / "r.csv")
    assert table[["runs", "incomplete"]].values.tolist() == [[1, 1]]
    assert (tmp_path / "r.md").read_text().startswith("| runs | incomplete | exhaustive_acc |")
    assert (tmp_path / "r.png").read_bytes()[:4] == b"\x89PNG"


def test_report_on_a_missing_path(tmp_path, capsys):
    assert main([str(tmp_path / "nope")]) == 2
    assert capsys.readouterr().err == f"lstmlab-report: error: {tmp_path / 'nope'}: no such file or directory\n"
    assert main([str(tmp_path)]) == 2
    assert "no runs found" in capsys.readouterr().err


def test_report_on_a_file_that_is_not_a_csv_table(tmp_path, capsys):
    (tmp_path / "model.pt").write_bytes(bytes(range(256)) * 4)
    assert main([str(tmp_path / "model.pt")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"lstmlab-report: error: {tmp_path / 'model.pt'}: not a CSV table of runs")
    assert err.count("\n") == 1


def test_report_on_a_run_s_metrics_csv_says_it_is_not_a_table_of_runs(tmp_path, capsys):
    recorder = RunRecorder(tmp_path)
    recorder.add_epoch({"epoch": 1, "step": 10, "seconds": 0.1, "train_loss": 0.5, "test_loss": 0.4})
    about = {"params": 133, "device": "cpu", "threads": 1, "monitor": "test_loss", "monitor_mode": "min"}
    recorder.write_result({"seed": 0}, run_summary({"test_loss": 0.4}, epochs=1, stop_reason="max_epochs",
                                                   train_seconds=0.1, status="finished", about=about))
    assert main([str(tmp_path / "metrics.csv")]) == 2
    assert capsys.readouterr().err == (f"lstmlab-report: error: {tmp_path / 'metrics.csv'}: not a table of runs, "
                                       "no column status (expected a sweep's results.csv or a run's result.csv)\n")
    assert main([str(tmp_path / "result.csv")]) == 0  # the run's own table is one
    assert "0.4" in capsys.readouterr().out


def test_a_misspelt_metric_is_refused_with_the_metrics_there_are(tmp_path, capsys):
    sweep_frame().to_csv(tmp_path / "results.csv", index=False)
    assert main([str(tmp_path / "results.csv"), "--metrics", "acc,test_accuracy"]) == 2
    assert capsys.readouterr().err == ("lstmlab-report: error: --metrics: no column test_accuracy in these runs; "
                                       "expected any of acc, test_loss, params, sec_per_epoch\n")
    assert not (tmp_path / "report.csv").exists()
    assert main([str(tmp_path / "results.csv"), "--metrics", "test_loss,acc"]) == 0
    assert pd.read_csv(tmp_path / "report.csv").columns.tolist()[-5:] == [
        "test_loss_mean", "test_loss_std", "acc_mean", "acc_std", "best"]


def test_the_plot_stays_readable_with_many_runs(tmp_path):
    """12 runs (2 seeds) in 6 settings with long values: one legend entry a setting, axes not squeezed."""
    runs = []
    for job in range(12):
        setting, run_dir = job % 6, tmp_path / str(job)
        run_dir.mkdir()
        pd.DataFrame({"epoch": [1, 2], "acc": [0.1, 0.2 + job / 100]}).to_csv(run_dir / "metrics.csv", index=False)
        runs.append(f"model=torch_lstm_{setting % 3} model.hidden_size={8 * (setting // 3 + 1)} "
                    f"trainer.optimizer.lr=0.00{setting + 1} task.encoding=serial_with_a_long_name_{setting % 2} "
                    f"trainer.optimizer._target_=torch.optim.a_long_optimizer_name_{setting} seed={job // 6}")
    frame = rows(status="finished", overrides=runs, dir=[str(tmp_path / str(job)) for job in range(12)],
                 acc=[0.2 + job / 100 for job in range(12)])
    summary, keys, _ = summarise(frame)
    assert len(summary) == 6
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        path = plot(frame, summary, keys, "acc", tmp_path / "report.png")
    assert [str(w.message) for w in caught if "constrained_layout" in str(w.message)] == []
    assert imread(path).shape[1] == 1320  # 11 inches at 120 dpi: the legends make it taller, not wider


def hydra_run(run_dir: Path, overrides: list[str], choices: dict, acc: float) -> Path:
    """A run directory as lstmlab leaves it: .hydra/{hydra,overrides}.yaml and result.csv."""
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    hydra = {"hydra": {"runtime": {"choices": choices | {"hydra/launcher": "basic", "experiment": None}},
                       "job": {"num": 0}}}
    (run_dir / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump(hydra))
    rows(status=["finished"], acc=[acc], seed=[0]).to_csv(run_dir / "result.csv", index=False)
    return run_dir


def test_a_config_group_one_sweep_left_at_its_default(tmp_path, capsys):
    """Sweep a set model=torch_lstm, sweep b did not: b's runs show the model they ran, hand_lstm."""
    hydra_run(tmp_path / "a" / "0", ["model=torch_lstm", "seed=0"], {"task": "adder", "model": "torch_lstm"}, 0.9)
    hydra_run(tmp_path / "b" / "0", ["seed=0"], {"task": "adder", "model": "hand_lstm"}, 0.8)
    assert main([str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "r")]) == 0
    assert pd.read_csv(tmp_path / "r.csv")["model"].tolist() == ["hand_lstm", "torch_lstm"]
    assert "| hand_lstm | 1 | 0.8 |" in (tmp_path / "r.md").read_text()
    # and a group both set the same way, one of them by default, is not a swept key
    hydra_run(tmp_path / "c" / "0", ["model=hand_lstm", "seed=0"], {"task": "adder", "model": "hand_lstm"}, 0.7)
    assert main([str(tmp_path / "b"), str(tmp_path / "c"), "--out", str(tmp_path / "r")]) == 0
    assert "model" not in pd.read_csv(tmp_path / "r.csv")


def test_the_plot_ticks_each_swept_value_and_whole_epochs(tmp_path):
    frame = sweep_frame().iloc[:4]
    for j in frame.index:
        (tmp_path / str(j)).mkdir()
        pd.DataFrame({"epoch": [1, 2, 3], "acc": [0.1, 0.2, 0.3 + j / 10]}).to_csv(tmp_path / str(j) / "metrics.csv")
    frame = frame.assign(dir=[str(tmp_path / str(j)) for j in frame.index])
    summary, keys, _ = summarise(frame)
    left, right = new_figure(11.0, 4.0).subplots(1, 2)
    _plot_vs_key(left, summary, keys, "acc")
    _plot_curves(right, frame, summary, keys, "acc")
    assert list(left.get_xticks()) == [4, 8]
    assert all(tick == int(tick) for tick in right.get_xticks())


def test_the_learning_curves_of_runs_evaluated_every_other_epoch_are_drawn(tmp_path):
    frame = sweep_frame().iloc[:2]
    for j in frame.index:
        (tmp_path / str(j)).mkdir()
        pd.DataFrame({"epoch": [1, 2, 3, 4], "acc": [math.nan, 0.5, math.nan, 0.6 + j / 10]}).to_csv(
            tmp_path / str(j) / "metrics.csv", index=False)
    frame = frame.assign(dir=[str(tmp_path / str(j)) for j in frame.index])
    summary, keys, _ = summarise(frame)
    axes = new_figure(6.0, 4.0).subplots()
    _plot_curves(axes, frame, summary, keys, "acc")
    assert [list(line.get_xdata()) for line in axes.get_lines()] == [[2, 4], [2, 4]]
    assert [list(line.get_ydata()) for line in axes.get_lines()] == [[0.5, 0.6], [0.5, 0.7]]


def status_frame() -> pd.DataFrame:
    """A results.csv with one job of each status lstmlab writes and one it does not, over seeds."""
    statuses = ["incomplete", "finished", "diverged", "interrupted", "failed", "finished", "cancelled"]
    jobs = range(len(statuses))
    return pd.DataFrame({
        "job": jobs, "status": statuses, "overrides": [f"seed={j}" for j in jobs], "dir": [str(j) for j in jobs],
        "error": ["" if s != "failed" else "model.hidden_size=0: expected a number >= 1" for s in statuses],
        "seed": jobs, "test_loss": [0.1] * len(statuses), "params": 133, "epochs": 2, "train_seconds": 1.0,
        "monitor": "test_loss", "monitor_mode": "min",
    })


def test_the_summary_line_counts_every_status(tmp_path, capsys):
    print_summary(tmp_path, status_frame())
    first = capsys.readouterr().out.strip().splitlines()[0]
    assert first == (f"sweep done: 7 jobs (2 finished, 1 failed, 1 diverged, 1 interrupted, 1 incomplete, "
                     f"1 cancelled); results in {tmp_path / 'results.csv'}")


def test_the_summary_lists_the_failed_and_the_diverged_jobs_with_why(tmp_path, capsys):
    print_summary(tmp_path, status_frame())
    assert capsys.readouterr().err.splitlines() == [
        "2 job(s) failed or diverged:",
        "  job 2 [seed=2]: training diverged in epoch 3 (a NaN or infinite loss)",
        "  job 4 [seed=4]: model.hidden_size=0: expected a number >= 1",
    ]


def test_the_summary_of_a_sweep_whose_jobs_all_failed_lists_them(tmp_path, capsys):
    frame = status_frame()[["job", "status", "overrides", "dir", "error", "seed"]].assign(status="failed")
    print_summary(tmp_path, frame)
    captured = capsys.readouterr()
    assert "sweep done: 7 jobs (7 failed)" in captured.out
    assert "7 job(s) failed or diverged:" in captured.err


def test_the_report_counts_diverged_jobs_as_failed_and_interrupted_ones_as_incomplete():
    summary, _, _ = summarise(status_frame())
    assert summary.loc[0, ["runs", "failed", "incomplete"]].tolist() == [2, 2, 2]


def test_a_results_csv_whose_jobs_all_finished_shows_no_error_column(tmp_path):
    """Its empty error column reads back as numbers (NaN): it is still no metric."""
    frame = sweep_frame()
    frame["status"], frame["error"], frame["dir"] = "finished", math.nan, [str(j) for j in frame["job"]]
    frame.to_csv(tmp_path / "results.csv", index=False)
    summary, _, metrics = summarise(pd.read_csv(tmp_path / "results.csv"))
    assert "error" not in metrics and "dir" not in metrics and "job" not in metrics


def test_an_over_key_no_run_has_is_refused(tmp_path, capsys):
    sweep_frame().to_csv(tmp_path / "results.csv", index=False)
    assert main([str(tmp_path / "results.csv"), "--over", "sede"]) == 2
    assert capsys.readouterr().err.startswith("lstmlab-report: error: --over: no key sede in these runs' configs")
    assert not (tmp_path / "report.csv").exists()
    assert main([str(tmp_path / "results.csv"), "--over", "seed"]) == 0
    with_groups = sweep_frame().assign(choices="model=hand_lstm task=adder")  # a config group is no column
    with_groups.to_csv(tmp_path / "results.csv", index=False)
    assert main([str(tmp_path / "results.csv"), "--over", "seed,model"]) == 0


def test_a_report_that_cannot_be_written_is_one_line(tmp_path, capsys):
    sweep_frame().to_csv(tmp_path / "results.csv", index=False)
    (tmp_path / "a_file").write_text("")
    assert main([str(tmp_path / "results.csv"), "--out", str(tmp_path / "a_file" / "report")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lstmlab-report: error: ") and err.count("\n") == 1 and "a_file" in err
