"""The ``lstmlab`` command: :func:`lstmlab.cli.main`, with a Ctrl-C while it is still loading
(torch and Hydra take a second or two to import) ended in one line rather than a traceback."""

from __future__ import annotations

import sys


def main() -> None:
    try:
        from .cli import main as run_cli
    except KeyboardInterrupt:
        print("lstmlab: interrupted while starting", file=sys.stderr)
        sys.exit(130)
    run_cli()
