"""The IMDB data layer on the small real subset (1,000 train + 1,000 test reviews) and tiny fakes."""

from __future__ import annotations

import gzip
import hashlib
import io
import shutil
import sys
import tarfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import pytest
import torch

from lstmlab.tasks import imdb_data as D

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SMALL = DATA / "imdb" / "aclImdb_small.tar.gz"
GLOVE = DATA / "glove" / "glove.6B.100d.imdb.txt.gz"
needs_small = pytest.mark.skipif(not SMALL.is_file(), reason=f"small IMDB subset not found at {SMALL}")
needs_glove = pytest.mark.skipif(not GLOVE.is_file(), reason=f"GloVe subset not found at {GLOVE}")


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """No test may reach the internet: any real urlopen fails as if offline."""

    def offline(*args, **kwargs):
        raise urllib.error.URLError("network disabled in tests")

    monkeypatch.setattr(urllib.request, "urlopen", offline)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> D.ImdbCorpus:
    if not SMALL.is_file():
        pytest.skip(f"small IMDB subset not found at {SMALL}")
    return D.load_imdb(SMALL, cache_dir=tmp_path_factory.mktemp("cache"), progress=False)


def same_corpus(a: D.ImdbCorpus, b: D.ImdbCorpus) -> bool:
    return a.types == b.types and all(
        torch.equal(a.split(s).token_ids, b.split(s).token_ids)
        and torch.equal(a.split(s).offsets, b.split(s).offsets)
        and torch.equal(a.split(s).labels, b.split(s).labels)
        and a.split(s).names == b.split(s).names
        for s in D.SPLITS
    )


def make_tarball(path: Path, files: dict[str, str]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


# --------------------------------------------------------------------------- reading


@needs_small
def test_small_subset_has_1000_reviews_per_split_half_positive(corpus):
    for split in D.SPLITS:
        part = corpus.split(split)
        assert len(part) == 1000
        assert part.labels.sum().item() == 500
        assert part.offsets[-1].item() == part.token_ids.numel()
    for name, label in zip(corpus.train.names, corpus.train.labels.tolist()):
        assert ("/pos/" in name) == (label == 1)


@needs_small
def test_reviews_are_ordered_by_label_then_id_and_unsup_is_ignored(corpus):
    names = corpus.test.names
    assert names[0].startswith("test/neg/") and names[-1].startswith("test/pos/")
    neg_ids = [int(n.split("/")[-1].split("_")[0]) for n in names[:500]]
    assert neg_ids == sorted(neg_ids)
    assert not any("unsup" in n for n in corpus.train.names)


@needs_small
def test_html_line_breaks_are_removed(corpus):
    raw = D.read_reviews(SMALL)["train"]
    assert sum("<br />" in text for text in raw.texts) > 100  # the raw reviews do contain them
    assert "br" not in D.train_counts(corpus)
    assert D.basic_tokenize("Great.<br /><br />Awful!") == ["great", ".", "awful", "!"]


def test_basic_tokenizer_keeps_punctuation_and_splits_clitics_like_glove():
    assert D.basic_tokenize("I didn't like it's ending!!! O'Neill can't") == [
        "i", "did", "n't", "like", "it", "'s", "ending", "!", "!", "!", "o'neill", "ca", "n't",
    ]  # fmt: skip
    assert D.basic_tokenize("Less < than 3/10, “really”") == [
        "less", "<", "than", "3", "/", "10", ",", '"', "really", '"',
    ]  # fmt: skip


def test_unknown_tokenizer_and_missing_spacy_fail_with_one_line(monkeypatch):
    with pytest.raises(D.DataError, match="unknown tokenizer 'nltk'; expected one of: basic, spacy"):
        D.get_tokenizer("nltk")
    monkeypatch.setitem(sys.modules, "spacy", None)  # as if the optional extra were not installed
    with pytest.raises(D.DataError) as error:
        D.get_tokenizer("spacy")
    assert str(error.value) == "task.tokenizer=spacy needs the optional extra: pip install 'lstmlab[spacy]'"


def test_spacy_tokenizer_when_installed_lowercases_and_drops_markup():
    pytest.importorskip("spacy")
    tokenize = D.get_tokenizer("spacy")
    assert tokenize.version.startswith("spacy-")
    assert tokenize("Didn't LIKE it.<br /><br />Awful!") == ["did", "n't", "like", "it", ".", "awful", "!"]


@needs_small
def test_extracted_folder_and_its_parent_read_like_the_tarball(corpus, tmp_path):
    root = D.safe_extract(SMALL, tmp_path / "data")
    for path in (root, root / "aclImdb"):
        folder = D.load_imdb(path, cache_dir=tmp_path / "cache", progress=False)
        assert same_corpus(folder, corpus)
    assert D.source_fingerprint(root / "aclImdb").startswith("folder:")


# --------------------------------------------------------------------------- vocabulary and encoding


@needs_small
def test_vocabulary_comes_from_training_split_only(corpus):
    vocab = D.build_vocab(corpus, max_size=None)
    train_tokens = set(D.train_counts(corpus))
    test_only = sorted({t for i in range(len(corpus.test)) for t in corpus.tokens("test", i)} - train_tokens)
    assert test_only, "the test split should have words the training split lacks"
    word = test_only[0]
    assert word not in vocab and vocab[word] == D.UNK_ID
    assert set(vocab.itos[2:]) == train_tokens
    review = next(i for i in range(len(corpus.test)) if word in corpus.tokens("test", i))
    position = corpus.tokens("test", review).index(word)
    assert D.encode_split(corpus, "test", vocab)[review][position].item() == D.UNK_ID


@needs_small
def test_vocabulary_has_pad_0_unk_1_and_respects_max_size(corpus):
    vocab = D.build_vocab(corpus, max_size=1000)
    assert len(vocab) == 1002
    assert vocab.itos[:3] == ["<pad>", "<unk>", "the"]
    assert vocab["<pad>"] == 0 and vocab["<unk>"] == 1
    counts = D.train_counts(corpus)
    kept = [counts[t] for t in vocab.itos[2:]]
    assert kept == sorted(kept, reverse=True)
    assert min(kept) >= max(c for t, c in counts.items() if t not in vocab)


def test_vocabulary_ties_break_by_token_and_min_freq_drops_rare_tokens():
    counts = {"b": 2, "a": 2, "c": 3, "rare": 1}
    assert D.Vocab.from_counts(counts).itos == ["<pad>", "<unk>", "c", "a", "b", "rare"]
    assert D.Vocab.from_counts(counts, min_freq=2).itos == ["<pad>", "<unk>", "c", "a", "b"]
    assert D.Vocab.from_counts(counts, max_size=2).itos == ["<pad>", "<unk>", "c", "a"]
    assert D.Vocab(["c", "a"]).encode(["a", "zzz", "c"]) == [3, 1, 2]


@needs_small
def test_encoding_truncates_to_first_or_last_tokens(corpus):
    vocab = D.build_vocab(corpus, max_size=5000)
    full = D.encode_split(corpus, "train", vocab)
    head = D.encode_split(corpus, "train", vocab, max_length=50)
    tail = D.encode_split(corpus, "train", vocab, max_length=50, truncate="tail")
    assert len(full) == 1000 and max(len(r) for r in head) == 50
    long = next(i for i, r in enumerate(full) if len(r) > 50)
    short = next(i for i, r in enumerate(full) if len(r) < 50)
    assert torch.equal(head[long], full[long][:50]) and torch.equal(tail[long], full[long][-50:])
    assert torch.equal(head[short], full[short]) and torch.equal(tail[short], full[short])
    assert full[long].tolist() == vocab.encode(corpus.tokens("train", long))
    with pytest.raises(ValueError, match="truncate='middle'"):
        D.encode_split(corpus, "train", vocab, max_length=5, truncate="middle")


# --------------------------------------------------------------------------- cache


@needs_small
def test_second_load_reads_the_cache_without_parsing(tmp_path, monkeypatch):
    first = D.load_imdb(SMALL, cache_dir=tmp_path, progress=False)
    assert len(list(tmp_path.glob("imdb-*.pt"))) == 1 and not list(tmp_path.glob(".*"))

    def must_not_parse(*args, **kwargs):
        raise AssertionError("the archive was parsed again")

    monkeypatch.setattr(D, "read_reviews", must_not_parse)
    assert same_corpus(D.load_imdb(SMALL, cache_dir=tmp_path, progress=False), first)


@needs_small
def test_cache_key_changes_with_data_and_tokenizer(tmp_path):
    basic = D.get_tokenizer("basic")
    key = D.cache_key(SMALL, basic)
    assert D.cache_key(SMALL, basic) == key
    assert D.cache_key(SMALL, basic._replace(version="basic-2")) != key
    assert D.cache_key(SMALL, basic._replace(name="spacy", version="spacy-1-3.8.0")) != key
    other = make_tarball(tmp_path / "other.tar.gz", {"aclImdb/train/pos/0_9.txt": "good"})
    assert D.cache_key(other, basic) != key


@needs_small
def test_corrupt_cache_is_ignored_and_rebuilt(corpus, tmp_path):
    D.load_imdb(SMALL, cache_dir=tmp_path, progress=False)
    (cache_file,) = tmp_path.glob("imdb-*.pt")
    cache_file.write_bytes(b"not a torch file")
    with pytest.warns(UserWarning, match="ignoring unreadable IMDB cache"):
        rebuilt = D.load_imdb(SMALL, cache_dir=tmp_path, progress=False)
    assert same_corpus(rebuilt, corpus)
    key = D.cache_key(SMALL, D.get_tokenizer())
    assert same_corpus(D.read_cache(cache_file, key), corpus)  # rewritten, readable again


@needs_small
def test_unwritable_cache_only_warns(corpus, tmp_path):
    not_a_folder = tmp_path / "cache"
    not_a_folder.write_text("a file where the cache folder should be")
    with pytest.warns(UserWarning, match="could not write the IMDB cache"):
        loaded = D.load_imdb(SMALL, cache_dir=not_a_folder, progress=False)
    assert same_corpus(loaded, corpus)


# --------------------------------------------------------------------------- errors


@needs_small
def test_truncated_archive_raises_one_line_and_caches_nothing(tmp_path):
    truncated = tmp_path / "aclImdb_v1.tar.gz"
    truncated.write_bytes(SMALL.read_bytes()[:100_000])
    with pytest.raises(D.DataError, match="corrupt or truncated IMDB archive") as error:
        D.load_imdb(truncated, cache_dir=tmp_path / "cache", progress=False)
    assert str(truncated) in str(error.value) and "\n" not in str(error.value)
    assert not (tmp_path / "cache").exists()


def test_not_a_tarball_raises_data_error(tmp_path):
    bogus = tmp_path / "imdb.tar.gz"
    bogus.write_text("hello")
    with pytest.raises(D.DataError, match="corrupt or truncated"):
        D.load_imdb(bogus, cache_dir=tmp_path / "cache", progress=False)
    assert not (tmp_path / "cache").exists()


def test_wrong_path_raises_one_line_saying_where_to_put_the_archive(tmp_path):
    missing = tmp_path / "nope" / "imdb.tar.gz"
    with pytest.raises(D.DataError) as error:
        D.load_imdb(missing, cache_dir=tmp_path / "cache", progress=False)
    message = str(error.value)
    assert message.startswith(f"IMDB archive not found at {missing};") and D.OFFICIAL_URL in message
    assert "\n" not in message and not (tmp_path / "cache").exists()


def test_folder_without_imdb_layout_raises(tmp_path):
    with pytest.raises(D.DataError, match="expected the IMDB folder aclImdb/"):
        D.load_imdb(tmp_path, cache_dir=tmp_path / "cache", progress=False)


def test_empty_split_raises_and_caches_nothing(tmp_path):
    files = {f"aclImdb/{split}/{label}/0_{'9' if label == 'pos' else '2'}.txt": "A film."
             for split in ("train", "test") for label in ("pos", "neg")}  # fmt: skip
    del files["aclImdb/test/pos/0_9.txt"]
    files["aclImdb/train/unsup/0_0.txt"] = "ignored"
    archive = make_tarball(tmp_path / "imdb.tar.gz", files)
    with pytest.raises(D.DataError, match=r"no reviews in test/pos; expected aclImdb/test/pos/\*\.txt"):
        D.load_imdb(archive, cache_dir=tmp_path / "cache", progress=False)
    assert not (tmp_path / "cache").exists()


def test_safe_extract_rejects_members_outside_the_target(tmp_path):
    for name in ("../evil.txt", "/tmp/evil.txt", "aclImdb/../../evil.txt"):
        archive = make_tarball(tmp_path / "bad.tar.gz", {"aclImdb/README": "ok", name: "evil"})
        with pytest.raises(D.DataError, match="unsafe member"):
            D.safe_extract(archive, tmp_path / "out")
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- download


class FakeResponse(io.BytesIO):
    def __init__(self, payload: bytes):
        super().__init__(payload)
        self.headers = {"Content-Length": str(len(payload))}


def test_missing_official_archive_without_network_fails_with_one_clear_line(tmp_path):
    dest = tmp_path / "data" / D.OFFICIAL_FILENAME
    with pytest.raises(D.DataError) as error:
        D.load_imdb(dest, cache_dir=tmp_path / "cache", progress=False)  # urlopen is the offline fake
    message = str(error.value)
    assert message.startswith(f"IMDB archive not found at {dest} (download failed: network disabled in tests);")
    assert "put it there" in message and "\n" not in message
    assert list(tmp_path.iterdir()) == []  # no partial download, no folders, no cache


def test_download_checks_size_and_sha256_and_keeps_nothing_on_mismatch(tmp_path):
    payload = b"not the IMDB archive"
    dest = tmp_path / D.OFFICIAL_FILENAME
    calls = []

    def fake_urlopen(url, timeout):
        calls.append(url)
        return FakeResponse(payload)

    with pytest.raises(D.DataError, match="gave 20 bytes, expected 84,125,825; nothing saved"):
        D.download_archive(dest, urlopen=fake_urlopen, progress=False)
    with pytest.raises(D.DataError, match=f"sha256 .*, expected {D.OFFICIAL_SHA256}"):
        D.download_archive(dest, expected_size=len(payload), urlopen=fake_urlopen, progress=False)
    assert calls == [D.OFFICIAL_URL] * 2 and list(tmp_path.iterdir()) == []

    checksum = hashlib.sha256(payload).hexdigest()
    good = D.download_archive(
        dest, expected_size=len(payload), expected_sha256=checksum, urlopen=fake_urlopen, progress=False
    )
    assert good == dest and dest.read_bytes() == payload and list(tmp_path.iterdir()) == [dest]


# --------------------------------------------------------------------------- GloVe


@pytest.fixture(scope="module")
def glove_files(tmp_path_factory) -> dict[str, Path]:
    if not GLOVE.is_file():
        pytest.skip(f"GloVe subset not found at {GLOVE}")
    folder = tmp_path_factory.mktemp("glove")
    plain = folder / "glove.6B.100d.txt"
    with gzip.open(GLOVE, "rb") as src, open(plain, "wb") as dst:
        shutil.copyfileobj(src, dst)
    with zipfile.ZipFile(folder / "glove.6B.zip", "w", zipfile.ZIP_DEFLATED) as archive:
        archive.write(plain, "glove.6B.100d.txt")
    return {"plain": plain, "gz": GLOVE, "zip": folder / "glove.6B.zip"}


@pytest.mark.parametrize("kind", ["plain", "gz", "zip"])
def test_glove_vectors_load_from_plain_gz_and_zip(glove_files, kind):
    vocab = D.Vocab(["the", "movie", "zzznotaword"])
    weights, coverage = D.load_glove(glove_files[kind], vocab, dim=100)
    assert weights.shape == (5, 100) and weights.dtype == torch.float32
    assert weights[vocab["the"]][:3].tolist() == pytest.approx([-0.038194, -0.24487, 0.72812])
    assert coverage == (2, 3) and str(coverage) == "2/3 (66.7%)"
    assert torch.all(weights[D.PAD_ID] == 0)
    assert weights[vocab["zzznotaword"]].abs().sum() > 0  # random, not zero


@needs_glove
@needs_small
def test_glove_covers_part_of_the_imdb_vocabulary_and_random_rows_are_seeded(corpus):
    vocab = D.build_vocab(corpus, max_size=2000)
    weights, coverage = D.load_glove(GLOVE, vocab, generator=torch.Generator().manual_seed(1))
    assert coverage.total == 2000 and 1000 < coverage.found < 2000
    again, _ = D.load_glove(GLOVE, vocab, generator=torch.Generator().manual_seed(1))
    other, _ = D.load_glove(GLOVE, vocab, generator=torch.Generator().manual_seed(2))
    assert torch.equal(weights, again) and not torch.equal(weights, other)
    assert 0.2 < weights[D.UNK_ID].std().item() < 0.8  # on GloVe's scale


def test_glove_errors_name_the_file_and_line(tmp_path):
    bad = tmp_path / "glove.6B.3d.txt"
    bad.write_text("the 0.1 0.2 0.3\nmovie 0.1 0.2\n")
    with pytest.raises(D.DataError, match=rf"{bad}: line 2 has 2 numbers after the word, expected 3"):
        D.load_glove(bad, ["the"], dim=3)
    bad.write_text("the 0.1 x 0.3\n")
    with pytest.raises(D.DataError, match="line 1 has a value that is not a number"):
        D.load_glove(bad, ["the"], dim=3)
    with pytest.raises(D.DataError, match="GloVe file not found at .*glove.6B.zip"):
        D.load_glove(tmp_path / "missing.txt", ["the"])
    with zipfile.ZipFile(tmp_path / "glove.6B.zip", "w") as archive:
        archive.writestr("glove.6B.50d.txt", "the 0.1\n")
    with pytest.raises(D.DataError, match="no member glove.6B.100d.txt"):
        D.load_glove(tmp_path / "glove.6B.zip", ["the"])


# --------------------------------------------------------------------------- batching


def test_bucket_batches_cover_every_index_once_with_similar_lengths():
    lengths = torch.randint(5, 500, (1000,), generator=torch.Generator().manual_seed(0)).tolist()
    batches = D.bucket_batches(lengths, 32, torch.Generator().manual_seed(0))
    assert sorted(i for b in batches for i in b) == list(range(1000))
    assert [len(b) for b in batches].count(32) == 31 and len(batches) == 32
    spread = max(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches)
    assert spread < 40  # random batches of 32 would each span most of 5..500
    assert batches == D.bucket_batches(lengths, 32, torch.Generator().manual_seed(0))
    assert batches != D.bucket_batches(lengths, 32, torch.Generator().manual_seed(1))


def test_bucket_batches_without_shuffle_go_from_short_to_long():
    batches = D.bucket_batches([3, 1, 2, 5, 4], 2, shuffle=False)
    assert batches == [[1, 2], [0, 4], [3]]


def test_pad_batch_pads_right_with_pad_id_and_returns_lengths():
    padded, lengths = D.pad_batch([[5, 6, 7], torch.tensor([8])])
    assert padded.tolist() == [[5, 6, 7], [8, 0, 0]] and padded.dtype == torch.int64
    assert lengths.tolist() == [3, 1]
