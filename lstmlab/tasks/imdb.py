"""IMDB sentiment classification (SPEC.md experiment 4) on the official 25,000 + 25,000 reviews.

Inputs are token ids (B, T) with their lengths (B,); the target is 1 for a positive review.
The network is ``Embedding -> LSTM -> read-out -> Linear(-> 1)``; ``readout`` picks the
note's ``final_state`` (last forward and backward hidden states) or ``mean_max`` pooling.

Training batches are length-bucketed (:func:`batching.bucket_batches`), so a batch holds
reviews of nearly the same length. With ``crop_batches`` each training batch is cropped to
its shortest review, so it has no padding at all and every LSTM takes its fast padded path
(on a CPU, ``nn.LSTM`` on a ``PackedSequence`` is ~30x slower in backward). Evaluation always
reads every test review whole (up to ``max_length``), in length-sorted batches with lengths.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import DataError
from .base import Batch, Predict, Task
from .batching import bucket_batches, pad_batch
from .glove import load_glove
from .imdb_archive import load_imdb
from .imdb_corpus import SPLITS, ImdbCorpus
from .text import PAD_ID, TRUNCATIONS, build_vocab, crop, encode_split

log = logging.getLogger("lstmlab")

READOUTS = ("final_state", "mean_max")


class ImdbTask(Task):
    monitor = "test_acc"

    def __init__(
        self,
        data_path: str = "data/aclImdb_v1.tar.gz",
        tokenizer: str = "basic",
        cache_dir: str | None = None,
        vocab_size: int = 10_000,
        min_freq: int = 1,
        max_length: int | None = None,
        truncate: str = "head",
        crop_batches: bool = False,
        glove_path: str | None = None,
        embedding_dim: int = 100,
        readout: str = "final_state",
        embedding_dropout: float = 0.5,
        output_dropout: float = 0.5,
        eval_batch_size: int = 256,
        train_size: int | None = None,
        test_size: int | None = None,
        download: bool = True,
        progress: bool = True,
        seed: int = 0,
    ) -> None:
        if readout not in READOUTS:
            raise ValueError(f"task.readout={readout}: expected one of {', '.join(READOUTS)}")
        if truncate not in TRUNCATIONS:
            raise ValueError(f"task.truncate={truncate}: expected {' or '.join(TRUNCATIONS)}")
        self.readout = readout
        self.truncate = truncate
        self.crop_batches = crop_batches
        self.embedding_dim = embedding_dim
        self.embedding_dropout = embedding_dropout
        self.output_dropout = output_dropout
        self.eval_batch_size = eval_batch_size

        corpus = load_imdb(data_path, tokenizer=tokenizer, cache_dir=cache_dir, download=download, progress=progress)
        _check_every_review_has_tokens(corpus, data_path)
        self.vocab = build_vocab(corpus, max_size=vocab_size, min_freq=min_freq)
        self.train_reviews, self.train_targets = _encoded(corpus, "train", self.vocab, max_length, truncate,
                                                          train_size, _subset_generator(seed, "train"))
        self.test_reviews, self.test_targets = _encoded(corpus, "test", self.vocab, max_length, truncate,
                                                        test_size, _subset_generator(seed, "test"))
        self.train_lengths = torch.tensor([len(r) for r in self.train_reviews])
        self.test_lengths = torch.tensor([len(r) for r in self.test_reviews])
        self._check_not_empty(data_path)
        log.info("IMDB: %d train / %d test reviews, vocabulary %d (train split only), tokenizer %s",
                 len(self.train_reviews), len(self.test_reviews), len(self.vocab), tokenizer)

        self.pretrained_embedding, self.glove_coverage = None, None
        if glove_path:
            self.pretrained_embedding, coverage = load_glove(
                Path(glove_path).expanduser(), self.vocab, dim=embedding_dim,
                generator=torch.Generator().manual_seed(seed))
            self.glove_coverage = coverage.fraction
            log.info("GloVe %s: %s of the vocabulary have a vector; the rest start random", glove_path, coverage)

    def _check_not_empty(self, data_path) -> None:
        for split, reviews in (("train", self.train_reviews), ("test", self.test_reviews)):
            if not reviews:
                raise DataError(f"{data_path}: the {split} split has no reviews; expected IMDB reviews")

    # ------------------------------------------------------------------ the network
    @property
    def input_size(self) -> int:
        return self.embedding_dim

    def network_options(self) -> dict:
        return {
            "output_size": 1,
            "readout": self.readout,
            "vocab_size": len(self.vocab),
            "pretrained_embedding": self.pretrained_embedding,
            "embedding_dropout": self.embedding_dropout,
            "output_dropout": self.output_dropout,
            "padding_idx": PAD_ID,
        }

    # ------------------------------------------------------------------ training
    def num_train_batches(self, batch_size: int) -> int:
        return -(-len(self.train_reviews) // batch_size)

    def train_batches(self, batch_size, shuffle, generator):
        for index in bucket_batches(self.train_lengths, batch_size, generator, shuffle=shuffle):
            reviews = [self.train_reviews[i] for i in index]
            if self.crop_batches:
                reviews = crop(reviews, min(len(r) for r in reviews), self.truncate)
            inputs, lengths = pad_batch(reviews)
            yield Batch(inputs, self.train_targets[index], lengths)

    def loss(self, outputs: Tensor, batch: Batch) -> Tensor:
        return F.binary_cross_entropy_with_logits(outputs.squeeze(1), batch.targets)

    # ------------------------------------------------------------------ evaluation
    def test_batches(self):
        """The whole test split in length-sorted batches of ``eval_batch_size``, with lengths."""
        order = torch.argsort(self.test_lengths, stable=True)
        for index in torch.split(order, self.eval_batch_size):
            inputs, lengths = pad_batch([self.test_reviews[i] for i in index])
            yield index, Batch(inputs, self.test_targets[index], lengths)

    @property
    def metric_modes(self) -> dict[str, str]:
        coverage = {} if self.glove_coverage is None else {"glove_coverage": "max"}
        return {"test_loss": "min", "test_acc": "max", **coverage}

    def evaluate(self, predict: Predict) -> dict[str, float]:
        logits = torch.empty(len(self.test_reviews))
        for index, batch in self.test_batches():
            logits[index] = predict(batch).squeeze(1).float()
        targets = self.test_targets
        metrics = {
            "test_loss": F.binary_cross_entropy_with_logits(logits, targets).item(),
            "test_acc": ((logits > 0).float() == targets).float().mean().item(),
        }
        if self.glove_coverage is not None:
            metrics["glove_coverage"] = self.glove_coverage
        return metrics


def _check_every_review_has_tokens(corpus: ImdbCorpus, data_path) -> None:
    """DataError naming the first review without a token (an empty file, or markup alone such as
    ``<br />``): the LSTM cannot read a sequence of length 0."""
    for split in SPLITS:
        index = corpus.first_empty_review(split)
        if index is not None:
            raise DataError(f"{data_path}: review {corpus.review_name(split, index)} has no tokens; "
                            "every review needs at least one token")


def _subset_generator(seed: int, split: str) -> torch.Generator:
    """Each split's subsets from a generator of its own: the test reviews a run scores depend on
    the seed and ``test_size`` only, so runs that differ in ``train_size`` share a test set."""
    return torch.Generator().manual_seed(seed * len(SPLITS) + SPLITS.index(split))


def _encoded(corpus, split, vocab, max_length, truncate, size, generator) -> tuple[list[Tensor], Tensor]:
    """The split's reviews as id tensors and their float labels; a random ``size`` of them if given."""
    reviews = encode_split(corpus, split, vocab, max_length=max_length, truncate=truncate)
    labels = corpus.split(split).labels.float()
    if size is not None and size < len(reviews):
        keep = torch.randperm(len(reviews), generator=generator)[:size].sort().values
        reviews, labels = [reviews[i] for i in keep.tolist()], labels[keep]
    elif size is not None and size > len(reviews):
        log.warning("task.%s_size=%d: the %s split has only %d reviews; using them all", split, size, split, len(reviews))
    return reviews, labels
