"""The tokenised IMDB corpus in memory: every token type seen, and the train and test splits.

Built and cached by :func:`lstmlab.tasks.imdb_archive.load_imdb`; encoded into vocabulary ids
by :mod:`lstmlab.tasks.text`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

SPLITS = ("train", "test")


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

    def review_name(self, split: str, index: int) -> str:
        """The review's file (e.g. "test/pos/123_9.txt"), or its position when the file names are not kept."""
        names = self.split(split).names
        return repr(names[index]) if index < len(names) else f"{index} of the {split} split"

    def first_empty_review(self, split: str) -> int | None:
        """The index of the first review of ``split`` without a single token, or None."""
        empty = (self.split(split).lengths == 0).nonzero().flatten()
        return int(empty[0]) if len(empty) else None
