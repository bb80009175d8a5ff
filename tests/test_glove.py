"""GloVe vectors (lstmlab.tasks.glove) from the offline GloVe subset, plain, gzipped and zipped."""

from __future__ import annotations

import gzip
import shutil
import zipfile
from pathlib import Path

import pytest
import torch

from conftest import GLOVE, needs_glove, needs_small
from lstmlab.errors import DataError
from lstmlab.tasks.glove import load_glove
from lstmlab.tasks.text import PAD_ID, UNK_ID, Vocab, build_vocab

pytestmark = pytest.mark.usefixtures("no_network")


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
    vocab = Vocab(["the", "movie", "zzznotaword"])
    weights, coverage = load_glove(glove_files[kind], vocab, dim=100)
    assert weights.shape == (5, 100) and weights.dtype == torch.float32
    assert weights[vocab["the"]][:3].tolist() == pytest.approx([-0.038194, -0.24487, 0.72812])
    assert coverage == (2, 3) and str(coverage) == "2/3 (66.7%)"
    assert torch.all(weights[PAD_ID] == 0)
    assert weights[vocab["zzznotaword"]].abs().sum() > 0  # random, not zero


@needs_glove
@needs_small
def test_glove_covers_part_of_the_imdb_vocabulary_and_random_rows_are_seeded(corpus):
    vocab = build_vocab(corpus, max_size=2000)
    weights, coverage = load_glove(GLOVE, vocab, generator=torch.Generator().manual_seed(1))
    assert coverage.total == 2000 and 1000 < coverage.found < 2000
    again, _ = load_glove(GLOVE, vocab, generator=torch.Generator().manual_seed(1))
    other, _ = load_glove(GLOVE, vocab, generator=torch.Generator().manual_seed(2))
    assert torch.equal(weights, again) and not torch.equal(weights, other)
    assert 0.2 < weights[UNK_ID].std().item() < 0.8  # on GloVe's scale


def test_glove_errors_name_the_file_and_line(tmp_path):
    bad = tmp_path / "glove.6B.3d.txt"
    bad.write_text("the 0.1 0.2 0.3\nmovie 0.1 0.2\n")
    with pytest.raises(DataError, match=rf"{bad}: line 2 has 2 values after its first word, expected a GloVe line: a word and 3 numbers"):
        load_glove(bad, ["the"], dim=3)
    bad.write_text("the 0.1 x 0.3\n")
    with pytest.raises(DataError, match="line 1 has a value that is not a number"):
        load_glove(bad, ["the"], dim=3)
    with pytest.raises(DataError, match="GloVe file not found at .*glove.6B.zip"):
        load_glove(tmp_path / "missing.txt", ["the"])
    with zipfile.ZipFile(tmp_path / "glove.6B.zip", "w") as archive:
        archive.writestr("glove.6B.50d.txt", "the 0.1\n")
    with pytest.raises(DataError, match="no member glove.6B.100d.txt"):
        load_glove(tmp_path / "glove.6B.zip", ["the"])
