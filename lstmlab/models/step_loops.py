"""The manual backward's two loops in C++ (``step_loops.cpp``), built on first use.

At the adder's size (64 rows, 16 units) a step's arithmetic is a few thousand numbers, and the
fixed cost of each of the dozen calls a step makes from Python is what the step costs; at the
large sizes the calls still cost a few percent, and the Python backward takes the local
derivatives in a pass of its own. The C++ loops make the same products (through oneDNN or ATen,
as :class:`~lstmlab.models.matmul.StepWeight` decides) and σ calls, and do the rest in plain
loops, with no Python between them. :mod:`lstmlab.models.lstm_function` uses them where they
apply (see :func:`lstm_function.loops_in_cpp`) and its Python loops everywhere else.

They are compiled once per machine and checkout by ``torch.utils.cpp_extension`` (ninja and a
C++ compiler; about 20 s) into ``TORCH_EXTENSIONS_DIR`` or else ``~/.cache/torch_extensions``,
under a name that changes with the source, its path and the torch and Python versions. Where
they cannot be built, a warning says why once and the Python loops run.
``LSTMLAB_STEP_LOOPS=python`` never uses them (nor does code under :func:`python_only`);
``LSTMLAB_STEP_LOOPS=cpp`` makes a failed build an error.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import re
import shutil
import sys
import threading
import warnings
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Iterator

import torch

from . import matmul

__all__ = ["ENV", "compiled", "python_only", "wanted"]

ENV = "LSTMLAB_STEP_LOOPS"  # "python", "cpp", or unset (C++ where it can be built)
CHOICES = ("python", "cpp")
SOURCE = Path(__file__).with_suffix(".cpp")

_log = logging.getLogger(__name__)
_built: dict[str, ModuleType | None] = {}  # module name -> the module, or None if its build failed
_python_only = False  # set by python_only()


def wanted() -> bool:
    """Whether the C++ loops are allowed here: ``LSTMLAB_STEP_LOOPS`` is not ``python``, and no
    :func:`python_only` block is running."""
    choice = os.environ.get(ENV, "")
    if _python_only:
        return False
    if choice and choice not in CHOICES:
        raise ValueError(f"{ENV}={choice!r}: expected one of {', '.join(CHOICES)}, or unset")
    return choice != "python"


@contextmanager
def python_only() -> Iterator[None]:
    """Run the Python loops inside this block, whatever the environment says (for the benchmark's
    comparison; one setting for the whole process, not per thread)."""
    global _python_only
    before, _python_only = _python_only, True
    try:
        yield
    finally:
        _python_only = before


def compiled() -> ModuleType | None:
    """The compiled loops (built now if this machine has not built them yet), or None where they
    cannot be built: a warning then says why, once per process. Raises instead if
    ``LSTMLAB_STEP_LOOPS=cpp``."""
    name = _module_name()
    if name not in _built:
        with _building:  # one build per process, whichever thread asks first
            if name not in _built:
                _built[name] = _build(name)
    if _built[name] is None and os.environ.get(ENV) == "cpp":
        raise RuntimeError(f"{ENV}=cpp, but the C++ step loops ({SOURCE}) could not be built: see the warning above")
    return _built[name]


_building = threading.Lock()


@functools.cache
def _module_name() -> str:
    """A name that changes with the source (its text and where it lies: torch's build files name
    its path), the torch version and the Python version, so a build is never reused for
    another (read once per process)."""
    stamp = f"{torch.__version__}|{sys.version_info[:2]}|{SOURCE.resolve()}|".encode() + SOURCE.read_bytes()
    return "lstmlab_step_loops_" + hashlib.sha256(stamp).hexdigest()[:16]


def _build(name: str) -> ModuleType | None:
    try:
        from torch.utils import cpp_extension  # imported here: it is slow to import, and only needed once

        directory = Path(os.environ.get("TORCH_EXTENSIONS_DIR") or cpp_extension.get_default_build_root()) / name
        directory.mkdir(parents=True, exist_ok=True)
        with _only_builder(directory), _ninja_on_path():
            if not any(directory.glob(f"{name}*.so")):
                _log.info("building the C++ step loops of the manual backward (once per machine, about 20 s)")
            module = cpp_extension.load(name, [str(SOURCE)], extra_cflags=["-O3"], build_directory=str(directory))
        if matmul.ONEDNN and not module.onednn_linear_found():
            raise RuntimeError("this torch's oneDNN linear (mkldnn::_linear_pointwise) has a signature the loops do not know")
        return module
    except Exception as error:  # no compiler, no ninja, no Python headers: the Python loops still work
        warnings.warn(f"the C++ step loops could not be built, the Python loops run instead: {_reason(error)}", stacklevel=3)
        return None


@contextmanager
def _only_builder(directory: Path) -> Iterator[None]:
    """Hold the build directory alone, across processes. torch marks a build in progress with a
    file ``lock`` there and waits, without end, for it to go, so a build killed midway would
    leave every later process waiting; an flock is released when its holder dies. Holding it,
    a ``lock`` file can only be such a leftover, and is removed."""
    import fcntl  # POSIX; elsewhere the ImportError is a failed build, and the Python loops run

    with open(directory / "lstmlab.flock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        (directory / "lock").unlink(missing_ok=True)
        yield


@contextmanager
def _ninja_on_path() -> Iterator[None]:
    """torch runs ``ninja`` from the PATH: where there is none, the one the ninja package installed
    (in the virtual environment's bin, which is not on the PATH unless it is activated), for the
    time of the build."""
    before = os.environ.get("PATH", "")
    if shutil.which("ninja") is None:
        try:
            import ninja

            os.environ["PATH"] = os.pathsep.join([ninja.BIN_DIR, before])
        except ImportError:
            pass  # torch's own error then says that ninja is needed
    try:
        yield
    finally:
        os.environ["PATH"] = before


def _reason(error: Exception) -> str:
    """The line of a failed build's output that says what went wrong (it also holds the commands
    ninja ran, many lines long)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()] or [type(error).__name__]
    telling = [line for line in lines[1:] if re.search(r"error|not found|required", line, re.IGNORECASE)]
    return (telling or lines)[0][:300]
