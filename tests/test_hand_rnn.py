"""HandRNN against torch.nn.RNN, variable lengths, the network's read-out, the CLI."""

import pytest
import torch
from torch import nn

from conftest import TINY_ADDER, read_result
from lstmlab.models import HandRNN, SequenceModel

TOL = 1e-10


def pair(num_layers, bidirectional, nonlinearity="tanh", batch_first=True):
    torch.manual_seed(0)
    kwargs = dict(num_layers=num_layers, bidirectional=bidirectional, nonlinearity=nonlinearity, batch_first=batch_first)
    ref = nn.RNN(3, 5, **kwargs).double()
    hand = HandRNN(3, 5, **kwargs).double()
    hand.load_state_dict(ref.state_dict())
    return ref, hand


def forward_backward(model, x, h0=None):
    output, h_n = model(x, h0)
    (output.pow(2).sum() + h_n.sum()).backward()
    return output, h_n, {name: p.grad for name, p in model.named_parameters()}


@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_equals_torch_rnn_outputs_state_and_gradients(num_layers, bidirectional):
    ref, hand = pair(num_layers, bidirectional)
    x = torch.randn(4, 6, 3, dtype=torch.float64)
    h0 = torch.randn(num_layers * (2 if bidirectional else 1), 4, 5, dtype=torch.float64)
    out_ref, h_ref, grads_ref = forward_backward(ref, x, h0)
    out, h_n, grads = forward_backward(hand, x, h0)
    assert torch.allclose(out, out_ref, atol=TOL, rtol=0)
    assert torch.allclose(h_n, h_ref, atol=TOL, rtol=0)
    assert grads.keys() == grads_ref.keys()
    for name in grads_ref:
        assert torch.allclose(grads[name], grads_ref[name], atol=TOL, rtol=0), name


def test_relu_and_sequence_first_match_torch():
    ref, hand = pair(2, True, nonlinearity="relu", batch_first=False)
    x = torch.randn(6, 4, 3, dtype=torch.float64)  # (T, B, I)
    out_ref, h_ref = ref(x)
    out, h_n = hand(x)
    assert torch.allclose(out, out_ref, atol=TOL, rtol=0)
    assert torch.allclose(h_n, h_ref, atol=TOL, rtol=0)


@pytest.mark.parametrize("batch_first", [False, True])
def test_unbatched_sequence_gives_what_torch_gives(batch_first):
    ref, hand = pair(2, True, batch_first=batch_first)
    x, h0 = torch.randn(6, 3, dtype=torch.float64), torch.randn(4, 5, dtype=torch.float64)  # (T, I), (L·D, H)
    out_ref, h_ref, grads_ref = forward_backward(ref, x, h0)
    out, h_n, grads = forward_backward(hand, x, h0)
    assert out.shape == (6, 10) and h_n.shape == (4, 5)
    assert torch.allclose(out, out_ref, atol=TOL, rtol=0)
    assert torch.allclose(h_n, h_ref, atol=TOL, rtol=0)
    for name in grads_ref:
        assert torch.allclose(grads[name], grads_ref[name], atol=TOL, rtol=0), name


def test_variable_lengths_equal_per_sequence_runs():
    _, hand = pair(2, True)
    lengths = torch.tensor([6, 2, 4, 1])
    x = torch.randn(4, 6, 3, dtype=torch.float64)
    out, h_n = hand(x, lengths=lengths)
    for b, n in enumerate(lengths.tolist()):
        out_b, h_b = hand(x[b : b + 1, :n])
        assert torch.allclose(out[b, :n], out_b[0], atol=TOL, rtol=0)
        assert torch.all(out[b, n:] == 0)  # padding gives zeros
        assert torch.allclose(h_n[:, b], h_b[:, 0], atol=TOL, rtol=0)


def test_packed_sequence_matches_torch():
    ref, hand = pair(1, True)
    x = torch.randn(3, 5, 3, dtype=torch.float64)
    packed = nn.utils.rnn.pack_padded_sequence(x, [5, 3, 2], batch_first=True, enforce_sorted=False)
    out_ref, h_ref = ref(packed)
    out, h_n = hand(packed)
    assert torch.allclose(out.data, out_ref.data, atol=TOL, rtol=0)
    assert torch.allclose(h_n, h_ref, atol=TOL, rtol=0)


def test_final_state_readout_takes_an_rnn_state():
    torch.manual_seed(0)
    net = SequenceModel(HandRNN(3, 5, bidirectional=True, batch_first=True), output_size=2, readout="final_state")
    x = torch.randn(4, 6, 3)
    _, h_n = net.rnn(x)
    expected = net.head(torch.cat([h_n[0], h_n[1]], dim=1))
    assert torch.allclose(net(x), expected)


def test_bad_nonlinearity_is_refused():
    with pytest.raises(ValueError, match="nonlinearity"):
        HandRNN(3, 5, nonlinearity="sigmoid")


def test_cli_trains_hand_rnn_on_the_adder(lab):
    done = lab("model=hand_rnn", "model.bidirectional=true", *TINY_ADDER)
    assert done.returncode == 0, done.stderr
    result = read_result(lab.run_dir)
    assert result["model._target_"] == "lstmlab.models.HandRNN"
    assert result["status"] == "finished"


def test_cli_refuses_a_bad_nonlinearity(lab):
    done = lab("model=hand_rnn", *TINY_ADDER, "model.nonlinearity=sigmoid")
    assert done.returncode == 2
    assert "model.nonlinearity=sigmoid" in done.stderr
    assert not (lab.run_dir / "result.csv").exists()
