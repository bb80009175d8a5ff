"""IMDB Large Movie Review data (Maas et al., 2011): reading, tokenising, caching, GloVe, batching.

The layer under the IMDB task (SPEC.md experiment 4). It knows nothing of the trainer, the
CLI or Hydra. Typical use::

    corpus = load_imdb("data/aclImdb_v1.tar.gz", tokenizer="basic", cache_dir=...)
    vocab = build_vocab(corpus, max_size=10_000)          # train split only
    train = encode_split(corpus, "train", vocab, max_length=400)
    weights, coverage = load_glove("glove.6B.100d.txt", vocab, dim=100)
    for index in bucket_batches([len(t) for t in train], 30, generator):
        inputs, lengths = pad_batch([train[i] for i in index])
        targets = corpus.train.labels[index]

Every problem with the data (missing, truncated or corrupt file, empty split, bad GloVe line)
raises :class:`DataError` with a one-line message that names the file and what was expected.
"""

from __future__ import annotations

import array
import contextlib
import gzip
import hashlib
import http.client
import io
import itertools
import json
import os
import re
import tarfile
import tempfile
import urllib.error
import urllib.request
import warnings
import zipfile
import zlib
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Callable, Iterable, Iterator, NamedTuple, Sequence

import numpy as np
import torch
from tqdm import tqdm

OFFICIAL_URL = "https://ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz"
OFFICIAL_FILENAME = "aclImdb_v1.tar.gz"
OFFICIAL_SIZE = 84_125_825
OFFICIAL_SHA256 = "c40f74a18d3b61f90feba1e17730e0d38e8b97c05fde7008942e91923d1658fe"
GLOVE_URL = "https://nlp.stanford.edu/data/glove.6B.zip"

SPLITS = ("train", "test")
LABELS = {"neg": 0, "pos": 1}
PAD, UNK = "<pad>", "<unk>"
PAD_ID, UNK_ID = 0, 1
TOKENIZERS = ("basic", "spacy")

#: bump when the cache layout or the parsing changes; part of every cache key
CACHE_FORMAT = "imdb-cache-1"


class DataError(ValueError):
    """The data cannot be used: the one-line message names the file and what was expected."""


# --------------------------------------------------------------------------- tokenizers

_HTML_TAG = re.compile(r"</?[a-zA-Z][^<>]*>")  # "<br />", not "< than 30 minutes"
_NEGATION = re.compile(r"(?=n't\b)")  # where "don't" is cut into "do" + "n't"
_BASIC_TOKEN = re.compile(
    r"""
      n't\b                                # the negation clitic, as GloVe and spaCy split it
    | '(?:s|re|ve|ll|d|m)\b                # "'s" of "it's", "'re" of "you're", ...
    | [^\W_]+(?:'(?!(?:s|re|ve|ll|d|m|t)\b)[^\W_]+)*   # words and numbers, "o'neill" kept whole
    | [^\w\s]|_                            # every other character alone: "!" "?" "." ":"
    """,
    re.VERBOSE,
)
_PLAIN_QUOTES = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"'})


def clean_text(text: str) -> str:
    """Lower-case, HTML tags such as ``<br />`` replaced by a space, typographic quotes made plain."""
    return _HTML_TAG.sub(" ", text).translate(_PLAIN_QUOTES).lower()


def basic_tokenize(text: str) -> list[str]:
    """The default tokenizer: fast, regex-based, Unicode-aware.

    Words are runs of letters and digits. Clitics are split off the way GloVe 6B and spaCy
    do ("don't" -> "do" "n't", "it's" -> "it" "'s"), so they find a GloVe vector. Every other
    non-space character is a token of its own, because punctuation such as "!" or "?" carries
    sentiment.
    """
    return _BASIC_TOKEN.findall(_NEGATION.sub(" ", clean_text(text)))


class Tokenizer(NamedTuple):
    """A named text -> tokens function; ``version`` is part of the cache key."""

    name: str
    version: str
    tokenize: Callable[[str], list[str]]

    def __call__(self, text: str) -> list[str]:
        return self.tokenize(text)


def get_tokenizer(name: str = "basic") -> Tokenizer:
    """The tokenizer called ``name``: "basic" (default) or "spacy" (optional extra)."""
    if name == "basic":
        return Tokenizer("basic", "basic-1", basic_tokenize)
    if name == "spacy":
        return _spacy_tokenizer()
    raise DataError(f"unknown tokenizer {name!r}; expected one of: {', '.join(TOKENIZERS)}")


def _spacy_tokenizer() -> Tokenizer:
    try:
        import spacy
    except ImportError:
        raise DataError("task.tokenizer=spacy needs the optional extra: pip install 'lstmlab[spacy]'") from None
    spacy_tokenizer = spacy.blank("en").tokenizer

    def tokenize(text: str) -> list[str]:
        return [token.text for token in spacy_tokenizer(clean_text(text)) if not token.is_space]

    return Tokenizer("spacy", f"spacy-1-{spacy.__version__}", tokenize)


# --------------------------------------------------------------------------- the corpus


@dataclass
class TokenizedSplit:
    """One split as a flat array of token ids into :attr:`ImdbCorpus.types`, cut by offsets.

    Review ``i`` is ``token_ids[offsets[i]:offsets[i + 1]]``; its label is ``labels[i]``
    (1 = pos, 0 = neg) and its file is ``names[i]`` (e.g. "train/pos/0_9.txt").
    """

    token_ids: torch.Tensor  # int32 (total tokens,)
    offsets: torch.Tensor  # int64 (n + 1,)
    labels: torch.Tensor  # int64 (n,)
    names: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def lengths(self) -> torch.Tensor:
        """Tokens per review (n,)."""
        return self.offsets.diff()


@dataclass
class ImdbCorpus:
    """The tokenised data set: every token type seen, and the train and test splits."""

    types: list[str]
    train: TokenizedSplit
    test: TokenizedSplit
    tokenizer: str = "basic"

    def split(self, name: str) -> TokenizedSplit:
        """The split called "train" or "test"."""
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; expected one of: {', '.join(SPLITS)}")
        return getattr(self, name)

    def tokens(self, split: str, index: int) -> list[str]:
        """The tokens of one review, as strings."""
        part = self.split(split)
        start, end = part.offsets[index].item(), part.offsets[index + 1].item()
        return [self.types[i] for i in part.token_ids[start:end].tolist()]


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
        with open_url(url, timeout=60) as response, _atomic_write(dest, suffix=".part") as out:
            total = int(response.headers.get("Content-Length") or 0) or expected_size
            size, digest = _copy_with_progress(response, out, total, progress, desc=dest.name)
            _check_download(dest, url, size, digest, expected_size, expected_sha256)
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        raise DataError(_not_found(dest, f"download failed: {getattr(exc, 'reason', exc)}")) from None
    return dest


@contextlib.contextmanager
def _atomic_write(dest: Path, suffix: str = ".tmp") -> Iterator[IO[bytes]]:
    """A temp file in ``dest``'s folder that replaces ``dest`` on success and is deleted on any failure."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    out = tempfile.NamedTemporaryFile(dir=dest.parent, prefix=f".{dest.name}.", suffix=suffix, delete=False)
    try:
        with out:
            yield out
        os.replace(out.name, dest)
    except BaseException:
        Path(out.name).unlink(missing_ok=True)
        raise


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


def safe_extract(archive: str | os.PathLike, target: str | os.PathLike) -> Path:
    """Extract a tarball into ``target``, refusing members that would land outside it.

    Absolute paths, ``..`` components and links pointing outside raise :class:`DataError`
    before anything is written; tarfile's "data" filter is applied on top.
    """
    archive, target = Path(archive), Path(target).resolve()
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
            for member in members:
                _check_member(archive, member)
            target.mkdir(parents=True, exist_ok=True)
            tar.extractall(target, members=members, filter="data")
    except (tarfile.TarError, EOFError, zlib.error) as exc:
        raise DataError(f"{archive}: cannot extract, expected a safe and complete tarball ({exc})") from None
    return target


def _check_member(archive: Path, member: tarfile.TarInfo) -> None:
    """Reject absolute paths and ``..`` in a member's name or link target."""
    names = [member.name] + ([member.linkname] if member.issym() or member.islnk() else [])
    for name in names:
        if name.startswith(("/", "\\")) or os.path.isabs(name) or ".." in re.split(r"[/\\]", name):
            raise DataError(f"{archive}: unsafe member {member.name!r}; expected relative paths inside the archive")


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
        with _atomic_write(cache_file) as out:
            torch.save(payload, out)
    except (OSError, RuntimeError) as exc:
        warnings.warn(f"could not write the IMDB cache {cache_file} ({exc}); the next load parses again", stacklevel=2)


# --------------------------------------------------------------------------- vocabulary


class Vocab:
    """Token <-> id. ``<pad>`` is 0, ``<unk>`` is 1, then the kept tokens, most frequent first."""

    pad_id, unk_id = PAD_ID, UNK_ID

    def __init__(self, tokens: Iterable[str]):
        self.itos: list[str] = [PAD, UNK, *(t for t in tokens if t not in (PAD, UNK))]
        self.stoi: dict[str, int] = {token: i for i, token in enumerate(self.itos)}

    @classmethod
    def from_counts(cls, counts: dict[str, int], max_size: int | None = None, min_freq: int = 1) -> "Vocab":
        """The ``max_size`` most frequent tokens with at least ``min_freq`` occurrences, ties by token string."""
        kept = sorted((t for t, c in counts.items() if c >= max(min_freq, 1)), key=lambda t: (-counts[t], t))
        return cls(kept[:max_size] if max_size is not None else kept)

    def __len__(self) -> int:
        return len(self.itos)

    def __getitem__(self, token: str) -> int:
        return self.stoi.get(token, UNK_ID)

    def __contains__(self, token: str) -> bool:
        return token in self.stoi

    def encode(self, tokens: Iterable[str]) -> list[int]:
        """Token ids, ``<unk>`` for tokens not in the vocabulary."""
        return [self.stoi.get(token, UNK_ID) for token in tokens]


def train_counts(corpus: ImdbCorpus) -> dict[str, int]:
    """How often each token occurs in the training split (tokens seen only in test are absent)."""
    counts = np.bincount(corpus.train.token_ids.numpy(), minlength=len(corpus.types))
    return {corpus.types[i]: int(counts[i]) for i in np.flatnonzero(counts)}


def build_vocab(corpus: ImdbCorpus, max_size: int | None = 10_000, min_freq: int = 1) -> Vocab:
    """Vocabulary of the training split only: ``<pad>``, ``<unk>`` + at most ``max_size`` tokens."""
    return Vocab.from_counts(train_counts(corpus), max_size=max_size, min_freq=min_freq)


def encode_split(
    corpus: ImdbCorpus,
    split: str,
    vocab: Vocab,
    max_length: int | None = None,
    truncate: str = "head",
) -> list[torch.Tensor]:
    """Each review of ``split`` as an int64 tensor of vocabulary ids.

    With ``max_length``, longer reviews keep their first (``truncate="head"``) or last
    (``truncate="tail"``) ``max_length`` tokens.
    """
    if truncate not in ("head", "tail"):
        raise ValueError(f"truncate={truncate!r}; expected 'head' or 'tail'")
    part = corpus.split(split)
    ids = torch.from_numpy(_type_to_vocab(corpus.types, vocab)[part.token_ids.numpy()])
    reviews = torch.split(ids, part.lengths.tolist())
    if max_length is None:
        return list(reviews)
    return [r[:max_length] if truncate == "head" else r[max(len(r) - max_length, 0) :] for r in reviews]


def _type_to_vocab(types: list[str], vocab: Vocab) -> np.ndarray:
    stoi = vocab.stoi
    return np.fromiter((stoi.get(t, UNK_ID) for t in types), dtype=np.int64, count=len(types))


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
                raise DataError(f"{path}: line {number} has {len(rest.split())} numbers after the word, expected {dim}")
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


# --------------------------------------------------------------------------- batching


def bucket_batches(
    lengths: Sequence[int] | torch.Tensor,
    batch_size: int,
    generator: torch.Generator | None = None,
    shuffle: bool = True,
) -> list[list[int]]:
    """Index batches of similar length: sort by length, cut into ``batch_size`` chunks.

    With ``shuffle``, equal lengths are ordered at random and the batch order is shuffled,
    both from ``generator`` (so a seed gives the same batches). Without, batches go from
    shortest to longest. Every index appears exactly once.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}; expected a positive integer")
    lengths = torch.as_tensor(lengths, dtype=torch.float64)
    keys = lengths + torch.rand(len(lengths), generator=generator, dtype=torch.float64) * 0.5 if shuffle else lengths
    order = torch.argsort(keys, stable=True)
    batches = list(torch.split(order, batch_size))
    if shuffle:
        batches = [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]
    return [batch.tolist() for batch in batches]


def pad_batch(seqs: Sequence[Sequence[int] | torch.Tensor], pad_id: int = PAD_ID) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad id sequences to (B, T_max) int64 with ``pad_id``; also return their lengths (B,)."""
    tensors = [torch.as_tensor(s, dtype=torch.int64) for s in seqs]
    lengths = torch.tensor([len(t) for t in tensors], dtype=torch.int64)
    padded = torch.full((len(tensors), int(lengths.max()) if len(tensors) else 0), pad_id, dtype=torch.int64)
    for row, t in enumerate(tensors):
        padded[row, : len(t)] = t
    return padded, lengths
