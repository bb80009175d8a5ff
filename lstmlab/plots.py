"""A run's figures, drawn with matplotlib (Agg, no display) and written atomically as PNGs.

- ``curves.png`` for every run, from its ``metrics.csv``: each loss column per epoch on a
  log scale, and the other metrics (accuracies, ...) beside it when there are any.
- one PNG per :class:`lstmlab.tasks.base.LinePlot` a task returns from ``figures`` (e.g.
  ``prediction.png``); a task without figures returns none.

Regenerate runs' ``curves.png``: ``python -m lstmlab.plots RUN_DIR [RUN_DIR ...]``.
"""

from __future__ import annotations

import argparse
import io
import itertools
import sys
from pathlib import Path
from typing import Mapping, Sequence

import pandas as pd

from .errors import first_line
from .files import atomic_write_bytes
from .results import BOOKKEEPING, CURVES_FILE, METRICS_FILE
from .tasks.base import LinePlot

_LINE_STYLES = ("-", "--", ":", "-.")  # lines that coincide (train_loss, train_mse) stay visible


def new_figure(width: float, height: float):
    """A matplotlib Figure of that size in inches, made without pyplot."""
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend

    return Figure(figsize=(width, height), dpi=120, layout="constrained")


def save_png(figure, path: Path) -> Path:
    """Writes the figure to ``path`` as a PNG, atomically."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    atomic_write_bytes(path, buffer.getvalue())
    return path


def is_loss_column(name: str) -> bool:
    return "loss" in name or name.endswith("mse")


def write_curves(run_dir: Path | str) -> Path | None:
    """``curves.png`` from ``run_dir/metrics.csv``; None when the run has no epochs yet."""
    run_dir = Path(run_dir)
    path = run_dir / METRICS_FILE
    if not path.exists():
        return None
    metrics = pd.read_csv(path)
    if metrics.empty:
        return None
    return save_png(curves_figure(metrics), run_dir / CURVES_FILE)


def curves_figure(metrics: pd.DataFrame):
    """The figure of ``curves.png``: a panel of losses (log scale), and one of the other metrics
    if there are any; each column drawn over the epochs it has values for."""
    from matplotlib.ticker import MaxNLocator

    columns = [c for c in metrics.columns if c not in BOOKKEEPING]
    losses = [c for c in columns if is_loss_column(c)]
    others = [c for c in columns if not is_loss_column(c) and pd.api.types.is_numeric_dtype(metrics[c])]
    panels = [p for p in ((losses, "loss (log scale)", True), (others, "metric", False)) if p[0]]
    figure = new_figure(6.0 * len(panels), 4.0)
    for axes, (names, ylabel, log) in zip(figure.subplots(1, len(panels), squeeze=False)[0], panels):
        for name, style in zip(names, itertools.cycle(_LINE_STYLES)):
            points = epochs_with_values(metrics, name, positive=log)
            axes.plot(points["epoch"], points[name], style, label=name, marker=_marker(len(points), len(metrics)))
        if log:
            axes.set_yscale("log")
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.set_xlabel("epoch")
        axes.set_ylabel(ylabel)
        axes.grid(True, which="major", alpha=0.3)
        axes.legend()
    figure.suptitle(f"training curves ({len(metrics)} epochs)")
    return figure


def epochs_with_values(metrics: pd.DataFrame, name: str, positive: bool = False) -> pd.DataFrame:
    """``epoch`` and ``name`` on the epochs where ``name`` has a value (> 0 if ``positive``):
    test metrics of a run evaluated every few epochs are empty on the others."""
    points = metrics[["epoch", name]].dropna()
    return points[points[name] > 0] if positive else points


def _marker(points: int, epochs: int) -> str | None:
    """Dots where a column has a value on only some epochs (or there is one), a plain line otherwise."""
    return "o" if points == 1 or points < epochs else None


def draw_line_plot(plot: LinePlot, path: Path) -> Path:
    """One task figure: its curves (dashed where asked), vertical markers, labels and legend."""
    figure = new_figure(10.0, 4.5)
    axes = figure.subplots()
    for curve in plot.curves:
        style = {"linestyle": "--", "linewidth": 1.6} if curve.dashed else {"linestyle": "-", "linewidth": 2.0}
        axes.plot(curve.x.numpy(), curve.y.detach().numpy(), label=curve.label, **style)
    for x, label in plot.vlines:
        axes.axvline(x, color="grey", linestyle=":", linewidth=1.5, label=label)
    axes.set_title(plot.title)
    axes.set_xlabel(plot.xlabel)
    axes.set_ylabel(plot.ylabel)
    axes.grid(True, alpha=0.3)
    axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return save_png(figure, path)


def write_figures(run_dir: Path | str, figures: Mapping[str, LinePlot]) -> list[Path]:
    """``<name>.png`` in ``run_dir`` for each of a task's figures."""
    return [draw_line_plot(plot, Path(run_dir) / f"{name}.png") for name, plot in figures.items()]


PROG = "python -m lstmlab.plots"


def main(argv: Sequence[str] | None = None) -> int:
    """Redraws each run directory's ``curves.png``; prints the paths written, 2 on bad input."""
    parser = argparse.ArgumentParser(prog=PROG, description=f"Redraw {CURVES_FILE} of runs from their {METRICS_FILE}.")
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help=f"a run directory (one holding {METRICS_FILE})")
    args = parser.parse_args(argv)
    missing = [d for d in args.run_dirs if not (Path(d) / METRICS_FILE).is_file()]
    if missing:  # checked before drawing anything
        return _error(f"{missing[0]}: no {METRICS_FILE} (expected a run directory)")
    for directory in args.run_dirs:
        try:
            written = write_curves(directory)
        except (ValueError, KeyError, UnicodeDecodeError) as exc:  # pandas' parser errors are ValueErrors
            return _error(f"{Path(directory) / METRICS_FILE}: not a table of epochs ({_what_is_wrong(exc)})")
        if written is None:
            return _error(f"{Path(directory) / METRICS_FILE}: no epochs yet, nothing to draw")
        print(written)
    return 0


def _error(message: str) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return 2


def _what_is_wrong(exc: BaseException) -> str:
    return f"no column {exc.args[0]}" if isinstance(exc, KeyError) else first_line(exc)[:120]


if __name__ == "__main__":
    sys.exit(main())
