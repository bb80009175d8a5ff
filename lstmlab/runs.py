"""The runs under a directory, as one table: a sweep's ``results.csv``, and what
``lstmlab-report`` reads.

Each run directory (one Hydra wrote a ``.hydra/`` into) gives a row: its job number, status,
overrides, error, directory and the option of each config group, then its ``result.csv`` row;
a run without ``result.csv`` is ``incomplete`` and gives the config Hydra saved.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import pandas as pd

from .config_keys import flatten_config
from .results import COMMAND_COLUMNS, command_of, hydra_meta, hydra_record, read_result

FINISHED, FAILED, DIVERGED, INTERRUPTED = "finished", "failed", "diverged", "interrupted"
INCOMPLETE = "incomplete"  # no result.csv: running, killed, or stopped before its training began
STATUSES = (FINISHED, FAILED, DIVERGED, INTERRUPTED, INCOMPLETE)  # the order the summary counts them in
LEAD_COLUMNS = ["job", "status", "overrides", "error", "dir"]


def run_dirs(root: Path) -> list[Path]:
    """The run directories at or under ``root``: those Hydra wrote a ``.hydra/`` into."""
    return sorted({p.parent for p in Path(root).rglob(".hydra") if p.is_dir()})


def written_at(run_dir: Path) -> int | None:
    """When Hydra last wrote the run's ``.hydra/`` record (it does so as each job starts), in ns."""
    try:
        return (run_dir / ".hydra" / "overrides.yaml").stat().st_mtime_ns
    except OSError:
        return None


def job_row(run_dir: Path, root: Path) -> dict:
    """One row of results.csv: job number, status, overrides, error, dir, choices, then result.csv's row.

    ``overrides`` and ``choices`` (:func:`~lstmlab.results.command_of`) are those of the command
    that wrote result.csv, which it holds; Hydra's ``.hydra/`` may describe a later command that
    stopped before writing anything. ``choices`` gives a group one sweep did not override a value
    when sweeps are compared.
    """
    meta = hydra_meta(run_dir)
    result = read_result(run_dir)
    if result is None:  # running, interrupted or killed: the config Hydra saved
        result = flatten_config(hydra_record(run_dir, "config")) | {"status": INCOMPLETE}
    command = command_of(run_dir, meta)
    for column in COMMAND_COLUMNS:  # result.csv's own record, when it has one (an empty one reads as NaN)
        if column in result:
            value = result.pop(column)
            command[column] = value if isinstance(value, str) else ""
    num = (meta.get("job") or {}).get("num")
    lead = {
        "job": num if isinstance(num, int) else None,  # a single run has none
        "status": result.pop("status", INCOMPLETE),
        "overrides": command.get("overrides", ""),
        "error": result.pop("error", ""),
        "dir": run_dir.relative_to(root).as_posix() if run_dir != root else ".",
        "choices": command.get("choices", ""),
    }
    return lead | result


def collect(root: Path, dirs: list[Path] | None = None) -> pd.DataFrame:
    """One row per run under ``root`` (finished, failed or incomplete; or per run of ``dirs``),
    ordered by job number."""
    root = Path(root)
    rows = [job_row(d, root) for d in (run_dirs(root) if dirs is None else dirs)]
    frame = _nullable_numbers(pd.DataFrame(rows))
    if frame.empty:
        return pd.DataFrame(columns=LEAD_COLUMNS)
    frame = frame.sort_values(["job", "dir"], key=_natural, na_position="last", kind="stable")
    return frame[LEAD_COLUMNS + [c for c in frame.columns if c not in LEAD_COLUMNS]].reset_index(drop=True)


def _nullable_numbers(frame: pd.DataFrame) -> pd.DataFrame:
    """Numeric columns as pandas' nullable dtypes (a job number stays 3, not 3.0, beside a run
    without one); text columns left as Python strings."""
    converted = frame.convert_dtypes()
    text = [c for c in frame.columns if converted[c].dtype == "string"]
    converted[text] = frame[text]
    return converted


def _natural(column: pd.Series) -> pd.Series:
    numbers = pd.to_numeric(column, errors="coerce")
    return numbers if numbers.notna().all() else column.astype(str)


def parse_overrides(text: Any) -> dict[str, str]:
    """'model.hidden_size=8 seed=1' -> {'model.hidden_size': '8', 'seed': '1'}."""
    if not isinstance(text, str) or not text.strip():
        return {}
    try:
        items = shlex.split(text)
    except ValueError:
        items = text.split()
    pairs = (item.split("=", 1) for item in items if "=" in item)
    return {key.lstrip("+~"): value for key, value in pairs}


def count_statuses(statuses: pd.Series) -> str:
    """'2 finished, 1 interrupted': each status present, in the order of STATUSES, then any other."""
    counts = statuses.astype(str).value_counts()
    order = [s for s in STATUSES if s in counts] + sorted(s for s in counts.index if s not in STATUSES)
    return ", ".join(f"{counts[s]} {s}" for s in order)
