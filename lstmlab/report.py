"""``lstmlab-report PATH...``: the comparison table of sweeps and runs.

Rows are grouped by the swept keys (the overrides whose values differ between runs, seeds
left out), each metric is shown as mean ± std over the seeds, and the group with the best
monitored metric is marked. Reads finished and half-finished sweeps alike: the table is
rebuilt from the runs' own ``result.csv`` files.

    lstmlab-report multirun/hidden               # prints the table, writes report.csv/.md
    lstmlab-report multirun/hidden --plot        # and report.png (metric vs swept key, curves)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

import pandas as pd

from .errors import LabError
from .plots import new_figure, save_png
from .results import METRICS_FILE, RESULTS_FILE, atomic_write_bytes, atomic_write_csv
from .sweep import FAILED, FINISHED, INCOMPLETE, collect, parse_overrides, run_dirs

NOT_METRICS = {"job", "seed", "epochs", "train_seconds", "threads", "train_loss", "params", "sec_per_epoch"}


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
        frame, root = collect(path), path
    elif (path / RESULTS_FILE).is_file():
        frame, root = _read_csv(path / RESULTS_FILE), path
    elif path.is_dir():
        return pd.DataFrame()
    else:
        raise LabError(f"{path}: no such file or directory")
    if "dir" in frame:
        frame["dir"] = [str(root / d) if isinstance(d, str) else None for d in frame["dir"]]
    return frame


def _read_csv(path: Path) -> pd.DataFrame:
    try:
        return pd.read_csv(path)
    except (UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise LabError(f"{path}: not a CSV table of runs ({detail[:120]})") from None


# ---------------------------------------------------------------- the table
def swept_keys(frame: pd.DataFrame, over: Sequence[str] = ("seed",)) -> list[str]:
    """Override keys whose values differ between rows, except those averaged ``over``."""
    parsed = [parse_overrides(text) for text in frame.get("overrides", pd.Series(dtype=str))]
    keys: list[str] = []
    for overrides in parsed:
        keys += [k for k in overrides if k not in keys]
    return [k for k in keys if k not in over and len({o.get(k, "") for o in parsed}) > 1]


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
        if "." not in c and c not in NOT_METRICS and c not in ("monitor", "monitor_mode")
        and pd.api.types.is_numeric_dtype(frame[c]) and not pd.api.types.is_bool_dtype(frame[c])
    ]
    metrics = ([monitor] if monitor in numeric else []) + [c for c in numeric if c != monitor]
    return metrics + [c for c in ("params", "sec_per_epoch") if c in frame]


def summarise(frame: pd.DataFrame, over: Sequence[str] = ("seed",),
              metrics: Sequence[str] | None = None) -> tuple[pd.DataFrame, list[str], list[str]]:
    """One row per setting of the swept keys: runs, failed, incomplete, ``<m>_mean``, ``<m>_std``, best."""
    data = frame.copy()
    keys = swept_keys(data, over)
    parsed = [parse_overrides(text) for text in data.get("overrides", pd.Series([""] * len(data)))]
    for key in keys:
        values = data[key] if key in data else pd.Series([o.get(key, "") for o in parsed], index=data.index)
        data[key] = values.astype(str).where(values.notna(), "")
    if {"train_seconds", "epochs"} <= set(data):
        data["sec_per_epoch"] = pd.to_numeric(data["train_seconds"], errors="coerce") / data["epochs"]
    if metrics:
        _check_columns(data, metrics)
    metrics = [m for m in (metrics or default_metrics(data)) if m in data]
    groups = data.groupby(keys, sort=False) if keys else [((), data)]
    rows = [_summary_row(dict(zip(keys, values)), group, metrics) for values, group in groups]
    summary = pd.DataFrame(rows)
    if keys:
        summary = summary.sort_values(keys, key=_numeric_first, kind="stable").reset_index(drop=True)
    summary["best"] = _best_mask(summary, *monitor_of(frame))
    return summary, keys, metrics


def _check_columns(data: pd.DataFrame, metrics: Sequence[str]) -> None:
    unknown = [m for m in metrics if m not in data]
    if unknown:
        raise LabError(f"--metrics: no column {', '.join(unknown)} in these runs; "
                       f"expected any of {', '.join(default_metrics(data))}")


def _summary_row(key_values: dict, group: pd.DataFrame, metrics: Sequence[str]) -> dict:
    finished = group[group["status"] == FINISHED]
    row = key_values | {
        "runs": len(finished),
        "failed": int((group["status"] == FAILED).sum()),
        "incomplete": int((group["status"] == INCOMPLETE).sum()),
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
        best[summary[column].idxmax() if mode == "max" else summary[column].idxmin()] = True
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


# ---------------------------------------------------------------- the plot
def plot(frame: pd.DataFrame, summary: pd.DataFrame, keys: Sequence[str], metric: str, path: Path) -> Path:
    """Left: ``metric`` vs the first numeric swept key (mean ± std). Right: its learning curves."""
    figure = new_figure(11.0, 4.0)
    left, right = figure.subplots(1, 2)
    _plot_vs_key(left, summary, list(keys), metric)
    _plot_curves(right, frame, list(keys), metric)
    return save_png(figure, path)


def _plot_vs_key(ax, summary: pd.DataFrame, keys: list[str], metric: str) -> None:
    numeric = [k for k in keys if pd.to_numeric(summary[k], errors="coerce").notna().all()]
    x_key = numeric[0] if numeric else None
    ax.set_ylabel(f"{metric} (mean ± std over seeds)")
    ax.grid(alpha=0.3)
    if x_key is None:  # no numeric key: one point per setting, labelled by its values
        labels = [", ".join(map(str, r)) for r in summary[keys].itertuples(index=False)] if keys else ["all"]
        ax.errorbar(range(len(summary)), summary[f"{metric}_mean"], yerr=summary[f"{metric}_std"].fillna(0),
                    fmt="o", capsize=3)
        ax.set_xticks(range(len(summary)), labels, rotation=20, ha="right", fontsize=8)
        ax.set_xlabel(", ".join(keys) or "runs")
        return
    rest = [k for k in keys if k != x_key]
    for values, part in summary.groupby(rest, sort=False) if rest else [((), summary)]:
        ax.errorbar(pd.to_numeric(part[x_key]), part[f"{metric}_mean"], yerr=part[f"{metric}_std"].fillna(0),
                    marker="o", capsize=3, label=_label(rest, values) or metric)
    x = pd.to_numeric(summary[x_key])
    if x.min() > 0 and x.nunique() > 2:
        ax.set_xscale("log", base=2)
    ax.set_xlabel(x_key)
    if rest:
        ax.legend(fontsize=8)


def _plot_curves(ax, frame: pd.DataFrame, keys: list[str], metric: str) -> None:
    colors, seen = {}, set()
    for _, row in frame[frame["status"] == FINISHED].iterrows():
        curve = _read_metrics(row.get("dir"))
        if curve is None or metric not in curve:
            continue
        label = _label(keys, tuple(str(row.get(k, parse_overrides(row.get("overrides")).get(k, ""))) for k in keys)) or "run"
        color = colors.setdefault(label, f"C{len(colors) % 10}")
        ax.plot(curve["epoch"], curve[metric], color=color, alpha=0.7, marker=".",
                label=None if label in seen else label)
        seen.add(label)
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric)
    ax.set_title("learning curves (one line per run)", fontsize=9)
    if seen:
        ax.legend(fontsize=8)
    ax.grid(alpha=0.3)


def _read_metrics(run_dir) -> pd.DataFrame | None:
    if not isinstance(run_dir, str):
        return None
    try:
        return pd.read_csv(Path(run_dir) / METRICS_FILE)
    except (FileNotFoundError, pd.errors.EmptyDataError):
        return None


def _label(keys: Sequence[str], values) -> str:
    values = values if isinstance(values, tuple) else (values,)
    return ", ".join(f"{k}={v}" for k, v in zip(keys, values))


# ---------------------------------------------------------------- the command
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="lstmlab-report",
        description="Compare sweeps and runs: mean ± std over seeds per setting of the swept keys.",
    )
    parser.add_argument("paths", nargs="+", metavar="PATH", help="sweep or run directories, or results.csv files")
    parser.add_argument("--over", default="seed", help="keys averaged over, comma-separated (default: seed)")
    parser.add_argument("--metrics", default=None, help="metric columns to show, comma-separated (default: all)")
    parser.add_argument("--out", default=None, help="output prefix (default: PATH/report for the first PATH)")
    parser.add_argument("--plot", action="store_true", help="also write PREFIX.png")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        frame = load(args.paths)
        metrics = args.metrics.split(",") if args.metrics else None
        summary, keys, metrics = summarise(frame, over=args.over.split(","), metrics=metrics)
    except LabError as exc:
        print(f"lstmlab-report: error: {exc}", file=sys.stderr)
        return 2
    cells = format_frame(summary, keys, metrics)
    print(to_text(cells))
    prefix = Path(args.out) if args.out else _default_prefix(Path(args.paths[0]))
    atomic_write_csv(Path(f"{prefix}.csv"), summary)
    atomic_write_bytes(Path(f"{prefix}.md"), to_markdown(cells).encode())
    written = [Path(f"{prefix}.csv"), Path(f"{prefix}.md")]
    monitor = monitor_of(frame)[0] or (metrics[0] if metrics else None)
    if args.plot and monitor:
        written.append(plot(frame, summary, keys, monitor, Path(f"{prefix}.png")))
    print("wrote " + ", ".join(map(str, written)))
    return 0


def _default_prefix(first: Path) -> Path:
    return (first.parent if first.is_file() else first) / "report"


def console() -> None:
    sys.exit(main())


if __name__ == "__main__":
    console()
