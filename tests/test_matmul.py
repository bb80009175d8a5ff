"""The oneDNN product of the recurrent loops equals torch's, and float32 layers match torch's."""

import pytest
import torch
from torch import nn

from lstmlab.models import HandLSTM, HandRNN
from lstmlab.models.matmul import ONEDNN, linear, project, transposed, use_onednn

needs_onednn = pytest.mark.skipif(not ONEDNN, reason="torch without oneDNN: the fallback is torch's own op")


@needs_onednn
def test_onednn_linear_equals_addmm_with_gradients():
    torch.manual_seed(0)
    x = torch.randn(64, 96, requires_grad=True)  # big enough to take the oneDNN path
    w = torch.randn(256, 96, requires_grad=True)
    other = torch.randn(64, 256, requires_grad=True)
    assert use_onednn(x, w)
    got = linear(x, w, transposed(w, 64), other)
    want = torch.addmm(other, x, w.t())
    assert torch.allclose(got, want, atol=1e-5)
    grads = torch.autograd.grad(got.pow(2).sum(), (x, w, other))
    expected = torch.autograd.grad(want.pow(2).sum(), (x, w, other))
    for g, e in zip(grads, expected):  # float32 sums of a few hundred terms: relative to the largest
        assert (g - e).abs().max() <= 1e-5 * e.abs().max()


@needs_onednn
def test_projection_with_bias_equals_f_linear():
    torch.manual_seed(0)
    x, w, b = torch.randn(16, 64, 32), torch.randn(128, 32), torch.randn(128)
    assert torch.allclose(project(x, w, b), nn.functional.linear(x, w, b), atol=1e-5)


@pytest.mark.parametrize("lengths", [None, torch.tensor([6, 3, 5, 1] * 4)])
def test_float32_hand_lstm_matches_torch(lengths):
    torch.manual_seed(0)
    ref = nn.LSTM(4, 128, num_layers=2, bidirectional=True, batch_first=True)  # 4H·H·B: the oneDNN path
    hand = HandLSTM(4, 128, num_layers=2, bidirectional=True, batch_first=True)
    hand.load_state_dict(ref.state_dict())
    x = torch.randn(16, 6, 4)
    if lengths is None:
        out_ref, (h_ref, c_ref) = ref(x)
        out, (h_n, c_n) = hand(x)
    else:
        packed = nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        out_ref, (h_ref, c_ref) = ref(packed)
        out_ref, _ = nn.utils.rnn.pad_packed_sequence(out_ref, batch_first=True, total_length=6)
        out, (h_n, c_n) = hand(x, lengths=lengths)
    for a, b in ((out, out_ref), (h_n, h_ref), (c_n, c_ref)):
        assert torch.allclose(a, b, atol=1e-5)
    (out.sum() + h_n.sum()).backward()
    (out_ref.sum() + h_ref.sum()).backward()
    for (name, p), q in zip(hand.named_parameters(), ref.parameters()):
        assert torch.allclose(p.grad, q.grad, atol=1e-4), name


def test_float32_hand_rnn_matches_torch():
    torch.manual_seed(0)
    ref = nn.RNN(4, 256, bidirectional=True, batch_first=True)
    hand = HandRNN(4, 256, bidirectional=True, batch_first=True)
    hand.load_state_dict(ref.state_dict())
    x = torch.randn(16, 6, 4)
    out_ref, h_ref = ref(x)
    out, h_n = hand(x)
    assert torch.allclose(out, out_ref, atol=1e-5) and torch.allclose(h_n, h_ref, atol=1e-5)
