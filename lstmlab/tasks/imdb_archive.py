"""IMDB Large Movie Review data (Maas et al., 2011): finding, downloading, reading, tokenising, caching.

The layer under the IMDB task (SPEC.md experiment 4), with :mod:`.text` (tokenizers, vocabulary),
:mod:`.glove` and :mod:`.batching`. It knows nothing of the trainer, the CLI or Hydra. Typical use
(``load_imdb`` is here; ``build_vocab`` and ``encode_split`` are in :mod:`.text`, ``load_glove`` in
:mod:`.glove`, ``bucket_batches`` and ``pad_batch`` in :mod:`.batching`)::

    corpus = load_imdb("data/aclImdb_v1.tar.gz", tokenizer="basic", cache_dir=...)
    vocab = build_vocab(corpus, max_size=10_000)          # train split only
    train = encode_split(corpus, "train", vocab, max_length=400)
    weights, coverage = load_glove("glove.6B.100d.txt", vocab, dim=100)
    for index in bucket_batches([len(t) for t in train], 30, generator):
        inputs, lengths = pad_batch([train[i] for i in index])
        targets = corpus.train.labels[index]

Every problem with the data (missing, truncated or corrupt file, empty split, bad GloVe line)
raises :class:`~lstmlab.errors.DataError` with a one-line message that names the file and what
was expected.
"""

from __future__ import annotations

import array
import hashlib
import http.client
import itertools
import json
import os
import tarfile
import urllib.error
import urllib.request
import warnings
import zlib
from collections import defaultdict
from pathlib import Path
from typing import Callable, Iterator, NamedTuple, Sequence

import numpy as np
import torch
from tqdm import tqdm

from ..errors import DataError
from ..files import atomic_file
from .imdb_corpus import SPLITS, ImdbCorpus, TokenizedSplit
from .text import Tokenizer, get_tokenizer

OFFICIAL_URL = "https://ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz"
OFFICIAL_FILENAME = "aclImdb_v1.tar.gz"
OFFICIAL_SIZE = 84_125_825
OFFICIAL_SHA256 = "c40f74a18d3b61f90feba1e17730e0d38e8b97c05fde7008942e91923d1658fe"

LABELS = {"neg": 0, "pos": 1}

#: bump when the cache layout or the parsing changes; part of every cache key
CACHE_FORMAT = "imdb-cache-1"


# --------------------------------------------------------------------------- loading


def load_imdb(
    path: str | os.PathLike,
    *,
    tokenizer: str = "basic",
    cache_dir: str | os.PathLike | None = None,
    use_cache: bool = True,
    download: bool = True,
    urlopen: Callable | None = None,
    progress: bool = True,
) -> ImdbCorpus:
    """Read, tokenise and cache the IMDB reviews at ``path``.

    ``path`` is the official ``aclImdb_v1.tar.gz`` (or a tarball with its layout), its
    extracted ``aclImdb/`` folder, or the folder that holds either. A missing file named
    ``aclImdb_v1.tar.gz`` is downloaded when ``download`` is true (see :func:`locate_imdb`).
    The result is cached in ``cache_dir`` (default :func:`default_cache_dir`), keyed by the
    data's content and the tokenizer, so the next load takes about a second.
    """
    tokenize = get_tokenizer(tokenizer)
    source = locate_imdb(path, download=download, urlopen=urlopen, progress=progress)
    if not use_cache:
        return tokenize_reviews(read_reviews(source, progress=progress), tokenize, progress=progress)
    key = cache_key(source, tokenize)
    cache_file = Path(cache_dir if cache_dir is not None else default_cache_dir()) / f"imdb-{key[:24]}.pt"
    corpus = read_cache(cache_file, key)
    if corpus is None:
        corpus = tokenize_reviews(read_reviews(source, progress=progress), tokenize, progress=progress)
        write_cache(cache_file, key, corpus)
    return corpus


def locate_imdb(
    path: str | os.PathLike, *, download: bool = True, urlopen: Callable | None = None, progress: bool = True
) -> Path:
    """The tarball or ``aclImdb`` folder to read for ``path``, downloading the official archive if allowed.

    Only a missing file called ``aclImdb_v1.tar.gz`` is downloaded; any other missing path
    raises :class:`DataError` saying where to put the archive.
    """
    path = Path(path).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        return _imdb_folder(path)
    if download and path.name == OFFICIAL_FILENAME:
        return download_archive(path, urlopen=urlopen, progress=progress)
    raise DataError(_not_found(path))


def _not_found(path: Path, reason: str = "") -> str:
    why = f" ({reason})" if reason else ""
    return (
        f"IMDB archive not found at {path}{why}; download {OFFICIAL_URL} and put it there, "
        f"or point task.data_path at a copy"
    )


def _imdb_folder(path: Path) -> Path:
    """``path`` itself if it holds train/ and test/, else its aclImdb/ or aclImdb_v1.tar.gz."""
    if (path / "aclImdb").is_dir():
        return path / "aclImdb"
    if (path / "train").is_dir() or (path / "test").is_dir():
        return path
    if (path / OFFICIAL_FILENAME).is_file():
        return path / OFFICIAL_FILENAME
    raise DataError(f"{path}: expected the IMDB folder aclImdb/ (train/ and test/) or {OFFICIAL_FILENAME} in it")


class RawSplit(NamedTuple):
    """One split as read from disk, in a fixed order (label, then numeric id)."""

    texts: list[str]
    labels: list[int]
    names: list[str]


def read_reviews(source: str | os.PathLike, *, progress: bool = False) -> dict[str, RawSplit]:
    """The labelled reviews of a tarball (read as a stream, in one pass) or of an aclImdb folder.

    Only ``{train,test}/{pos,neg}/*.txt`` are read; ``train/unsup``, ``*.feat`` and the url
    lists are skipped. Raises :class:`DataError` on a corrupt archive or an empty split folder.
    """
    source = Path(source)
    found: dict[tuple[str, str], list[tuple[str, str]]] = {(s, lab): [] for s in SPLITS for lab in LABELS}
    reviews = _tar_reviews(source) if source.is_file() else _folder_reviews(source)
    with tqdm(reviews, desc="reading IMDB", unit=" reviews", disable=not progress, leave=False) as bar:
        for split, label, name, text in bar:
            found[split, label].append((name, text))
    for (split, label), items in found.items():
        if not items:
            raise DataError(f"{source}: no reviews in {split}/{label}; expected aclImdb/{split}/{label}/*.txt")
    return {split: _ordered_split(split, found) for split in SPLITS}


def _review_key(parts: Sequence[str]) -> tuple[str, str, str] | None:
    """(split, label, file name) for a path ending in {train,test}/{pos,neg}/<name>.txt, else None."""
    if len(parts) >= 3 and parts[-3] in SPLITS and parts[-2] in LABELS and parts[-1].endswith(".txt"):
        return parts[-3], parts[-2], parts[-1]
    return None


def _decode(data: bytes) -> str:
    return data.decode("utf-8", errors="replace")


def _tar_reviews(archive: Path) -> Iterator[tuple[str, str, str, str]]:
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar:
                key = _review_key(member.name.split("/")) if member.isfile() else None
                if key is not None:
                    yield *key, _decode(tar.extractfile(member).read())
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        raise DataError(f"{archive}: corrupt or truncated IMDB archive, expected a complete .tar.gz ({exc})") from None


def _folder_reviews(folder: Path) -> Iterator[tuple[str, str, str, str]]:
    for split in SPLITS:
        for label in LABELS:
            directory = folder / split / label
            if directory.is_dir():
                for file in directory.glob("*.txt"):
                    yield split, label, file.name, _decode(file.read_bytes())


def _numeric_id(name: str) -> tuple[int, str]:
    head = name.split("_", 1)[0]
    return (int(head), name) if head.isdigit() else (-1, name)


def _ordered_split(split: str, found: dict) -> RawSplit:
    texts, labels, names = [], [], []
    for label in LABELS:
        for name, text in sorted(found[split, label], key=lambda item: _numeric_id(item[0])):
            texts.append(text)
            labels.append(LABELS[label])
            names.append(f"{split}/{label}/{name}")
    return RawSplit(texts, labels, names)


def tokenize_reviews(reviews: dict[str, RawSplit], tokenizer: Tokenizer, *, progress: bool = False) -> ImdbCorpus:
    """Tokenise every review; token types are numbered in order of first appearance."""
    type_ids: defaultdict[str, int] = defaultdict(itertools.count().__next__)
    splits = {}
    for split in SPLITS:
        raw = reviews[split]
        flat, offsets = array.array("i"), [0]
        for text in tqdm(raw.texts, desc=f"tokenising {split}", unit=" reviews", disable=not progress, leave=False):
            flat.extend(map(type_ids.__getitem__, tokenizer(text)))
            offsets.append(len(flat))
        splits[split] = TokenizedSplit(
            token_ids=torch.from_numpy(np.frombuffer(flat, dtype=np.int32).copy()),
            offsets=torch.tensor(offsets, dtype=torch.int64),
            labels=torch.tensor(raw.labels, dtype=torch.int64),
            names=list(raw.names),
        )
    return ImdbCorpus(types=list(type_ids), tokenizer=tokenizer.name, **splits)


# --------------------------------------------------------------------------- download


def download_archive(
    dest: str | os.PathLike,
    *,
    url: str = OFFICIAL_URL,
    expected_size: int | None = OFFICIAL_SIZE,
    expected_sha256: str | None = OFFICIAL_SHA256,
    urlopen: Callable | None = None,
    progress: bool = True,
) -> Path:
    """Download ``url`` to ``dest`` with a progress bar, check size and sha256, then rename atomically.

    ``urlopen`` defaults to :func:`urllib.request.urlopen` (tests pass a fake). Nothing is
    left at ``dest`` unless the download is complete and its checksum matches.
    """
    dest = Path(dest)
    open_url = urlopen or urllib.request.urlopen
    try:
        with open_url(url, timeout=60) as response, atomic_file(dest, suffix=".part") as out:
            total = int(response.headers.get("Content-Length") or 0) or expected_size
            size, digest = _copy_with_progress(response, out, total, progress, desc=dest.name)
            _check_download(dest, url, size, digest, expected_size, expected_sha256)
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        raise DataError(_not_found(dest, f"download failed: {getattr(exc, 'reason', exc)}")) from None
    return dest


def _copy_with_progress(response, out, total: int | None, progress: bool, desc: str) -> tuple[int, str]:
    digest, size = hashlib.sha256(), 0
    with tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024, disable=not progress) as bar:
        while chunk := response.read(1 << 20):
            out.write(chunk)
            digest.update(chunk)
            size += len(chunk)
            bar.update(len(chunk))
    return size, digest.hexdigest()


def _check_download(
    dest: Path, url: str, size: int, sha256: str, expected_size: int | None, expected_sha256: str | None
) -> None:
    if expected_size is not None and size != expected_size:
        raise DataError(f"{dest}: download of {url} gave {size:,} bytes, expected {expected_size:,}; nothing saved")
    if expected_sha256 is not None and sha256 != expected_sha256:
        raise DataError(f"{dest}: download of {url} has sha256 {sha256}, expected {expected_sha256}; nothing saved")


# --------------------------------------------------------------------------- cache


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/lstmlab/imdb``, i.e. ``~/.cache/lstmlab/imdb`` by default."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "lstmlab" / "imdb"


def source_fingerprint(source: str | os.PathLike) -> str:
    """sha256 of a tarball's bytes, or of the names, sizes and mtimes of an aclImdb folder's reviews."""
    source, digest = Path(source), hashlib.sha256()
    if source.is_file():
        with open(source, "rb") as file:
            while chunk := file.read(1 << 22):
                digest.update(chunk)
        return "file:" + digest.hexdigest()
    for split in SPLITS:
        for label in LABELS:
            for file in sorted((source / split / label).glob("*.txt")):
                stat = file.stat()
                digest.update(f"{split}/{label}/{file.name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return "folder:" + digest.hexdigest()


def cache_key(source: str | os.PathLike, tokenizer: Tokenizer) -> str:
    """Hex key of (cache format, data content, tokenizer name and version)."""
    parts = {
        "format": CACHE_FORMAT,
        "source": source_fingerprint(source),
        "tokenizer": [tokenizer.name, tokenizer.version],
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def read_cache(cache_file: Path, key: str) -> ImdbCorpus | None:
    """The cached corpus, or None when there is none or it is unreadable (it will be rebuilt)."""
    if not cache_file.is_file():
        return None
    try:
        payload = torch.load(cache_file, weights_only=True)
        if payload["key"] != key:
            raise ValueError("cache key does not match")
        splits = {name: TokenizedSplit(**payload["splits"][name]) for name in SPLITS}
        return ImdbCorpus(types=payload["types"], tokenizer=payload["tokenizer"], **splits)
    except Exception as exc:  # any damage to the cache only means it is rebuilt
        reason = exc.__class__.__name__
        warnings.warn(f"ignoring unreadable IMDB cache {cache_file} ({reason}); rebuilding it", stacklevel=2)
        return None


def write_cache(cache_file: Path, key: str, corpus: ImdbCorpus) -> None:
    """Save the corpus atomically (temp file in the same folder, then os.replace); warn if impossible."""
    payload = {
        "key": key,
        "types": corpus.types,
        "tokenizer": corpus.tokenizer,
        "splits": {name: vars(corpus.split(name)) for name in SPLITS},
    }
    try:
        with atomic_file(cache_file) as out:
            torch.save(payload, out)
    except (OSError, RuntimeError) as exc:
        warnings.warn(f"could not write the IMDB cache {cache_file} ({exc}); the next load parses again", stacklevel=2)
