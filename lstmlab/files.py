"""Writing a file atomically: a temporary file beside it, renamed over it once complete.

A reader (or a run that was killed halfway) sees the old file or the new one, never a part.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import IO, Iterator


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _read_umask()  # read once: os.umask can only be read by setting it, for the whole process


@contextlib.contextmanager
def atomic_file(path: Path | str, suffix: str = ".tmp") -> Iterator[IO[bytes]]:
    """A binary file to write that replaces ``path`` when the block ends, flushed to disk; on
    any error (or Ctrl-C) inside the block it is deleted and ``path`` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes it owner-only; these are ordinary files
        with os.fdopen(fd, "wb") as out:
            yield out
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: Path | str, data: bytes) -> None:
    """Writes ``data`` to ``path`` atomically (see :func:`atomic_file`)."""
    with atomic_file(path) as out:
        out.write(data)
