"""The IMDB task on the small real subset (1,000 train + 1,000 test reviews), tiny models, tmp caches;
bad reviews on a handful of files in tmp_path."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from conftest import GLOVE, SMALL, evaluate_saved_model, needs_glove, run_lab
from lstmlab.errors import DataError
from lstmlab.models import HandLSTM, SequenceModel
from lstmlab.tasks.imdb import ImdbTask
from lstmlab.tasks.text import crop
from lstmlab.tasks.imdb_archive import load_imdb
from lstmlab.tasks.text import PAD_ID, train_counts


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    """A cache folder for the tests on the small real subset (skipped where it is missing)."""
    if not SMALL.is_file():
        pytest.skip(f"small IMDB subset not found at {SMALL}")
    return tmp_path_factory.mktemp("imdb-cache")


def small_task(cache: Path, **options) -> ImdbTask:
    return ImdbTask(str(SMALL), cache_dir=str(cache), progress=False, **{"vocab_size": 500, "max_length": 60} | options)


def test_batches_hold_every_review_once_with_labels_and_true_lengths(cache):
    task = small_task(cache)
    batches = list(task.train_batches(32, True, torch.Generator().manual_seed(0)))
    assert len(batches) == task.num_train_batches(32) == 32
    assert sum(len(b.targets) for b in batches) == 1000
    assert sum(b.targets.sum().item() for b in batches) == 500
    for batch in batches:
        assert batch.inputs.dtype == torch.int64 and batch.inputs.shape == (len(batch.targets), batch.lengths.max())
        assert torch.equal((batch.inputs != PAD_ID).sum(1), batch.lengths)  # <pad> only after each review
        assert set(batch.targets.tolist()) <= {0.0, 1.0}
    assert task.input_size == 100
    options = task.network_options()
    assert options["vocab_size"] == len(task.vocab) == 502 and options["output_size"] == 1


def test_vocabulary_comes_from_the_training_split_only(cache):
    task = small_task(cache, vocab_size=None)
    corpus = load_imdb(SMALL, cache_dir=cache, progress=False)
    train_words = set(train_counts(corpus))
    test_only = {corpus.types[i] for i in corpus.test.token_ids.tolist()} - train_words
    assert test_only and not test_only & set(task.vocab.itos)
    assert len(task.vocab) == len(train_words) + 2


def test_cropped_batches_have_no_padding_and_keep_the_reviews_end(cache):
    task = small_task(cache, crop_batches=True, truncate="tail")
    for batch in task.train_batches(16, True, torch.Generator().manual_seed(1)):
        assert torch.all(batch.lengths == batch.inputs.shape[1]) and torch.all(batch.inputs != PAD_ID)
    review = torch.arange(10)
    assert crop([review], 4, "tail")[0].tolist() == [6, 7, 8, 9]
    assert crop([review], 4, "head")[0].tolist() == [0, 1, 2, 3]


@pytest.mark.parametrize("truncate", ["head", "tail"])
def test_crop_keeps_a_review_shorter_than_the_length_whole(truncate):
    assert crop([torch.arange(3)], 5, truncate)[0].tolist() == [0, 1, 2]


def test_evaluation_reads_the_whole_test_split(cache):
    task = small_task(cache)
    seen = []

    def predict(batch):
        seen.append(len(batch.targets))
        return (batch.targets * 2 - 1).unsqueeze(1)  # a perfect classifier

    metrics = task.evaluate(predict)
    assert sum(seen) == 1000 and metrics["test_acc"] == 1.0 and "glove_coverage" not in metrics


@pytest.mark.parametrize("readout", ["final_state", "mean_max"])
def test_hand_lstm_equals_torch_lstm_through_the_network_on_real_batches(cache, readout):
    """Embedding + 2-layer BiLSTM + read-out on a real variable-length batch: same logits and final states."""
    task = small_task(cache, readout=readout)
    _, batch = next(iter(task.test_batches()))
    assert batch.lengths.min() < batch.lengths.max()  # padding present: it must not leak
    torch.manual_seed(0)
    reference = nn.LSTM(100, 6, num_layers=2, bidirectional=True, batch_first=True).double()
    hand = HandLSTM(100, 6, num_layers=2, bidirectional=True, batch_first=True).double()
    hand.load_state_dict(reference.state_dict())
    options = task.network_options() | {"embedding_dropout": 0.0, "output_dropout": 0.0}
    net_ref, net_hand = SequenceModel(reference, **options).double(), SequenceModel(hand, **options).double()
    net_hand.load_state_dict(net_ref.state_dict())
    torch.testing.assert_close(net_hand(batch.inputs, batch.lengths), net_ref(batch.inputs, batch.lengths),
                               rtol=0, atol=1e-10)
    embedded = pack_padded_sequence(net_ref.embedding(batch.inputs), batch.lengths, batch_first=True,
                                    enforce_sorted=False)
    for expected, got in zip(reference(embedded)[1], hand(embedded)[1]):
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-10)


@needs_glove
def test_glove_initialises_the_embedding_and_reports_coverage(cache):
    task = small_task(cache, glove_path=str(GLOVE))
    weights = task.network_options()["pretrained_embedding"]
    assert weights.shape == (len(task.vocab), 100)
    assert 0.5 < task.glove_coverage < 1.0  # the 2,717-word subset covers most of a 500-word vocabulary
    the = task.vocab["the"]
    assert weights[the, 0].item() == pytest.approx(-0.038194)  # GloVe's first line: "the -0.038194 ..."
    net = SequenceModel(HandLSTM(100, 4, batch_first=True), **task.network_options())
    assert torch.equal(net.embedding.weight[the], weights[the])
    assert task.evaluate(lambda b: torch.zeros(len(b.targets), 1))["glove_coverage"] == task.glove_coverage


def test_cli_trains_the_cpu_setup_end_to_end(lab, cache):
    proc = lab("experiment=imdb_cpu", f"task.data_path={SMALL}", f"task.cache_dir={cache}", "task.max_length=40",
               "task.vocab_size=300", "model.hidden_size=8", "trainer.max_epochs=1", "trainer.num_threads=1",
               "trainer.progress=false", "task.progress=false")
    assert proc.returncode == 0, proc.stderr
    result = pd.read_csv(lab.run_dir / "result.csv")
    assert result["task.readout"][0] == "mean_max"
    # the reported accuracy is the saved model's on the whole test split (one review either way:
    # the run used 1 thread, this process may not)
    assert result["test_acc"][0] == pytest.approx(evaluate_saved_model(lab.run_dir)["test_acc"], abs=1.5e-3)
    assert "test_acc" in proc.stdout


def test_corrupt_archive_is_one_line_exit_2_and_nothing_written(lab, tmp_path, cache):
    broken = tmp_path / "aclImdb_v1.tar.gz"
    broken.write_bytes(SMALL.read_bytes()[:200_000])  # truncated download
    cache_dir = tmp_path / "fresh-cache"
    proc = lab("experiment=imdb_cpu", f"task.data_path={broken}", f"task.cache_dir={cache_dir}", "task.progress=false")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "corrupt or truncated" in lines[0] and str(broken) in lines[0]
    assert not (lab.run_dir / "result.csv").exists()
    assert not cache_dir.exists() or not any(cache_dir.iterdir())  # nothing cached


def test_wrong_path_is_one_line(lab, tmp_path):
    proc = lab("experiment=imdb_cpu", f"task.data_path={tmp_path / 'nowhere.tar.gz'}", "task.progress=false")
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "IMDB archive not found" in proc.stderr


# --------------------------------------------------------------------------- reviews without a token


ONE_REVIEW_EACH = {"train/pos/0_9.txt": "Great!", "train/neg/0_1.txt": "Awful.", "test/pos/0_8.txt": "Fine.",
                   "test/neg/0_2.txt": "Dull."}


def write_acl_imdb(root: Path, reviews: dict[str, str]) -> Path:
    """An aclImdb/ folder of one short review per split and label, plus ``reviews`` (path under
    aclImdb/ -> text)."""
    folder = root / "aclImdb"
    for name, content in (ONE_REVIEW_EACH | reviews).items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(content)
    return folder


@pytest.mark.parametrize("content", ["", "<br /><br />"], ids=["empty-file", "markup-only"])
def test_a_review_without_tokens_is_refused_naming_its_file(tmp_path, content):
    """Such a review crashed nn.LSTM's packing (torch_lstm) or gave a NaN test loss (hand_lstm, mean_max)."""
    folder = write_acl_imdb(tmp_path, {"test/pos/123_9.txt": content})
    with pytest.raises(DataError) as error:
        ImdbTask(str(folder), cache_dir=str(tmp_path / "cache"), download=False, progress=False)
    assert str(error.value) == (f"{folder}: review 'test/pos/123_9.txt' has no tokens; "
                                "every review needs at least one token")


def test_trainer_progress_false_also_hides_the_bars_of_reading_the_data(tmp_path):
    proc = run_lab("task=imdb", "trainer.progress=false", "--cfg", "job", "--resolve", "-p", "task.progress", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().lower() == "false"


def test_a_subset_larger_than_the_split_uses_it_all_and_says_so(cache, caplog):
    task = small_task(cache, train_size=10**6)
    assert len(task.train_reviews) == len(small_task(cache).train_reviews)
    assert f"task.train_size=1000000: the train split has only {len(task.train_reviews)} reviews" in caplog.text


def test_the_test_subset_does_not_depend_on_the_train_subset(cache):
    every_train_review = small_task(cache, test_size=20)
    fewer_train_reviews = small_task(cache, test_size=20, train_size=50)
    assert len(fewer_train_reviews.train_reviews) == 50 and len(fewer_train_reviews.test_reviews) == 20
    for a, b in zip(every_train_review.test_reviews, fewer_train_reviews.test_reviews, strict=True):
        assert torch.equal(a, b)
    other_seed = small_task(cache, test_size=20, seed=1)
    assert any(not torch.equal(a, b) for a, b in zip(every_train_review.test_reviews, other_seed.test_reviews))
