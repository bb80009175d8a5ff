"""The oneDNN product of the recurrent loops equals torch's, and float32 layers match torch's."""

import pytest
import torch
from torch import nn

from lstmlab.models import HandLSTM, HandRNN, matmul
from lstmlab.models.matmul import ONEDNN, RecurrentProducts, StepWeight, matmul_t, sum_of_outer_products

needs_onednn = pytest.mark.skipif(not ONEDNN, reason="torch without oneDNN: the fallback is torch's own op")


@pytest.fixture(params=["small_size_paths", "large_size_paths"])
def size_paths(request, monkeypatch):
    """Run a test down both routes: torch's own products, and oneDNN's with reordered weights."""
    if request.param == "large_size_paths":
        if not ONEDNN:
            pytest.skip("torch without oneDNN")
        monkeypatch.setattr(matmul, "ONEDNN_MIN_MACS", 0)
        monkeypatch.setattr(matmul, "MIN_STEPS_TO_REORDER", 0)
        monkeypatch.setattr(matmul, "FRESH_MAPPING_BYTES", 0)  # the projection into a reused buffer
        monkeypatch.setattr(matmul, "ROWS_PER_CHUNK", 3)
    return request.param


def test_products_equal_torch_mm(size_paths):
    torch.manual_seed(0)
    a, w, bias = torch.randn(40, 24), torch.randn(56, 24), torch.randn(56)
    d_rows = torch.randn(40, 56)
    torch.testing.assert_close(matmul_t(a, w, bias), torch.addmm(bias, a, w.t()))
    torch.testing.assert_close(matmul_t(a, w.t().contiguous().t()), a @ w.t())  # w not contiguous
    torch.testing.assert_close(sum_of_outer_products(d_rows, a), d_rows.t() @ a)
    torch.testing.assert_close(sum_of_outer_products(d_rows, [a[:16], a[16:]]), d_rows.t() @ a)  # as blocks
    out = torch.full((40, 56), float("nan"))
    assert matmul_t(a, w, bias, out=out) is out  # every row written, in chunks of 3 on oneDNN's route
    torch.testing.assert_close(out, torch.addmm(bias, a, w.t()))


@pytest.mark.parametrize("sizes", [[4] * 7, [4, 4, 3, 3, 3, 1, 1]], ids=["full", "lengths"])
def test_projection_ahead_gives_every_step_taken_a_block_at_a_time(sizes, size_paths, monkeypatch):
    monkeypatch.setattr(matmul, "PROJECTION_BLOCK_BYTES", 4 * 56 * 4 * 3)  # 3 steps a block: 3, 3, 1
    torch.manual_seed(0)
    x_rows, w, bias = torch.randn(sum(sizes), 24), torch.randn(56, 24), torch.randn(56)
    want = torch.addmm(bias, x_rows, w.t()).split(sizes)
    products, affine = [], StepWeight.affine  # the rows of each block's product, as taken
    monkeypatch.setattr(StepWeight, "affine", lambda self, h, b: products.append(h.shape[0]) or affine(self, h, b))
    projection = matmul.ProjectionAhead(x_rows, w, bias, sizes)
    for t in range(len(sizes)):
        torch.testing.assert_close(projection.at(t), want[t])
        assert len(products) == t // 3 + 1  # a block's product is taken when its first step asks
    assert products == [sum(sizes[:3]), sum(sizes[3:6]), sizes[6]]


def test_step_weight_is_a_constant_with_gradients_for_h_and_the_added_term(size_paths):
    torch.manual_seed(0)
    w = torch.randn(56, 24, requires_grad=True)
    h = torch.randn(16, 24, requires_grad=True)
    other = torch.randn(16, 56, requires_grad=True)
    step = StepWeight(w, batch=16, steps=10)
    got = step.step(h, other)
    want = torch.addmm(other, h, w.detach().t())
    torch.testing.assert_close(got, want)
    upstream = torch.randn_like(want)
    grads = torch.autograd.grad(got, (h, other), upstream)
    torch.testing.assert_close(grads, torch.autograd.grad(want, (h, other), upstream))
    assert torch.autograd.grad(step.step(h, other).sum(), w, allow_unused=True) == (None,)  # w: a constant
    torch.testing.assert_close(step.transposed().step(other.detach()), other.detach() @ w.detach())


def test_recurrent_products_give_every_gradient_autograd_gives(size_paths):
    """∂L/∂U is taken once over all steps in the projection's backward: it must equal autograd's sum."""
    torch.manual_seed(0)
    batch, steps, features, hidden = 16, 5, 6, 8
    x = torch.randn(batch, steps, features, requires_grad=True)
    w_ih = torch.randn(hidden, features, requires_grad=True)
    w_hh = torch.randn(hidden, hidden, requires_grad=True)
    bias = torch.randn(hidden, requires_grad=True)
    h0 = torch.randn(batch, hidden, requires_grad=True)
    wrt = (x, w_ih, w_hh, bias, h0)

    def run(first_step):
        h, outs = h0, []
        for t in range(steps):
            h = torch.tanh(first_step(t, h))
            outs.append(h)
        return torch.stack(outs, 1)

    rows = x.transpose(0, 1).reshape(steps * batch, features)  # step after step
    products = RecurrentProducts(rows, w_ih, bias, w_hh, [batch] * steps)
    got = run(products.step)
    want = run(lambda t, h: x[:, t] @ w_ih.t() + bias + h @ w_hh.t())
    torch.testing.assert_close(got, want)
    upstream = torch.randn_like(want)
    for g, e in zip(torch.autograd.grad(got, wrt, upstream), torch.autograd.grad(want, wrt, upstream), strict=True):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-4)


def run_rnn(pre_activation, h, steps):
    outs = []
    for t in range(steps):
        h = torch.tanh(pre_activation(t, h))
        outs.append(h)
    return outs


def test_recurrent_products_when_the_loss_sees_only_the_first_steps(size_paths):
    """Later steps' backward passes never run: their ∂L/∂a must count as 0, whatever a reused
    buffer held before, and a second backward through a retained graph gives the same again."""
    torch.manual_seed(0)
    batch, steps, features, hidden = 16, 6, 5, 8
    x = torch.randn(batch, steps, features)
    w_ih, w_hh, bias = torch.randn(hidden, features), torch.randn(hidden, hidden), torch.randn(hidden)
    wrt = [t.requires_grad_() for t in (w_ih, w_hh, bias)]
    rows = x.transpose(0, 1).reshape(steps * batch, features)
    h0 = torch.zeros(batch, hidden)

    whole = run_rnn(RecurrentProducts(rows, w_ih, bias, w_hh, [batch] * steps).step, h0, steps)
    torch.autograd.grad(torch.stack(whole).square().sum(), wrt)  # fills any reused buffer

    early = run_rnn(RecurrentProducts(rows, w_ih, bias, w_hh, [batch] * steps).step, h0, steps)
    loss = early[1].square().sum()
    got = torch.autograd.grad(loss, wrt, retain_graph=True)
    again = torch.autograd.grad(loss, wrt)
    want = torch.autograd.grad(run_rnn(lambda t, h: x[:, t] @ w_ih.t() + bias + h @ w_hh.t(), h0, 2)[1].square().sum(), wrt)
    for g, a, e in zip(got, again, want, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(a, g, rtol=0, atol=0)


def test_recurrent_products_without_gradients_for_the_projection(size_paths):
    """No graph through W x + b: under no_grad, and when only h_0 needs a gradient (frozen
    weights, an input that needs none); the steps still give a_t, and h_0 its gradient."""
    torch.manual_seed(0)
    batch, steps, features, hidden = 16, 5, 6, 8
    x, w_ih, w_hh, bias = torch.randn(batch, steps, features), torch.randn(hidden, features), torch.randn(hidden, hidden), torch.randn(hidden)
    h0 = torch.randn(batch, hidden, requires_grad=True)
    rows = x.transpose(0, 1).reshape(steps * batch, features)
    want = run_rnn(lambda t, h: x[:, t] @ w_ih.t() + bias + h @ w_hh.t(), h0, steps)[-1]
    with torch.no_grad():
        torch.testing.assert_close(run_rnn(RecurrentProducts(rows, w_ih, bias, w_hh, [batch] * steps).step, h0, steps)[-1], want)
    got = run_rnn(RecurrentProducts(rows, w_ih, bias, w_hh, [batch] * steps).step, h0, steps)[-1]
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(torch.autograd.grad(got.sum(), h0), torch.autograd.grad(want.sum(), h0))


def test_recurrent_products_in_float64_pass_gradcheck():
    torch.manual_seed(0)
    x = torch.randn(3, 4, 2, dtype=torch.float64, requires_grad=True)
    w_ih, w_hh, bias, h0 = (torch.randn(*shape, dtype=torch.float64, requires_grad=True) for shape in ((5, 2), (5, 5), (5,), (3, 5)))

    def run(x, w_ih, w_hh, bias, h0):
        sizes = [3, 2, 2, 1]  # fewer sequences running at each step, as with lengths 4, 3, 1
        rows = torch.cat([x[:n, t] for t, n in enumerate(sizes)])
        products, h, outs = RecurrentProducts(rows, w_ih, bias, w_hh, sizes), h0, []
        for t, n in enumerate(sizes):
            h = torch.tanh(products.step(t, h[:n]))
            outs.append(h)
        return torch.cat(outs)

    assert torch.autograd.gradcheck(run, (x, w_ih, w_hh, bias, h0))


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
