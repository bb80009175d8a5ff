"""Text into token ids: cleaning, the tokenizers (basic, spaCy), the vocabulary, encoding a corpus.

Part of the data layer under the IMDB task (see :mod:`lstmlab.tasks.imdb_archive`); it knows
nothing of the trainer, the CLI or Hydra. An unknown or missing tokenizer raises
:class:`~lstmlab.errors.DataError` with a one-line message.
"""

from __future__ import annotations

import re
from typing import Callable, Iterable, NamedTuple

import numpy as np
import torch

from ..errors import DataError
from .imdb_corpus import ImdbCorpus

PAD, UNK = "<pad>", "<unk>"
PAD_ID, UNK_ID = 0, 1
TOKENIZERS = ("basic", "spacy")
TRUNCATIONS = ("head", "tail")  # which end of a long review is kept


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
    if truncate not in TRUNCATIONS:
        raise ValueError(f"truncate={truncate!r}; expected {' or '.join(map(repr, TRUNCATIONS))}")
    part = corpus.split(split)
    ids = torch.from_numpy(_type_to_vocab(corpus.types, vocab)[part.token_ids.numpy()])
    reviews = list(torch.split(ids, part.lengths.tolist()))
    return reviews if max_length is None else crop(reviews, max_length, truncate)


def crop(reviews: list[torch.Tensor], length: int, truncate: str = "head") -> list[torch.Tensor]:
    """Each review cut to at most ``length`` tokens, keeping its start (``head``) or its end (``tail``)."""
    return [r[:length] if truncate == "head" else r[max(len(r) - length, 0) :] for r in reviews]


def _type_to_vocab(types: list[str], vocab: Vocab) -> np.ndarray:
    stoi = vocab.stoi
    return np.fromiter((stoi.get(t, UNK_ID) for t in types), dtype=np.int64, count=len(types))
