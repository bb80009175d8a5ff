"""The hand-derived LSTM backward pass through time against autograd and torch.nn.LSTM."""

from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
import torch.nn.functional as F

from conftest import needs_cuda
from lstmlab.models import lstm_function, matmul, step_loops
from lstmlab.models.lstm_function import LocalDerivativesAhead, lstm_direction_manual
from lstmlab.models.variable_length import RunningRows

F64 = torch.float64
TOL = dict(rtol=0, atol=1e-10)


def reference_direction(x, h, c, w_ih, w_hh, b_ih, b_hh, lengths=None):
    """x (B,T,I) batch-first; h, c (B,H); lengths (B,) or None. Returns out (B,T,H), h_T, c_T.

    The plainest loop: every step for every sequence, a sequence's state frozen by a mask once
    it has ended.
    """
    mask = None if lengths is None else lengths_mask(lengths, x.shape[1]).to(x.device)
    xw = F.linear(x, w_ih, None if b_ih is None else b_ih + b_hh)  # W x_t + b, all steps at once
    outs = []
    for t, xw_t in enumerate(xw.unbind(1)):
        gates = xw_t + h @ w_hh.t()
        i, f, g, o = gates.chunk(4, 1)
        i, f, g, o = i.sigmoid(), f.sigmoid(), g.tanh(), o.sigmoid()
        c_new = f * c + i * g
        h_new = o * c_new.tanh()
        if mask is not None:  # steps past a sequence's length keep the state, output 0
            m = mask[:, t].unsqueeze(1)
            c = torch.where(m, c_new, c)
            h = torch.where(m, h_new, h)
            outs.append(h_new * m)
        else:
            c, h = c_new, h_new
            outs.append(h)
    return torch.stack(outs, 1), h, c


def make_inputs(batch, steps, features, hidden, bias=True, dtype=F64, seed=0):
    """(x, h0, c0, w_ih, w_hh, b_ih, b_hh), all leaves that require grad (biases None without bias)."""
    gen = torch.Generator().manual_seed(seed)
    rand = lambda *shape: torch.randn(*shape, generator=gen, dtype=dtype).requires_grad_()  # noqa: E731
    b_ih, b_hh = (rand(4 * hidden), rand(4 * hidden)) if bias else (None, None)
    return rand(batch, steps, features), rand(batch, hidden), rand(batch, hidden), \
        rand(4 * hidden, features), rand(4 * hidden, hidden), b_ih, b_hh


def lengths_mask(lengths, steps):
    return torch.arange(steps).unsqueeze(0) < torch.as_tensor(lengths).unsqueeze(1)


def grads_of(outputs, inputs, upstream):
    """Gradients of Σ upstream·outputs w.r.t. each input that requires grad (None for the others)."""
    wanted = [t for t in inputs if t is not None and t.requires_grad]
    found = iter(torch.autograd.grad(outputs, wanted, upstream))
    return [next(found) if t is not None and t.requires_grad else None for t in inputs]


def assert_all_close(actual, expected):
    for a, e in zip(actual, expected, strict=True):
        if e is None:
            assert a is None
        else:
            torch.testing.assert_close(a, e, **TOL)


@pytest.fixture(params=["cpp_loops", "python_loops", "large_size_cpp_loops", "large_size_python_loops"])
def size_paths(request, monkeypatch):
    """Run a test down every set of code paths whatever its tensors' sizes.

    Where every row runs every step, the C++ loops (step_loops.cpp) run the steps where they
    can be built; the Python loops take the rest, and all of them when LSTMLAB_STEP_LOOPS=python.
    Large inputs take other routes than small ones, in either loops: float32 CPU products
    through oneDNN with the recurrent weight reordered once, the gates written into a lent
    buffer, and the input projection (and, in the Python loops, the backward pass's local
    derivatives) taken a block of steps at a time.
    """
    if request.param.endswith("cpp_loops") and step_loops.compiled() is None:
        pytest.skip("the C++ step loops cannot be built here (see the warning)")
    monkeypatch.setenv(step_loops.ENV, "cpp" if request.param.endswith("cpp_loops") else "python")
    if request.param.startswith("large_size"):
        monkeypatch.setattr(matmul, "ONEDNN_MIN_MACS", 0)
        # reordered weights from 7 steps on: the float32 tests (6 and 9 steps) take both branches
        monkeypatch.setattr(matmul, "MIN_STEPS_TO_REORDER", 7)
        # what the forward pass saves, in a lent buffer (as from 1 MB)
        monkeypatch.setattr(lstm_function, "FORWARD_BUFFERS_MIN_BYTES", 0)
        # the input projection a few steps at a time (2 at B=4, H=6 in float64)
        monkeypatch.setattr(matmul, "PROJECTION_BLOCK_BYTES", 2000)
        # the local derivatives a few steps at a time (2 at B=4, H=6 in float64)
        monkeypatch.setattr(lstm_function, "LOCAL_BLOCK_BYTES", 2000)
    return request.param


# Sequences of every kind: full length, ending early, ending at the same step, never starting.
RAGGED = torch.tensor([4, 3, 3, 1, 0])


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
@pytest.mark.parametrize("lengths", [None, RAGGED], ids=["full", "lengths"])
def test_gradcheck(bias, lengths, size_paths):
    inputs = make_inputs(5, 4, 2, 3, bias=bias)
    assert torch.autograd.gradcheck(lambda *a: lstm_direction_manual(*a, lengths), inputs)


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
@pytest.mark.parametrize("ragged", [False, True], ids=["full", "lengths"])
def test_matches_autograd_reference(bias, ragged, size_paths):
    inputs = make_inputs(4, 7, 5, 6, bias=bias, seed=1)
    lengths = torch.tensor([7, 5, 3, 1]) if ragged else None
    ref = reference_direction(*inputs, lengths)
    got = lstm_direction_manual(*inputs, lengths)
    assert_all_close(got, ref)
    upstream = [torch.randn_like(t) for t in ref]  # random ∂L/∂out, ∂L/∂h_T, ∂L/∂c_T
    assert_all_close(grads_of(got, inputs, upstream), grads_of(ref, inputs, upstream))


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
def test_matches_torch_lstm(bias, size_paths):
    batch, steps, features, hidden = 3, 6, 4, 5
    torch.manual_seed(2)
    lstm = torch.nn.LSTM(features, hidden, bias=bias, batch_first=True).double()
    params = list(lstm.parameters())
    # sequence-first data seen batch-first, as a batch_first=False model passes it: not contiguous
    x = torch.randn(steps, batch, features, dtype=F64).transpose(0, 1).requires_grad_()
    h0 = torch.randn(1, batch, hidden, dtype=F64, requires_grad=True)
    c0 = torch.randn(1, batch, hidden, dtype=F64, requires_grad=True)
    biases = [lstm.bias_ih_l0, lstm.bias_hh_l0] if bias else [None, None]
    weights = [lstm.weight_ih_l0, lstm.weight_hh_l0] + biases
    upstream = torch.randn(batch, steps, hidden, dtype=F64)

    out_ref, (h_ref, c_ref) = lstm(x, (h0, c0))
    loss_ref = (out_ref * upstream).sum() + h_ref.sum() + c_ref.sum()
    grads_ref = torch.autograd.grad(loss_ref, [x, h0, c0] + params)

    out, h_t, c_t = lstm_direction_manual(x, h0[0], c0[0], *weights)
    loss = (out * upstream).sum() + h_t.sum() + c_t.sum()
    grads = torch.autograd.grad(loss, [x, h0, c0] + params)

    assert_all_close([out, h_t, c_t], [out_ref, h_ref[0], c_ref[0]])
    assert_all_close(grads, grads_ref)


def test_float32_matches_torch_lstm(size_paths):
    torch.manual_seed(3)
    lstm = torch.nn.LSTM(8, 16, batch_first=True)
    x = torch.randn(5, 9, 8, requires_grad=True)
    h0, c0 = torch.randn(2, 1, 5, 16, requires_grad=True)
    out_ref, (h_ref, c_ref) = lstm(x, (h0, c0))
    wrt = [x, h0, c0] + list(lstm.parameters())
    grads_ref = torch.autograd.grad(out_ref.square().sum() + h_ref.sum() + c_ref.sum(), wrt)

    out, h_t, c_t = lstm_direction_manual(x, h0[0], c0[0], *lstm.parameters())
    grads = torch.autograd.grad(out.square().sum() + h_t.sum() + c_t.sum(), wrt)

    assert out.dtype == torch.float32
    for got, want in zip([out, h_t, c_t], [out_ref, h_ref[0], c_ref[0]], strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    for got, want in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_float32_with_lengths_matches_reference(size_paths):
    inputs = make_inputs(4, 6, 5, 8, dtype=torch.float32, seed=13)
    lengths = torch.tensor([6, 5, 4, 1])
    ref = reference_direction(*inputs, lengths)
    got = lstm_direction_manual(*inputs, lengths)
    upstream = [torch.randn_like(t) for t in ref]
    for a, e in zip(got, ref, strict=True):
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-5)
    for a, e in zip(grads_of(got, inputs, upstream), grads_of(ref, inputs, upstream), strict=True):
        torch.testing.assert_close(a, e, rtol=1e-4, atol=1e-5)


def test_batch_with_lengths_equals_each_sequence_alone(size_paths):
    lengths = [5, 4, 2, 1]
    x, h0, c0, *weights = make_inputs(len(lengths), 5, 3, 4, seed=4)
    out, h_t, c_t = lstm_direction_manual(x, h0, c0, *weights, torch.tensor(lengths))
    batch_loss = sum(out[b, :n].sum() for b, n in enumerate(lengths)) + h_t.sum() + c_t.sum()
    batch_grads = torch.autograd.grad(batch_loss, weights)

    alone_loss = 0
    for b, n in enumerate(lengths):
        out_b, h_b, c_b = lstm_direction_manual(x[b : b + 1, :n], h0[b : b + 1], c0[b : b + 1], *weights)
        torch.testing.assert_close(out[b, :n], out_b[0], **TOL)
        torch.testing.assert_close(h_t[b], h_b[0], **TOL)
        torch.testing.assert_close(c_t[b], c_b[0], **TOL)
        assert not out[b, n:].any(), "padded steps output 0"
        alone_loss = alone_loss + out_b.sum() + h_b.sum() + c_b.sum()
    assert_all_close(batch_grads, torch.autograd.grad(alone_loss, weights))


@pytest.mark.parametrize("lengths", [None, torch.tensor([7, 5, 5, 2])], ids=["full", "lengths"])
def test_local_derivatives_are_taken_a_block_at_a_time_as_the_walk_back_reaches_it(lengths, monkeypatch):
    running = RunningRows(4, 7, lengths)  # steps of 4 rows, or of 4, 4, 3, 3, 3, 1, 1
    rows, hidden = sum(running.sizes), 2
    acts, m_all, sig_m = torch.rand(rows, 4 * hidden), torch.randn(4 + rows, hidden), torch.rand(rows, hidden)
    whole = LocalDerivativesAhead(acts, m_all, sig_m, running)  # 2 MB a block: every row at once
    whole.reach(6)
    want = whole.d_gates.clone(), whole.dh_dc.clone()
    monkeypatch.setattr(lstm_function, "LOCAL_BLOCK_BYTES", 3 * 4 * 8 * 4)  # 3 steps of 4 rows of 8 float32: 3, 3, 1
    local = LocalDerivativesAhead(acts, m_all, sig_m, running)
    local.d_gates.fill_(float("nan")), local.dh_dc.fill_(float("nan"))
    starts = matmul.row_starts(running.sizes)
    for t, block_start in zip(range(6, -1, -1), [6, 3, 3, 3, 0, 0, 0]):
        local.reach(t)
        filled = slice(starts[block_start], rows)  # every row of t's block and of those after it
        torch.testing.assert_close(local.d_gates[filled], want[0][filled])
        torch.testing.assert_close(local.dh_dc[filled], want[1][filled])
        assert local.d_gates[: starts[block_start]].isnan().all()  # the earlier blocks not yet


def test_fully_padded_sequence_keeps_initial_state_and_passes_its_gradient():
    x, h0, c0, *weights = make_inputs(2, 3, 2, 3, seed=5)
    out, h_t, c_t = lstm_direction_manual(x, h0, c0, *weights, torch.tensor([3, 0]))
    torch.testing.assert_close(h_t[1], h0[1], **TOL)
    torch.testing.assert_close(c_t[1], c0[1], **TOL)
    d_x, d_h0, d_c0 = torch.autograd.grad((out.sum() + h_t.sum() + 2 * c_t.sum()), [x, h0, c0])
    assert not d_x[1].any()
    torch.testing.assert_close(d_h0[1], torch.ones(3, dtype=F64), **TOL)
    torch.testing.assert_close(d_c0[1], torch.full((3,), 2.0, dtype=F64), **TOL)


@pytest.mark.parametrize("ragged", [False, True], ids=["full", "lengths"])
def test_single_step(ragged, size_paths):
    inputs = make_inputs(3, 1, 4, 2, seed=6)
    lengths = torch.tensor([1, 1, 0]) if ragged else None
    ref = reference_direction(*inputs, lengths)
    got = lstm_direction_manual(*inputs, lengths)
    assert got[0].shape == (3, 1, 2)
    assert_all_close(got, ref)
    upstream = [torch.randn_like(t) for t in ref]
    assert_all_close(grads_of(got, inputs, upstream), grads_of(ref, inputs, upstream))


@pytest.mark.parametrize("layout", ["contiguous", "feature_slice", "expanded"])
def test_batch_of_one(layout, size_paths):
    """With one sequence the rows are a view of x itself, with x's strides, whatever they are."""
    inputs = make_inputs(1, 5, 3, 4, seed=7)
    x = inputs[0]
    if layout == "feature_slice":  # e.g. a model fed some of the columns of a wider input
        x = torch.cat([x, torch.randn(1, 5, 2, dtype=F64)], 2)[..., :3]
    elif layout == "expanded":  # one input repeated at every step
        x = x[:, :1].expand(1, 5, 3)
    ref = reference_direction(x, *inputs[1:])
    got = lstm_direction_manual(x, *inputs[1:])
    assert_all_close(got, ref)
    upstream = [torch.randn_like(t) for t in ref]
    assert_all_close(grads_of(got, inputs, upstream), grads_of(ref, inputs, upstream))


@pytest.mark.parametrize("ragged", [False, True], ids=["full", "lengths"])
def test_weight_grads_without_input_or_state_grads(ragged, loops):
    x, h0, c0, *weights = make_inputs(3, 4, 2, 3, seed=8)
    x, h0, c0 = x.detach(), h0.detach(), c0.detach()  # data and state as a model gets them
    lengths = torch.tensor([4, 3, 2]) if ragged else None
    inputs = [x, h0, c0, *weights]
    ref = reference_direction(*inputs, lengths)
    got = lstm_direction_manual(*inputs, lengths)
    upstream = [torch.randn_like(t) for t in ref]
    grads = grads_of(got, inputs, upstream)
    assert grads[:3] == [None, None, None]
    assert_all_close(grads, grads_of(ref, inputs, upstream))


def test_only_initial_state_requires_grad(loops):
    x, h0, c0, *weights = make_inputs(2, 3, 2, 3, seed=9)
    inputs = [x.detach(), h0, c0] + [w.detach() for w in weights]
    ref = reference_direction(*inputs)
    got = lstm_direction_manual(*inputs)
    upstream = [torch.randn_like(t) for t in ref]
    assert_all_close(grads_of(got, inputs, upstream), grads_of(ref, inputs, upstream))


@pytest.mark.parametrize("ragged", [False, True], ids=["full", "lengths"])
def test_every_gradient_is_a_tensor_an_optimiser_can_update_in_place(ragged, loops):
    """Not an inference tensor (the loops run under torch.inference_mode): those refuse in-place
    updates outside it, e.g. an optimiser's or a gradient clip's."""
    inputs = make_inputs(3, 4, 2, 3, seed=12)
    out, h_t, c_t = lstm_direction_manual(*inputs, torch.tensor([4, 4, 2]) if ragged else None)
    (out.sum() + h_t.sum() + c_t.sum()).backward()
    for t in inputs:
        assert not t.grad.is_inference()
        t.grad.mul_(0.5)


def test_the_two_bias_gradients_are_separate_tensors():
    x, h0, c0, w_ih, w_hh, b_ih, b_hh = make_inputs(2, 3, 2, 3, seed=10)
    out, _, _ = lstm_direction_manual(x, h0, c0, w_ih, w_hh, b_ih, b_hh)
    out.sum().backward()
    torch.testing.assert_close(b_ih.grad, b_hh.grad, **TOL)
    b_ih.grad.zero_()  # e.g. an optimiser's in-place update of one must not touch the other
    assert b_hh.grad.abs().sum() > 0


@pytest.mark.parametrize("ragged", [False, True], ids=["full", "lengths"])
def test_backward_twice_with_retained_graph_gives_the_same_gradients(ragged, loops):
    inputs = make_inputs(2, 4, 3, 2, seed=11)
    lengths = torch.tensor([4, 2]) if ragged else None
    out, h_t, c_t = lstm_direction_manual(*inputs, lengths)
    loss = out.sum() + h_t.sum() + c_t.sum()
    first = torch.autograd.grad(loss, inputs, retain_graph=True)
    second = torch.autograd.grad(loss, inputs)
    assert_all_close(second, first)


def test_gradients_stay_valid_after_later_calls(loops):
    first = make_inputs(3, 5, 4, 6, seed=15)
    second = make_inputs(3, 5, 4, 6, seed=16)  # same shapes: the backward pass reuses its scratch buffer
    upstream = [torch.randn(3, 5, 6, dtype=F64), torch.randn(3, 6, dtype=F64), torch.randn(3, 6, dtype=F64)]
    grads_first = grads_of(lstm_direction_manual(*first), first, upstream)
    kept = [g.clone() for g in grads_first]
    grads_second = grads_of(lstm_direction_manual(*second), second, upstream)
    assert_all_close(grads_first, kept)
    assert_all_close(grads_second, grads_of(reference_direction(*second), second, upstream))


def test_graphs_alive_at_once_keep_their_own_gates_buffers(monkeypatch, loops):
    """The saved gates and cells go into a lent buffer (as they do from 1 MB): it stays lent
    while its graph lives, so a second forward pass gets another one, and both backward passes
    stay right."""
    monkeypatch.setattr(lstm_function, "FORWARD_BUFFERS_MIN_BYTES", 0)
    first, second = make_inputs(3, 5, 4, 6, seed=17), make_inputs(3, 5, 4, 6, seed=18)
    upstream = [torch.randn(3, 5, 6, dtype=F64), torch.randn(3, 6, dtype=F64), torch.randn(3, 6, dtype=F64)]
    outputs_first, outputs_second = lstm_direction_manual(*first), lstm_direction_manual(*second)
    assert outputs_first[0].grad_fn.lease.tensors[0].data_ptr() != outputs_second[0].grad_fn.lease.tensors[0].data_ptr()
    grads_second = grads_of(outputs_second, second, upstream)  # the later graph first
    grads_first = grads_of(outputs_first, first, upstream)
    assert_all_close(grads_first, grads_of(reference_direction(*first), first, upstream))
    assert_all_close(grads_second, grads_of(reference_direction(*second), second, upstream))


@pytest.mark.parametrize("dtype", [F64, torch.float32], ids=["float64", "float32_onednn"])
def test_backward_in_several_threads_at_once(loops, dtype, monkeypatch):
    if dtype == torch.float32:  # every product through oneDNN, its calls from several threads at once
        monkeypatch.setattr(matmul, "ONEDNN_MIN_MACS", 0)
    tolerance = TOL if dtype == F64 else dict(rtol=1e-4, atol=1e-5)

    def grads_and_reference(seed):
        inputs = make_inputs(4, 30, 8, 16, dtype=dtype, seed=seed)
        upstream = [torch.randn_like(t) for t in reference_direction(*inputs)]
        return grads_of(lstm_direction_manual(*inputs), inputs, upstream), \
            grads_of(reference_direction(*inputs), inputs, upstream)

    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(grads_and_reference, range(20, 28)))
    for got, want in results:
        for a, e in zip(got, want, strict=True):
            torch.testing.assert_close(a, e, **tolerance)


@needs_cuda
@pytest.mark.parametrize("ragged", [False, True], ids=["full", "lengths"])
def test_cuda_matches_autograd_reference(ragged):
    inputs = [t.detach().cuda().requires_grad_() for t in make_inputs(4, 7, 5, 6, seed=14)]
    lengths = torch.tensor([7, 5, 3, 1]) if ragged else None
    ref = reference_direction(*inputs, lengths)
    got = lstm_direction_manual(*inputs, lengths)
    assert all(t.is_cuda for t in got)
    assert_all_close(got, ref)
    upstream = [torch.randn_like(t) for t in ref]
    assert_all_close(grads_of(got, inputs, upstream), grads_of(ref, inputs, upstream))


@needs_cuda
@pytest.mark.parametrize("lengths", [None, RAGGED], ids=["full", "lengths"])
def test_gradcheck_on_cuda(lengths):
    inputs = [t.detach().cuda().requires_grad_() for t in make_inputs(5, 4, 2, 3, seed=15)]
    assert torch.autograd.gradcheck(lambda *a: lstm_direction_manual(*a, lengths), inputs)


def test_no_grad_forward_gives_the_same_outputs(loops):
    inputs = make_inputs(2, 4, 3, 2, seed=12)
    with torch.no_grad():
        got = lstm_direction_manual(*inputs)
        ref = reference_direction(*inputs)
    assert_all_close(got, ref)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda a: {**a, "x": a["x"][:, :0]}, "x"),
        (lambda a: {**a, "h0": a["h0"][:1]}, "h0"),
        (lambda a: {**a, "w_hh": a["w_hh"][:-1]}, "weights"),
        (lambda a: {**a, "lengths": torch.tensor([2, 3])}, "longest first"),
        (lambda a: {**a, "lengths": torch.tensor([4, 3])}, "lengths"),
        (lambda a: {**a, "lengths": torch.tensor([3.0, 2.0])}, "integers"),
    ],
    ids=["no_steps", "batch_mismatch", "bad_w_hh", "unsorted_lengths", "too_long", "float_lengths"],
)
def test_bad_shapes_are_rejected(change, message):
    x, h0, c0, w_ih, w_hh, b_ih, b_hh = make_inputs(2, 3, 2, 3)
    args = dict(x=x, h0=h0, c0=c0, w_ih=w_ih, w_hh=w_hh, b_ih=b_ih, b_hh=b_hh, lengths=None)
    with pytest.raises(ValueError, match=message):
        lstm_direction_manual(**change(args))
