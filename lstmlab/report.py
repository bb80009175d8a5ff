"""``lstmlab-report PATH...``: the comparison table of sweeps and runs.

Rows are grouped by the swept keys (the overrides whose values differ between runs, seeds
left out), each metric is shown as mean ± std over the seeds, and the group with the best
monitored metric is marked (each of them, if several tie). Reads finished and half-finished
sweeps alike: the table is rebuilt from the runs' own ``result.csv`` files.

    lstmlab-report multirun/hidden               # prints the table, writes report.csv/.md
    lstmlab-report multirun/hidden --plot        # and report.png (metric vs swept key, curves)
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from .errors import LabError, first_line, one_line
from .files import atomic_write_bytes
from .plots import epochs_with_values, new_figure, save_png
from .results import METRICS_FILE, RESULT_FILE, RESULTS_FILE, RUN_COLUMNS, atomic_write_csv
from .runs import (DIVERGED, FAILED, FINISHED, INCOMPLETE, INTERRUPTED, LEAD_COLUMNS, collect, count_statuses,
                   parse_overrides, run_dirs)

COUNTED_AS_FAILED = (FAILED, DIVERGED)  # ended without a usable final metric
COUNTED_AS_INCOMPLETE = (INCOMPLETE, INTERRUPTED)  # stopped on the way; a re-run of the sweep goes on
NOT_METRICS = {*LEAD_COLUMNS, "choices", "seed", "train_loss", "sec_per_epoch", *RUN_COLUMNS}  # of results.csv


# ---------------------------------------------------------------- reading
def load(paths: Sequence[str | Path]) -> pd.DataFrame:
    """The runs under each path (sweep dir, run dir, or a results.csv), ``dir`` made absolute."""
    frames = []
    for path in map(Path, paths):
        frame = _load_one(path)
        if frame.empty:
            raise LabError(f"{path}: no runs found (expected a sweep or run directory, or a {RESULTS_FILE})")
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def _load_one(path: Path) -> pd.DataFrame:
    if path.is_file():
        frame, root = _read_csv(path), path.parent
    elif path.is_dir() and run_dirs(path):
        frame, root = collect(path, _jobs_listed(path)), path
    elif (path / RESULTS_FILE).is_file():
        frame, root = _read_csv(path / RESULTS_FILE), path
    elif path.is_dir():
        return pd.DataFrame()
    else:
        raise LabError(f"{path}: no such file or directory")
    if "dir" in frame:
        frame["dir"] = [str(root / d) if isinstance(d, str) else None for d in frame["dir"]]
    return frame


def _jobs_listed(sweep_dir: Path) -> list[Path] | None:
    """The run directories the sweep's results.csv lists, read afresh: a sweep run into the
    directory of another leaves that one's jobs beside its own. None (every run under
    ``sweep_dir``) when there is no results.csv, e.g. while a first sweep is running."""
    try:
        listed = pd.read_csv(sweep_dir / RESULTS_FILE, usecols=["dir"], dtype=str)["dir"]
    except (OSError, ValueError, pd.errors.ParserError, pd.errors.EmptyDataError):
        return None
    return [sweep_dir / d for d in listed.dropna() if (sweep_dir / d / ".hydra").is_dir()]


def _read_csv(path: Path) -> pd.DataFrame:
    try:
        frame = pd.read_csv(path)
    except (UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise LabError(f"{path}: not a CSV table of runs ({first_line(exc)[:120]})") from None
    if "status" not in frame:  # e.g. a run's metrics.csv
        raise LabError(f"{path}: not a table of runs, no column status "
                       f"(expected a sweep's {RESULTS_FILE} or a run's {RESULT_FILE})")
    return frame


# ---------------------------------------------------------------- the table
def swept_keys(frame: pd.DataFrame, over: Sequence[str] = ("seed",)) -> list[str]:
    """Override keys whose values differ between rows, except those averaged ``over``."""
    parsed = [parse_overrides(text) for text in frame.get("overrides", pd.Series(dtype=str))]
    keys: list[str] = []
    for overrides in parsed:
        keys += [k for k in overrides if k not in keys]
    return [k for k in keys if k not in over and len({o.get(k, "") for o in parsed}) > 1]


def setting_values(frame: pd.DataFrame, keys: Sequence[str]) -> pd.DataFrame:
    """Each run's value of each key as text: its config column, else its override, else the
    option its config group got (``choices``; a group one sweep did not override), else ''."""
    def parsed(column: str) -> list[dict[str, str]]:
        return [parse_overrides(text) for text in frame[column]] if column in frame else [{}] * len(frame)

    given = [c | o for o, c in zip(parsed("overrides"), parsed("choices"))]
    values = pd.DataFrame(index=frame.index)
    for key in keys:
        fallback = pd.Series([g.get(key, "") for g in given], index=frame.index, dtype=object)
        column = frame[key] if key in frame else fallback
        values[key] = column.astype(str).where(column.notna(), fallback)
    return values


def monitor_of(frame: pd.DataFrame) -> tuple[str | None, str]:
    """The runs' monitored metric and its mode, from result.csv's monitor columns."""
    for name, mode in zip(frame.get("monitor", []), frame.get("monitor_mode", [])):
        if isinstance(name, str):
            return name, mode if mode in ("max", "min") else "max"
    return None, "max"


def default_metrics(frame: pd.DataFrame) -> list[str]:
    """The monitored metric first, then every other metric column, params, sec_per_epoch."""
    monitor, _ = monitor_of(frame)
    numeric = [
        c for c in frame.columns
        if "." not in c and c not in NOT_METRICS
        and pd.api.types.is_numeric_dtype(frame[c]) and not pd.api.types.is_bool_dtype(frame[c])
    ]
    metrics = ([monitor] if monitor in numeric else []) + [c for c in numeric if c != monitor]
    return metrics + [c for c in ("params", "sec_per_epoch") if c in frame]


def summarise(frame: pd.DataFrame, over: Sequence[str] = ("seed",),
              metrics: Sequence[str] | None = None) -> tuple[pd.DataFrame, list[str], list[str]]:
    """One row per setting of the swept keys: runs, failed, incomplete, ``<m>_mean``, ``<m>_std``, best."""
    data = frame.copy()
    keys = swept_keys(data, over)
    data[keys] = setting_values(data, keys)
    keys = [k for k in keys if data[k].nunique() > 1]  # e.g. model=hand_lstm in one sweep, the default in the other
    if {"train_seconds", "epochs"} <= set(data):
        data["sec_per_epoch"] = pd.to_numeric(data["train_seconds"], errors="coerce") / data["epochs"]
    metrics = [m for m in (metrics or default_metrics(data)) if m in data]
    groups = data.groupby(keys, sort=False) if keys else [((), data)]
    rows = [_summary_row(dict(zip(keys, values)), group, metrics) for values, group in groups]
    summary = pd.DataFrame(rows)
    if keys:
        summary = summary.sort_values(keys, key=_numeric_first, kind="stable").reset_index(drop=True)
    summary["best"] = _best_mask(summary, *monitor_of(frame))
    return summary, keys, metrics


def _summary_row(key_values: dict, group: pd.DataFrame, metrics: Sequence[str]) -> dict:
    finished = group[group["status"] == FINISHED]
    row = key_values | {
        "runs": len(finished),
        "failed": int(group["status"].isin(COUNTED_AS_FAILED).sum()),
        "incomplete": int(group["status"].isin(COUNTED_AS_INCOMPLETE).sum()),
    }
    for metric in metrics:
        values = pd.to_numeric(finished[metric], errors="coerce").dropna()
        row[f"{metric}_mean"] = values.mean() if len(values) else float("nan")
        row[f"{metric}_std"] = values.std(ddof=1) if len(values) > 1 else float("nan")
    return row


def _numeric_first(column: pd.Series) -> pd.Series:
    numbers = pd.to_numeric(column, errors="coerce")
    return numbers if numbers.notna().all() else column


def _best_mask(summary: pd.DataFrame, monitor: str | None, mode: str) -> pd.Series:
    column = f"{monitor}_mean"
    best = pd.Series(False, index=summary.index)
    if monitor and column in summary and summary[column].notna().any():
        values = summary[column].astype(float)
        target = values.max() if mode == "max" else values.min()
        best = pd.Series(np.isclose(values, target, rtol=1e-12, atol=0.0), index=summary.index)  # every tie
    return best


def format_frame(summary: pd.DataFrame, keys: Sequence[str], metrics: Sequence[str]) -> pd.DataFrame:
    """The summary as text cells: ``mean ± std`` per metric, counts, a ``*`` on the best row."""
    out = pd.DataFrame({k: summary[k] for k in keys}) if keys else pd.DataFrame(index=summary.index)
    out["runs"] = summary["runs"].astype(str)
    for extra in ("failed", "incomplete"):
        if summary[extra].any():
            out[extra] = summary[extra].astype(str)
    for metric in metrics:
        out[metric] = [_mean_std(m, s, metric) for m, s in zip(summary[f"{metric}_mean"], summary[f"{metric}_std"])]
    out["best"] = ["*" if b else "" for b in summary["best"]]
    return out


def _mean_std(mean: float, std: float, metric: str) -> str:
    if pd.isna(mean):
        return "-"
    if metric == "params":
        return f"{mean:.0f}"
    text = f"{mean:.4g}"
    return text if pd.isna(std) else f"{text} ± {std:.2g}"


def to_text(cells: pd.DataFrame) -> str:
    return cells.to_string(index=False)


def to_markdown(cells: pd.DataFrame) -> str:
    header = "| " + " | ".join(cells.columns) + " |"
    rule = "| " + " | ".join("---" for _ in cells.columns) + " |"
    body = ["| " + " | ".join(str(v) for v in row) + " |" for row in cells.itertuples(index=False)]
    return "\n".join([header, rule, *body]) + "\n"


def short_table(frame: pd.DataFrame) -> str:
    """The terminal summary at the end of a sweep: monitored metric, test loss, params, s/epoch."""
    monitor, _ = monitor_of(frame)
    wanted = [m for m in (monitor, "test_loss", "params", "sec_per_epoch") if m]
    summary, keys, metrics = summarise(frame, metrics=wanted)
    return to_text(format_frame(summary, keys, metrics)) if len(summary) else ""


# ---------------------------------------------------------------- the end of a sweep
def print_summary(sweep_dir: Path, frame: pd.DataFrame, interrupted: bool = False) -> None:
    """What the terminal shows when a sweep ends: its jobs by status, the short table, and the
    failed jobs with their errors (on stderr)."""
    state = "interrupted" if interrupted else "done"
    jobs = len(frame)
    print(f"\nsweep {state}: {jobs} job{'' if jobs == 1 else 's'} ({count_statuses(frame['status'])}); "
          f"results in {Path(sweep_dir) / RESULTS_FILE}")
    table = short_table(frame)
    if table:
        print(table)
    failed = failed_jobs(frame)
    if len(failed):
        varying = swept_keys(frame, over=())
        lines = [f"  job {_job(r.job)} [{_shown(r.overrides, varying)}]: {_why(r)}" for r in failed.itertuples()]
        print(f"{len(lines)} job(s) failed or diverged:\n" + "\n".join(lines), file=sys.stderr)
    sys.stdout.flush()


def failed_jobs(frame: pd.DataFrame) -> pd.DataFrame:
    """The jobs that ended without a usable final metric: failed, or diverged."""
    return frame[frame["status"].isin(COUNTED_AS_FAILED)]


def _why(job) -> str:
    if job.status == DIVERGED:
        return f"training diverged in epoch {_job(job.epochs + 1)} (a NaN or infinite loss)"
    return job.error


def _shown(overrides: str, keys: list[str]) -> str:
    """The overrides that tell the jobs of the sweep apart (all of them if none do)."""
    parsed = parse_overrides(overrides)
    return " ".join(f"{k}={parsed[k]}" for k in keys if k in parsed) or overrides


def _job(value) -> str:
    return "?" if pd.isna(value) else str(int(value))


# ---------------------------------------------------------------- the plot
LEGEND_CHARS = 48  # a legend line's length in characters, at most
_STYLES = ("-", "--", ":", "-.")  # 10 colours x 4 line styles (and markers): 40 settings told apart
_MARKERS = ("o", "s", "^", "D")


def plot(frame: pd.DataFrame, summary: pd.DataFrame, keys: Sequence[str], metric: str, path: Path) -> Path:
    """Left: ``metric`` vs the first numeric swept key (mean ± std). Right: its learning curves.

    Each panel's legend lies below it, one entry per setting (the values; the keys are its title),
    and the figure is made as tall as the legends need, however many settings there are.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    keys = list(keys)
    figure = new_figure(11.0, 4.0)
    panels = figure.subfigures(1, 2)
    left = _plot_vs_key(panels[0].subplots(), summary, keys, metric)
    right = _plot_curves(panels[1].subplots(), frame, summary, keys, metric)
    renderer = FigureCanvasAgg(figure).get_renderer()
    heights = [_legend_below(panel, *entries, renderer) for panel, entries in ((panels[0], left), (panels[1], right))
               if entries is not None]
    figure.set_size_inches(11.0, 4.0 + max(heights, default=0.0))
    return save_png(figure, path)


def _plot_vs_key(ax, summary: pd.DataFrame, keys: list[str], metric: str):
    """The left panel; returns its legend (styles, labels, title), None when it needs none."""
    numeric = [k for k in keys if pd.to_numeric(summary[k], errors="coerce").notna().all()]
    x_key = numeric[0] if numeric else None
    ax.set_ylabel(f"{metric} (mean ± std over seeds)")
    ax.grid(alpha=0.3)
    mean, std = summary[f"{metric}_mean"], summary[f"{metric}_std"].fillna(0)
    if x_key is None:  # no numeric key: one point per setting, styled as in the curves' legend
        styles = _styles(_settings(summary, keys))
        for x, style in enumerate(styles):
            ax.errorbar(x, mean.iloc[x], yerr=std.iloc[x], capsize=3, **style | {"linestyle": "none"})
        labels = [_shorten(_joined(values, 16), 16) for values in _settings(summary, keys)]
        if 1 < len(labels) <= 12:
            ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize=7)
        else:
            ax.set_xticks([])
        ax.set_xlabel("setting (see the legend)" if len(labels) > 1 else "all runs")
        return None
    rest = [k for k in keys if k != x_key]
    groups = list(summary.groupby(rest, sort=False)) if rest else [((), summary)]
    styles = _styles([values if isinstance(values, tuple) else (values,) for values, _ in groups])
    for (_, part), style in zip(groups, styles):
        ax.errorbar(pd.to_numeric(part[x_key]), mean[part.index], yerr=std[part.index], capsize=3, **style)
    x = pd.to_numeric(summary[x_key])
    if x.min() > 0 and x.nunique() > 2:
        ax.set_xscale("log", base=2)
    values = sorted(x.unique())
    if len(values) <= 12:  # a tick at each value swept (4, 8, 16), none between them
        from matplotlib.ticker import NullLocator

        ax.set_xticks(values, [f"{v:g}" for v in values])
        ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlabel(x_key)
    return (styles, _entries([values for values, _ in groups]), rest) if rest else None


def _plot_curves(ax, frame: pd.DataFrame, summary: pd.DataFrame, keys: list[str], metric: str):
    """The right panel: one line per finished run, styled by its setting; returns the settings' legend."""
    settings = _settings(summary, keys)
    styles = dict(zip(settings, _styles(settings)))
    finished = frame[frame["status"] == FINISHED]
    drawn = 0
    for (_, row), setting in zip(finished.iterrows(), _settings(setting_values(finished, keys), keys)):
        curve = _read_metrics(row.get("dir"))
        if curve is None or metric not in curve or "epoch" not in curve:
            continue
        points = epochs_with_values(curve, metric)  # a run evaluated every few epochs has gaps
        ax.plot(points["epoch"], points[metric], alpha=0.7, markersize=3, **styles.get(setting, {"color": "grey"}))
        drawn += 1
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric)
    ax.set_title(f"learning curves (one line per run, {drawn} runs)" if drawn else
                 f"learning curves: no run has a {METRICS_FILE} with {metric}", fontsize=9)
    ax.grid(alpha=0.3)
    return (list(styles.values()), _entries(settings), keys) if len(settings) > 1 else None


def _settings(table: pd.DataFrame, keys: list[str]) -> list[tuple]:
    """Each row's values of the keys, as a tuple of text."""
    return [tuple(map(str, values)) for values in table[keys].itertuples(index=False)] if keys else [()] * len(table)


def _styles(settings: Sequence) -> list[dict]:
    return [{"color": f"C{i % 10}", "linestyle": _STYLES[i // 10 % 4], "marker": _MARKERS[i // 10 % 4]}
            for i in range(len(settings))]


def _entries(settings: Sequence) -> list[str]:
    """Legend text of each setting: its values (long ones cut in the middle), wrapped."""
    return ["\n".join(textwrap.wrap(_joined(values, 24), LEGEND_CHARS)) for values in settings]


def _joined(values, longest: int) -> str:
    values = values if isinstance(values, tuple) else (values,)
    return ", ".join(_shorten(str(v), longest) for v in values)


def _shorten(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width // 2 - 1] + "…" + text[-(width - width // 2):]


def _legend_below(panel, styles: list[dict], labels: list[str], keys: list[str], renderer) -> float:
    """A legend under the panel's axes, in as many columns as fit; returns its height in inches."""
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], **style) for style in styles]
    title = "\n".join(textwrap.wrap(", ".join(keys), LEGEND_CHARS + 16))
    for columns in range(min(len(labels), 4), 0, -1):
        legend = panel.legend(handles, labels, title=title, loc="outside lower center", ncols=columns,
                              fontsize=8, title_fontsize=8)
        box = legend.get_window_extent(renderer)
        if box.width <= 0.95 * panel.bbox.width or columns == 1:
            break
        legend.remove()
    return box.height / panel.figure.dpi + 0.1


def _read_metrics(run_dir) -> pd.DataFrame | None:
    if not isinstance(run_dir, str):
        return None
    try:
        return pd.read_csv(Path(run_dir) / METRICS_FILE)
    except (FileNotFoundError, pd.errors.EmptyDataError):
        return None


# ---------------------------------------------------------------- the command
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="lstmlab-report",
        description="Compare sweeps and runs: mean ± std over seeds per setting of the swept keys.",
    )
    parser.add_argument("paths", nargs="+", metavar="PATH", help="sweep or run directories, or results.csv files")
    parser.add_argument("--over", default=None, help="keys averaged over, comma-separated (default: seed)")
    parser.add_argument("--metrics", default=None, help="metric columns to show, comma-separated (default: all)")
    parser.add_argument("--out", default=None, help="output prefix (default: PATH/report for the first PATH)")
    parser.add_argument("--plot", action="store_true", help="also write PREFIX.png")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    over = args.over.split(",") if args.over else ["seed"]
    try:
        frame = load(args.paths)
        if args.over:
            _check_keys_exist(over, frame)
        asked = args.metrics.split(",") if args.metrics else []
        summary, keys, metrics = summarise(frame, over=over, metrics=asked or None)
        _check_metrics_exist(asked, metrics, frame, over)
    except LabError as exc:
        print(f"lstmlab-report: error: {exc}", file=sys.stderr)
        return 2
    cells = format_frame(summary, keys, metrics)
    print(to_text(cells))
    prefix = Path(args.out) if args.out else _default_prefix(Path(args.paths[0]))
    try:
        written = _write_report(prefix, frame, summary, cells, keys, metrics, args.plot)
    except OSError as exc:
        print(f"lstmlab-report: error: {one_line(exc)} (writing the report; --out sets where)", file=sys.stderr)
        return 2
    print("wrote " + ", ".join(map(str, written)))
    return 0


def _write_report(prefix: Path, frame, summary, cells, keys, metrics, with_plot: bool) -> list[Path]:
    """PREFIX.csv, PREFIX.md and (``with_plot``) PREFIX.png; the paths written."""
    atomic_write_csv(Path(f"{prefix}.csv"), summary)
    atomic_write_bytes(Path(f"{prefix}.md"), to_markdown(cells).encode())
    written = [Path(f"{prefix}.csv"), Path(f"{prefix}.md")]
    monitor = monitor_of(frame)[0] or (metrics[0] if metrics else None)
    if with_plot and monitor:
        written.append(plot(frame, summary, keys, monitor, Path(f"{prefix}.png")))
    return written


def _check_keys_exist(over: Sequence[str], frame: pd.DataFrame) -> None:
    """--over names a key that is in none of the runs' configs, overrides or config-group choices
    (``model``): say so, rather than group by the rest."""
    known = set(frame.columns)
    for column in ("overrides", "choices"):
        for text in frame.get(column, []):
            known.update(parse_overrides(text))
    unknown = [key for key in over if key not in known]
    if unknown:
        raise LabError(f"--over: no key {', '.join(unknown)} in these runs' configs; expected config keys "
                       "such as seed or model.hidden_size")


def _check_metrics_exist(asked: Sequence[str], shown: Sequence[str], frame: pd.DataFrame, over) -> None:
    """--metrics names a column that is in none of the runs: say which, and which there are."""
    unknown = [m for m in asked if m not in shown]
    if unknown:
        available = summarise(frame, over=over)[2]
        raise LabError(f"--metrics: no column {', '.join(unknown)} in these runs; expected any of {', '.join(available)}")


def _default_prefix(first: Path) -> Path:
    return (first.parent if first.is_file() else first) / "report"


def console() -> None:
    sys.exit(main())


if __name__ == "__main__":
    console()
