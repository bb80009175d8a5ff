"""The adder task's data: layouts, exact sums, splits and metric."""

import pytest
import torch

from lstmlab.tasks.adder import AdderTask, add_bits, all_operands, encode, random_operands, to_bits
from lstmlab.tasks.base import Batch


def from_bits(bits: torch.Tensor) -> list[int]:
    """LSB-first bit rows -> Python ints (exact at any length)."""
    return [sum(int(b) << k for k, b in enumerate(row)) for row in bits.tolist()]


def test_ripple_carry_sum_equals_integer_sum_at_64_bits():
    a, b = random_operands(200, 64, torch.Generator().manual_seed(0))
    sums = from_bits(add_bits(a, b))
    assert sums == [x + y for x, y in zip(from_bits(a), from_bits(b))]
    assert max(from_bits(a)) < 2**63 and max(sums) < 2**64  # operands leave room for the carry


def test_exhaustive_set_is_every_pair_of_7_bit_numbers():
    a, b = all_operands()
    pairs = set(zip(from_bits(a), from_bits(b)))
    assert len(pairs) == 16_384 == len(a)
    assert pairs == {(x, y) for x in range(128) for y in range(128)}


def test_serial_layout_is_lsb_first_two_bits_in_one_bit_out():
    a, b = to_bits(torch.tensor([5]), 8), to_bits(torch.tensor([3]), 8)  # 5 + 3 = 8
    inputs, targets = encode(a, b, "serial")
    assert inputs.shape == (1, 8, 2) and targets.shape == (1, 8)
    assert inputs[0, :, 0].tolist() == [1, 0, 1, 0, 0, 0, 0, 0]
    assert inputs[0, :, 1].tolist() == [1, 1, 0, 0, 0, 0, 0, 0]
    assert targets[0].tolist() == [0, 0, 0, 1, 0, 0, 0, 0]


def test_parallel_layout_is_the_notes_two_steps_of_8_bits_msb_first():
    a, b = to_bits(torch.tensor([100]), 8), to_bits(torch.tensor([27]), 8)
    inputs, targets = encode(a, b, "parallel")
    assert inputs.shape == (1, 2, 8) and targets.shape == (1, 8)
    assert inputs[0, 0].tolist() == [0, 1, 1, 0, 0, 1, 0, 0]  # 100
    assert targets[0].tolist() == [0, 1, 1, 1, 1, 1, 1, 1]  # 127


def test_flat_layout_is_16_steps_of_one_bit():
    a, b = to_bits(torch.tensor([1]), 8), to_bits(torch.tensor([2]), 8)
    inputs, _ = encode(a, b, "flat")
    assert inputs.shape == (1, 16, 1)
    assert inputs[0, :, 0].tolist() == [0] * 7 + [1] + [0] * 6 + [1, 0]


def test_splits_have_requested_sizes_and_depend_on_seed():
    task = AdderTask(train_size=300, test_size=100, eval_bits=[16], eval_size=50)
    assert len(task.train_inputs) == 300 and len(task.test_inputs) == 100
    assert task.long_sets[16][0].shape == (50, 16, 2)
    other = AdderTask(train_size=300, test_size=100, eval_bits=[], seed=1)
    assert not torch.equal(task.train_inputs, other.train_inputs)
    assert torch.equal(task.train_inputs, AdderTask(train_size=300, test_size=100, eval_bits=[]).train_inputs)


def _pair_values(bits):
    return (bits * (1 << torch.arange(bits.shape[1]))).sum(1)


def test_unseen_acc_is_scored_on_exactly_the_pairs_the_training_data_lacks():
    task = AdderTask(encoding="serial", train_size=5_000, test_size=100, eval_bits=[])
    a_bits, b_bits = task.train_inputs[:, :, 0].long(), task.train_inputs[:, :, 1].long()
    trained = set(zip(_pair_values(a_bits).tolist(), _pair_values(b_bits).tolist()))
    unseen_a, unseen_b = task.unseen[0][:, :, 0].long(), task.unseen[0][:, :, 1].long()
    unseen = list(zip(_pair_values(unseen_a).tolist(), _pair_values(unseen_b).tolist()))
    assert len(unseen) == len(set(unseen)) == 128 * 128 - len(trained)
    assert not trained & set(unseen)

    def right_on_trained_pairs_only(batch):  # a model that has only memorised its training pairs
        pairs = zip(_pair_values(batch.inputs[:, :, 0].long()).tolist(), _pair_values(batch.inputs[:, :, 1].long()).tolist())
        right = torch.tensor([pair in trained for pair in pairs]).float().unsqueeze(1)
        return ((batch.targets * 2 - 1) * (right * 2 - 1) * 10).unsqueeze(2)

    metrics = task.evaluate(right_on_trained_pairs_only)
    assert metrics["unseen_acc"] == 0.0 and metrics["exhaustive_acc"] == pytest.approx(len(trained) / 128**2)


def test_the_default_test_split_repeats_training_pairs_and_unseen_acc_is_what_is_held_out():
    task = AdderTask(encoding="parallel", eval_bits=[])  # the note's 80,000 + 20,000 draws
    assert 100 < len(task.unseen[0]) < 150  # 16,384 · e^(-80,000/16,384) ≈ 124 expected
    assert "unseen_acc" in task.metric_modes


def test_no_unseen_acc_when_the_training_draws_cover_every_pair():
    task = AdderTask(encoding="parallel", train_size=400_000, test_size=10, eval_bits=[])
    assert task.unseen is None and "unseen_acc" not in task.metric_modes
    assert "unseen_acc" not in task.evaluate(lambda batch: batch.targets)


@pytest.mark.parametrize("encoding", ["serial", "parallel", "flat"])
def test_perfect_predictions_score_one_and_a_single_wrong_bit_fails_the_pair(encoding):
    task = AdderTask(encoding=encoding, train_size=10, test_size=100, eval_bits=[16], eval_size=100)
    logits = lambda targets: (targets * 2 - 1) * 10  # confident and right  # noqa: E731
    if encoding == "serial":
        perfect = lambda batch: logits(batch.targets).unsqueeze(2)  # noqa: E731
    else:
        perfect = lambda batch: logits(batch.targets)  # noqa: E731
    metrics = task.evaluate(perfect)
    assert metrics["test_acc"] == metrics["unseen_acc"] == metrics["exhaustive_acc"] == 1.0
    assert ("acc_16bit" in metrics) == (encoding == "serial")

    def one_bit_wrong_in_first_pair(batch):
        out = perfect(batch).clone()
        out[0, 0] *= -1
        return out

    assert task.evaluate(one_bit_wrong_in_first_pair)["test_acc"] == pytest.approx(0.99)


def test_mse_loss_thresholds_raw_outputs_at_one_half():
    task = AdderTask(encoding="parallel", loss="mse", train_size=10, test_size=50, eval_bits=[])
    metrics = task.evaluate(lambda batch: batch.targets * 0.8 + 0.1)  # 0.1 / 0.9: right side of 0.5
    assert metrics["test_acc"] == 1.0
    assert metrics["test_loss"] == pytest.approx(0.01)
    batch = Batch(task.train_inputs[:4], task.train_targets[:4])
    assert task.loss(batch.targets, batch).item() == 0.0


def test_bad_encoding_names_the_key():
    with pytest.raises(ValueError, match="task.encoding"):
        AdderTask(encoding="zigzag")


def test_bad_loss_names_the_key_and_the_choices():
    with pytest.raises(ValueError, match="^task.loss: expected bce or mse, got 'hinge'$"):
        AdderTask(loss="hinge")
