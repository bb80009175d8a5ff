"""Cleaning, tokenizers and the vocabulary (lstmlab.tasks.text) on the small real IMDB subset and tiny inputs."""

from __future__ import annotations

import sys

import pytest
import torch

from conftest import SMALL, needs_small
from lstmlab.errors import DataError
from lstmlab.tasks.imdb_archive import read_reviews
from lstmlab.tasks.text import UNK_ID, Vocab, basic_tokenize, build_vocab, encode_split, get_tokenizer, train_counts

pytestmark = pytest.mark.usefixtures("no_network")


# --------------------------------------------------------------------------- cleaning and tokenizers


@needs_small
def test_html_line_breaks_are_removed(corpus):
    raw = read_reviews(SMALL)["train"]
    assert sum("<br />" in text for text in raw.texts) > 100  # the raw reviews do contain them
    assert "br" not in train_counts(corpus)
    assert basic_tokenize("Great.<br /><br />Awful!") == ["great", ".", "awful", "!"]


def test_basic_tokenizer_keeps_punctuation_and_splits_clitics_like_glove():
    assert basic_tokenize("I didn't like it's ending!!! O'Neill can't") == [
        "i", "did", "n't", "like", "it", "'s", "ending", "!", "!", "!", "o'neill", "ca", "n't",
    ]  # fmt: skip
    assert basic_tokenize("Less < than 3/10, “really”") == [
        "less", "<", "than", "3", "/", "10", ",", '"', "really", '"',
    ]  # fmt: skip


def test_unknown_tokenizer_and_missing_spacy_fail_with_one_line(monkeypatch):
    with pytest.raises(DataError, match="unknown tokenizer 'nltk'; expected one of: basic, spacy"):
        get_tokenizer("nltk")
    monkeypatch.setitem(sys.modules, "spacy", None)  # as if the optional extra were not installed
    with pytest.raises(DataError) as error:
        get_tokenizer("spacy")
    assert str(error.value) == "task.tokenizer=spacy needs the optional extra: pip install 'lstmlab[spacy]'"


def test_spacy_tokenizer_when_installed_lowercases_and_drops_markup():
    pytest.importorskip("spacy")
    tokenize = get_tokenizer("spacy")
    assert tokenize.version.startswith("spacy-")
    assert tokenize("Didn't LIKE it.<br /><br />Awful!") == ["did", "n't", "like", "it", ".", "awful", "!"]


# --------------------------------------------------------------------------- vocabulary and encoding


@needs_small
def test_vocabulary_comes_from_training_split_only(corpus):
    vocab = build_vocab(corpus, max_size=None)
    train_tokens = set(train_counts(corpus))
    test_only = sorted({t for i in range(len(corpus.test)) for t in corpus.tokens("test", i)} - train_tokens)
    assert test_only, "the test split should have words the training split lacks"
    word = test_only[0]
    assert word not in vocab and vocab[word] == UNK_ID
    assert set(vocab.itos[2:]) == train_tokens
    review = next(i for i in range(len(corpus.test)) if word in corpus.tokens("test", i))
    position = corpus.tokens("test", review).index(word)
    assert encode_split(corpus, "test", vocab)[review][position].item() == UNK_ID


@needs_small
def test_vocabulary_has_pad_0_unk_1_and_respects_max_size(corpus):
    vocab = build_vocab(corpus, max_size=1000)
    assert len(vocab) == 1002
    assert vocab.itos[:3] == ["<pad>", "<unk>", "the"]
    assert vocab["<pad>"] == 0 and vocab["<unk>"] == 1
    counts = train_counts(corpus)
    kept = [counts[t] for t in vocab.itos[2:]]
    assert kept == sorted(kept, reverse=True)
    assert min(kept) >= max(c for t, c in counts.items() if t not in vocab)


def test_vocabulary_ties_break_by_token_and_min_freq_drops_rare_tokens():
    counts = {"b": 2, "a": 2, "c": 3, "rare": 1}
    assert Vocab.from_counts(counts).itos == ["<pad>", "<unk>", "c", "a", "b", "rare"]
    assert Vocab.from_counts(counts, min_freq=2).itos == ["<pad>", "<unk>", "c", "a", "b"]
    assert Vocab.from_counts(counts, max_size=2).itos == ["<pad>", "<unk>", "c", "a"]
    assert Vocab(["c", "a"]).encode(["a", "zzz", "c"]) == [3, 1, 2]


@needs_small
def test_encoding_truncates_to_first_or_last_tokens(corpus):
    vocab = build_vocab(corpus, max_size=5000)
    full = encode_split(corpus, "train", vocab)
    head = encode_split(corpus, "train", vocab, max_length=50)
    tail = encode_split(corpus, "train", vocab, max_length=50, truncate="tail")
    assert len(full) == 1000 and max(len(r) for r in head) == 50
    long = next(i for i, r in enumerate(full) if len(r) > 50)
    short = next(i for i, r in enumerate(full) if len(r) < 50)
    assert torch.equal(head[long], full[long][:50]) and torch.equal(tail[long], full[long][-50:])
    assert torch.equal(head[short], full[short]) and torch.equal(tail[short], full[short])
    assert full[long].tolist() == vocab.encode(corpus.tokens("train", long))
    with pytest.raises(ValueError, match="truncate='middle'"):
        encode_split(corpus, "train", vocab, max_length=5, truncate="middle")
