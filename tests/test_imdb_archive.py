"""Reading, caching and downloading IMDB (lstmlab.tasks.imdb_archive) on the small real subset and tiny fakes."""

from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path

import pytest
import torch

from conftest import SMALL, needs_small
from lstmlab.errors import DataError
from lstmlab.tasks import imdb_archive
from lstmlab.tasks.imdb_archive import (
    OFFICIAL_FILENAME,
    OFFICIAL_SHA256,
    OFFICIAL_URL,
    cache_key,
    download_archive,
    load_imdb,
    read_cache,
    source_fingerprint,
)
from lstmlab.tasks.imdb_corpus import SPLITS, ImdbCorpus
from lstmlab.tasks.text import get_tokenizer

pytestmark = pytest.mark.usefixtures("no_network")


def same_corpus(a: ImdbCorpus, b: ImdbCorpus) -> bool:
    return a.types == b.types and all(
        torch.equal(a.split(s).token_ids, b.split(s).token_ids)
        and torch.equal(a.split(s).offsets, b.split(s).offsets)
        and torch.equal(a.split(s).labels, b.split(s).labels)
        and a.split(s).names == b.split(s).names
        for s in SPLITS
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
    for split in SPLITS:
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
def test_extracted_folder_and_its_parent_read_like_the_tarball(corpus, tmp_path):
    with tarfile.open(SMALL) as tar:
        tar.extractall(tmp_path / "data", filter="data")
    root = tmp_path / "data"
    for path in (root, root / "aclImdb"):
        folder = load_imdb(path, cache_dir=tmp_path / "cache", progress=False)
        assert same_corpus(folder, corpus)
    assert source_fingerprint(root / "aclImdb").startswith("folder:")


# --------------------------------------------------------------------------- cache


@needs_small
def test_second_load_reads_the_cache_without_parsing(tmp_path, monkeypatch):
    first = load_imdb(SMALL, cache_dir=tmp_path, progress=False)
    assert len(list(tmp_path.glob("imdb-*.pt"))) == 1 and not list(tmp_path.glob(".*"))

    def must_not_parse(*args, **kwargs):
        raise AssertionError("the archive was parsed again")

    monkeypatch.setattr(imdb_archive, "read_reviews", must_not_parse)
    assert same_corpus(load_imdb(SMALL, cache_dir=tmp_path, progress=False), first)


@needs_small
def test_cache_key_changes_with_data_and_tokenizer(tmp_path):
    basic = get_tokenizer("basic")
    key = cache_key(SMALL, basic)
    assert cache_key(SMALL, basic) == key
    assert cache_key(SMALL, basic._replace(version="basic-2")) != key
    assert cache_key(SMALL, basic._replace(name="spacy", version="spacy-1-3.8.0")) != key
    other = make_tarball(tmp_path / "other.tar.gz", {"aclImdb/train/pos/0_9.txt": "good"})
    assert cache_key(other, basic) != key


@needs_small
def test_corrupt_cache_is_ignored_and_rebuilt(corpus, tmp_path):
    load_imdb(SMALL, cache_dir=tmp_path, progress=False)
    (cache_file,) = tmp_path.glob("imdb-*.pt")
    cache_file.write_bytes(b"not a torch file")
    with pytest.warns(UserWarning, match="ignoring unreadable IMDB cache"):
        rebuilt = load_imdb(SMALL, cache_dir=tmp_path, progress=False)
    assert same_corpus(rebuilt, corpus)
    key = cache_key(SMALL, get_tokenizer())
    assert same_corpus(read_cache(cache_file, key), corpus)  # rewritten, readable again


@needs_small
def test_unwritable_cache_only_warns(corpus, tmp_path):
    not_a_folder = tmp_path / "cache"
    not_a_folder.write_text("a file where the cache folder should be")
    with pytest.warns(UserWarning, match="could not write the IMDB cache"):
        loaded = load_imdb(SMALL, cache_dir=not_a_folder, progress=False)
    assert same_corpus(loaded, corpus)


# --------------------------------------------------------------------------- errors


@needs_small
def test_truncated_archive_raises_one_line_and_caches_nothing(tmp_path):
    truncated = tmp_path / "aclImdb_v1.tar.gz"
    truncated.write_bytes(SMALL.read_bytes()[:100_000])
    with pytest.raises(DataError, match="corrupt or truncated IMDB archive") as error:
        load_imdb(truncated, cache_dir=tmp_path / "cache", progress=False)
    assert str(truncated) in str(error.value) and "\n" not in str(error.value)
    assert not (tmp_path / "cache").exists()


def test_not_a_tarball_raises_data_error(tmp_path):
    bogus = tmp_path / "imdb.tar.gz"
    bogus.write_text("hello")
    with pytest.raises(DataError, match="corrupt or truncated"):
        load_imdb(bogus, cache_dir=tmp_path / "cache", progress=False)
    assert not (tmp_path / "cache").exists()


def test_wrong_path_raises_one_line_saying_where_to_put_the_archive(tmp_path):
    missing = tmp_path / "nope" / "imdb.tar.gz"
    with pytest.raises(DataError) as error:
        load_imdb(missing, cache_dir=tmp_path / "cache", progress=False)
    message = str(error.value)
    assert message.startswith(f"IMDB archive not found at {missing};") and OFFICIAL_URL in message
    assert "\n" not in message and not (tmp_path / "cache").exists()


def test_folder_without_imdb_layout_raises(tmp_path):
    with pytest.raises(DataError, match="expected the IMDB folder aclImdb/"):
        load_imdb(tmp_path, cache_dir=tmp_path / "cache", progress=False)


def test_empty_split_raises_and_caches_nothing(tmp_path):
    files = {f"aclImdb/{split}/{label}/0_{'9' if label == 'pos' else '2'}.txt": "A film."
             for split in ("train", "test") for label in ("pos", "neg")}  # fmt: skip
    del files["aclImdb/test/pos/0_9.txt"]
    files["aclImdb/train/unsup/0_0.txt"] = "ignored"
    archive = make_tarball(tmp_path / "imdb.tar.gz", files)
    with pytest.raises(DataError, match=r"no reviews in test/pos; expected aclImdb/test/pos/\*\.txt"):
        load_imdb(archive, cache_dir=tmp_path / "cache", progress=False)
    assert not (tmp_path / "cache").exists()


# --------------------------------------------------------------------------- download


class FakeResponse(io.BytesIO):
    def __init__(self, payload: bytes):
        super().__init__(payload)
        self.headers = {"Content-Length": str(len(payload))}


def test_missing_official_archive_without_network_fails_with_one_clear_line(tmp_path):
    dest = tmp_path / "data" / OFFICIAL_FILENAME
    with pytest.raises(DataError) as error:
        load_imdb(dest, cache_dir=tmp_path / "cache", progress=False)  # urlopen is the offline fake
    message = str(error.value)
    assert message.startswith(f"IMDB archive not found at {dest} (download failed: network disabled in tests);")
    assert "put it there" in message and "\n" not in message
    assert list(tmp_path.iterdir()) == []  # no partial download, no folders, no cache


def test_download_checks_size_and_sha256_and_keeps_nothing_on_mismatch(tmp_path):
    payload = b"not the IMDB archive"
    dest = tmp_path / OFFICIAL_FILENAME
    calls = []

    def fake_urlopen(url, timeout):
        calls.append(url)
        return FakeResponse(payload)

    with pytest.raises(DataError, match="gave 20 bytes, expected 84,125,825; nothing saved"):
        download_archive(dest, urlopen=fake_urlopen, progress=False)
    with pytest.raises(DataError, match=f"sha256 .*, expected {OFFICIAL_SHA256}"):
        download_archive(dest, expected_size=len(payload), urlopen=fake_urlopen, progress=False)
    assert calls == [OFFICIAL_URL] * 2 and list(tmp_path.iterdir()) == []

    checksum = hashlib.sha256(payload).hexdigest()
    good = download_archive(
        dest, expected_size=len(payload), expected_sha256=checksum, urlopen=fake_urlopen, progress=False
    )
    assert good == dest and dest.read_bytes() == payload and list(tmp_path.iterdir()) == [dest]
