"""GloVe vectors (``glove.6B``: plain, gzipped or the official zip) as the embedding matrix of a vocabulary.

:func:`load_glove` also says how much of the vocabulary got a vector (:class:`Coverage`). A
missing, corrupt or malformed file raises :class:`~lstmlab.errors.DataError` with a one-line
message that names the file (and the line) and what was expected.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import os
import zipfile
import zlib
from pathlib import Path
from typing import Iterable, Iterator, NamedTuple, Sequence

import numpy as np
import torch

from ..errors import DataError
from .text import PAD, UNK, Vocab

GLOVE_URL = "https://nlp.stanford.edu/data/glove.6B.zip"


# --------------------------------------------------------------------------- GloVe


class Coverage(NamedTuple):
    """How many vocabulary words (``<pad>`` and ``<unk>`` not counted) got a pre-trained vector."""

    found: int
    total: int

    @property
    def fraction(self) -> float:
        return self.found / self.total if self.total else 0.0

    def __str__(self) -> str:
        return f"{self.found:,}/{self.total:,} ({self.fraction:.1%})"


def load_glove(
    path: str | os.PathLike,
    vocab: Vocab | Sequence[str],
    dim: int = 100,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, Coverage]:
    """Embedding matrix (len(vocab), dim) float32 from GloVe vectors, and its :class:`Coverage`.

    ``path`` is ``glove.6B.{dim}d.txt``, the same gzipped, or ``glove.6B.zip``. Words with
    no vector are drawn from a normal with the std of the loaded vectors (``generator``,
    default seed 0); the ``<pad>`` row is zero.
    """
    words = vocab.itos if isinstance(vocab, Vocab) else list(vocab)
    index = {word: i for i, word in enumerate(words)}
    weights = torch.zeros(len(words), dim)
    found = torch.zeros(len(words), dtype=torch.bool)
    for row, vector in _glove_vectors(Path(path), index, dim):
        if not found[row]:
            weights[row], found[row] = vector, True
    _fill_missing(weights, found, generator)
    if PAD in index:
        weights[index[PAD]] = 0.0
    ordinary = torch.tensor([w not in (PAD, UNK) for w in words], dtype=torch.bool)
    return weights, Coverage(int((found & ordinary).sum()), int(ordinary.sum()))


def _fill_missing(weights: torch.Tensor, found: torch.Tensor, generator: torch.Generator | None) -> None:
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    std = weights[found].std().item() if found.sum() > 1 else 0.4  # GloVe 6B 100d's overall std is ~0.4
    missing = ~found
    weights[missing] = torch.randn(int(missing.sum()), weights.shape[1], generator=generator) * std


def _glove_vectors(path: Path, index: dict[str, int], dim: int) -> Iterator[tuple[int, torch.Tensor]]:
    """(vocab row, vector) for each GloVe line whose word is in ``index``; checks every line's width."""
    lines_read = 0
    with _glove_lines(path, dim) as lines:
        for number, line in enumerate(lines, start=1):
            word, _, rest = line.rstrip().partition(" ")
            if not word:
                continue
            lines_read += 1
            if rest.count(" ") != dim - 1 and len(rest.split()) != dim:
                raise DataError(f"{path}: line {number} has {len(rest.split())} values after its first word, "
                                f"expected a GloVe line: a word and {dim} numbers")
            if word in index:
                yield index[word], _parse_vector(path, number, rest)
    if lines_read == 0:
        raise DataError(f"{path}: no vectors; expected lines of 'word' and {dim} numbers")


def _parse_vector(path: Path, number: int, numbers: str) -> torch.Tensor:
    try:
        return torch.from_numpy(np.array(numbers.split(), dtype=np.float32))
    except ValueError:
        raise DataError(f"{path}: line {number} has a value that is not a number; expected numbers") from None


@contextlib.contextmanager
def _glove_lines(path: Path, dim: int) -> Iterator[Iterator[str]]:
    """The text lines of a plain, .gz or .zip GloVe file."""
    if not path.is_file():
        member = f"glove.6B.{dim}d.txt"
        raise DataError(f"GloVe file not found at {path}; download {GLOVE_URL} and put it (or its {member}) there")
    with contextlib.ExitStack() as stack:
        try:
            raw = _open_glove_bytes(path, dim, stack)
        except (OSError, zipfile.BadZipFile) as exc:
            raise DataError(f"{path}: cannot read GloVe vectors ({exc})") from None
        text = stack.enter_context(io.TextIOWrapper(raw, encoding="utf-8", errors="replace", newline="\n"))
        yield _checked_lines(path, text)


def _open_glove_bytes(path: Path, dim: int, stack: contextlib.ExitStack):
    if path.name.endswith(".gz"):
        return stack.enter_context(gzip.open(path, "rb"))
    if not path.name.endswith(".zip"):
        return stack.enter_context(open(path, "rb"))
    archive = stack.enter_context(zipfile.ZipFile(path))
    member = f"glove.6B.{dim}d.txt"
    matches = [name for name in archive.namelist() if name == member or name.endswith("/" + member)]
    if not matches:
        raise DataError(f"{path}: no member {member}; expected the official glove.6B.zip")
    return stack.enter_context(archive.open(matches[0]))


def _checked_lines(path: Path, text: Iterable[str]) -> Iterator[str]:
    try:
        yield from text
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{path}: corrupt or truncated GloVe file ({exc})") from None
