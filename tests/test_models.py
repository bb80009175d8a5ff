"""HandLSTM against torch.nn.LSTM: same weights give the same numbers, forwards and backwards."""

import functools
import itertools
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from conftest import HAS_CPP_COMPILER, needs_cuda
from lstmlab.models import HandLSTM, HandRNN, LayerNormLSTM, SequenceModel
from lstmlab.models.variable_length import RunningRows

TOL = dict(rtol=0, atol=1e-10)


def twin_lstms(input_size=3, hidden_size=5, backward="autograd", **kwargs):
    """An nn.LSTM and a HandLSTM (with that backward pass) with the same float64 weights."""
    torch.manual_seed(0)
    reference = nn.LSTM(input_size, hidden_size, **kwargs).double()
    hand = HandLSTM(input_size, hidden_size, backward=backward, **kwargs).double()
    hand.load_state_dict(reference.state_dict())
    return reference, hand


def assert_same_results(got, expected):
    """Two run_and_backprop results agree to TOL: outputs, final states and every gradient
    (a compiled model's parameter names lose the wrapper's "_orig_mod." prefix)."""
    for a, b in zip(expected[:3], got[:3]):
        torch.testing.assert_close(b, a, **TOL)
    got_grads = {name.removeprefix("_orig_mod."): grad for name, grad in got[3].items()}
    assert got_grads.keys() == expected[3].keys()
    for name in expected[3]:
        torch.testing.assert_close(got_grads[name], expected[3][name], **TOL, msg=f"gradient of {name}")


def run_and_backprop(lstm, x, hx=None):
    x = x.clone().requires_grad_(True)
    hx = None if hx is None else tuple(s.clone().requires_grad_(True) for s in hx)
    output, (h_n, c_n) = lstm(x, hx)
    torch.manual_seed(1)  # the same random upstream gradient for both models
    weights = [torch.randn(t.shape, dtype=t.dtype).to(t.device) for t in (output, h_n)]
    loss = (output * weights[0]).sum() + (h_n * weights[1]).sum() + (c_n**2).sum()
    loss.backward()
    grads = {name: p.grad for name, p in lstm.named_parameters()}
    grads["input"] = x.grad
    if hx is not None:
        grads["h0"], grads["c0"] = hx[0].grad, hx[1].grad
    return output, h_n, c_n, grads


@pytest.mark.parametrize(
    "num_layers, bidirectional, batch_first", list(itertools.product([1, 2, 3], [False, True], [False, True]))
)
def test_hand_lstm_matches_torch_outputs_states_and_gradients(num_layers, bidirectional, batch_first):
    reference, hand = twin_lstms(num_layers=num_layers, bidirectional=bidirectional, batch_first=batch_first)
    x = torch.randn(4, 7, 3, dtype=torch.float64)  # (B, T, I) or (T, B, I): both valid shapes
    expected, got = run_and_backprop(reference, x), run_and_backprop(hand, x)
    assert_same_results(got, expected)


def test_initial_state_is_used_and_gets_gradients():
    reference, hand = twin_lstms(num_layers=2, bidirectional=True, batch_first=True)
    x = torch.randn(3, 5, 3, dtype=torch.float64)
    hx = (torch.randn(4, 3, 5, dtype=torch.float64), torch.randn(4, 3, 5, dtype=torch.float64))
    expected, got = run_and_backprop(reference, x, hx), run_and_backprop(hand, x, hx)
    torch.testing.assert_close(got[0], expected[0], **TOL)
    torch.testing.assert_close(got[3]["h0"], expected[3]["h0"], **TOL)
    torch.testing.assert_close(got[3]["c0"], expected[3]["c0"], **TOL)
    zero_state, _ = hand(x)
    assert not torch.allclose(zero_state, got[0])


@pytest.mark.parametrize("backward", ["autograd", "manual"])
@pytest.mark.parametrize("batch_first", [False, True])
def test_unbatched_sequence_gives_what_torch_gives(backward, batch_first):
    """One (T, I) sequence with (layers × directions, H) states, as nn.LSTM takes it unbatched."""
    reference, hand = twin_lstms(num_layers=2, bidirectional=True, batch_first=batch_first, backward=backward)
    x = torch.randn(7, 3, dtype=torch.float64)
    hx = (torch.randn(4, 5, dtype=torch.float64), torch.randn(4, 5, dtype=torch.float64))
    expected, got = run_and_backprop(reference, x, hx), run_and_backprop(hand, x, hx)
    assert got[0].shape == (7, 10) and got[1].shape == got[2].shape == (4, 5)
    assert_same_results(got, expected)


@pytest.mark.parametrize(
    "x, hx, message",
    [
        (torch.randn(2, 3, 4, 3), None, r"input: expected 3-D \(batched\) or 2-D \(unbatched\), got shape \(2, 3, 4, 3\)"),
        (torch.randn(4, 3), (torch.zeros(1, 1, 5), torch.zeros(1, 1, 5)), r"initial state: for an unbatched \(2-D\) input, expected 2-D"),
        (torch.randn(2, 4, 4), None, r"input: expected 3 features \(input_size\), got shape \(2, 4, 4\)"),
        (torch.randn(2, 4, 3, dtype=torch.float64), None, r"input: expected dtype torch.float32 \(the weights'\), got torch.float64"),
        (torch.randn(2, 4, 3), (torch.zeros(1, 4, 5, dtype=torch.float64),) * 2, r"initial state: expected dtype torch.float32"),
    ],
    ids=["4-D input", "batched state for unbatched input", "features", "input dtype", "state dtype"],
)
def test_input_and_state_of_the_wrong_shape_or_type_are_rejected(x, hx, message):
    with pytest.raises(ValueError, match=message):
        HandLSTM(3, 5)(x, hx)


@pytest.mark.parametrize("backward, output_dtype", [("autograd", torch.bfloat16), ("manual", torch.float32)])
def test_runs_under_autocast_with_an_input_of_the_lower_precision(backward, output_dtype):
    """A bfloat16 input (another autocast layer's output) under torch.autocast: the autograd
    loop's products cast their operands; the manual backward's Function, which autocast cannot
    reach into, runs in the weights' float32."""
    model, x = HandLSTM(3, 5, batch_first=True, backward=backward), torch.randn(2, 4, 3).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        output, _ = model(x)
    output.float().sum().backward()
    assert output.dtype == output_dtype and all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("layer", [HandLSTM, HandRNN, LayerNormLSTM])
def test_parameters_are_made_with_the_device_and_dtype_asked_for(layer):
    """As torch's layers take device= and dtype=; the LayerNorm parameters included."""
    model = layer(3, 5, num_layers=2, bidirectional=True, device="cpu", dtype=torch.float64)
    assert {(p.device.type, p.dtype) for p in model.parameters()} == {("cpu", torch.float64)}
    assert model(torch.randn(2, 4, 3, dtype=torch.float64))[0].dtype == torch.float64


def test_state_dict_loads_both_ways_with_same_names_and_shapes():
    reference = nn.LSTM(4, 6, num_layers=2, bidirectional=True)
    hand = HandLSTM(4, 6, num_layers=2, bidirectional=True)
    hand.flatten_parameters()  # as code written for nn.LSTM may call it: nothing to do here
    assert {k: v.shape for k, v in hand.state_dict().items()} == {k: v.shape for k, v in reference.state_dict().items()}
    reference.load_state_dict(hand.state_dict())
    hand.load_state_dict(reference.state_dict())


def test_no_bias_matches_torch():
    reference, hand = twin_lstms(num_layers=2, bias=False)
    assert not any("bias" in name for name, _ in hand.named_parameters())
    x = torch.randn(6, 2, 3, dtype=torch.float64)
    torch.testing.assert_close(hand(x)[0], reference(x)[0], **TOL)


def test_initialisation_is_uniform_within_one_over_sqrt_hidden():
    torch.manual_seed(0)
    hand = HandLSTM(10, 25, num_layers=2)
    values = torch.cat([p.detach().flatten() for p in hand.parameters()])
    bound = 1 / 25**0.5
    assert values.abs().max() <= bound
    assert values.abs().max() > 0.95 * bound and abs(values.mean()) < 0.01  # spread over the range


def test_dropout_acts_between_layers_only_in_training():
    torch.manual_seed(0)
    hand = HandLSTM(3, 8, num_layers=2, dropout=0.5, batch_first=True)
    x = torch.randn(2, 5, 3)
    hand.eval()
    assert torch.equal(hand(x)[0], hand(x)[0])
    hand.train()
    assert not torch.equal(hand(x)[0], hand(x)[0])


def padded_batch(lengths, features=3):
    torch.manual_seed(2)
    x = torch.randn(len(lengths), max(lengths), features, dtype=torch.float64)
    lengths = torch.tensor(lengths)
    for b, n in enumerate(lengths):
        x[b, n:] = 0.0
    return x, lengths


@pytest.mark.parametrize("bidirectional", [False, True])
def test_packed_sequence_gives_same_outputs_and_final_states_as_torch(bidirectional):
    reference, hand = twin_lstms(num_layers=2, bidirectional=bidirectional, batch_first=True)
    x, lengths = padded_batch([5, 2, 7, 1])
    packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
    ref_out, (ref_h, ref_c) = reference(packed)
    out, (h, c) = hand(packed)
    torch.testing.assert_close(pad_packed_sequence(out, batch_first=True)[0], pad_packed_sequence(ref_out, batch_first=True)[0], **TOL)
    torch.testing.assert_close(h, ref_h, **TOL)
    torch.testing.assert_close(c, ref_c, **TOL)


def test_lengths_give_each_sequence_the_result_it_gets_alone():
    _, hand = twin_lstms(num_layers=2, bidirectional=True, batch_first=True)
    x, lengths = padded_batch([4, 6, 1])
    out, (h, _) = hand(x, lengths=lengths)
    for b, n in enumerate(lengths.tolist()):
        alone_out, (alone_h, _) = hand(x[b : b + 1, :n])
        torch.testing.assert_close(out[b : b + 1, :n], alone_out, **TOL)
        torch.testing.assert_close(h[:, b], alone_h[:, 0], **TOL)
        assert torch.all(out[b, n:] == 0)  # padding never leaks into the outputs


@pytest.mark.parametrize("backward", ["autograd", "manual"])
def test_padding_is_never_computed_so_even_nan_there_changes_nothing(backward):
    """Past its length a sequence is not run at all (rather than run and masked): garbage there cannot leak."""
    torch.manual_seed(0)
    hand = HandLSTM(3, 5, num_layers=2, bidirectional=True, batch_first=True, backward=backward).double()
    x, lengths = padded_batch([4, 6, 1])
    results = []
    for fill in (0.0, float("nan")):
        x_filled = x.clone()
        for b, n in enumerate(lengths.tolist()):
            x_filled[b, n:] = fill
        x_filled.requires_grad_(True)
        hand.zero_grad()
        out, (h, c) = hand(x_filled, lengths=lengths)
        (out.sum() + h.sum() + c.sum()).backward()
        grads = [x_filled.grad] + [p.grad.clone() for p in hand.parameters()]
        assert all(torch.isfinite(t).all() for t in (out, h, c, *grads))
        results.append((out, h, c, *grads))
    for with_zeros, with_nan in zip(*results, strict=True):
        torch.testing.assert_close(with_nan, with_zeros, **TOL)


def test_running_rows_follow_the_lengths_step_by_step():
    running = RunningRows(4, 5, torch.tensor([5, 3, 3, 0]))
    assert running.sizes == [3, 3, 3, 1, 1]  # sequences longer than t; the empty one never runs
    x = torch.arange(4 * 5.0).view(4, 5, 1)  # x[b, t] = 5b + t
    rows = running.rows(x)
    assert rows[:, 0].tolist() == [0, 5, 10, 1, 6, 11, 2, 7, 12, 3, 4]  # step after step
    assert [step[:, 0].tolist() for step in running.per_step(rows)][3:] == [[3], [4]]
    padded = running.padded(rows)
    assert torch.equal(padded[:3, :3], x[:3, :3]) and not padded[1:, 3:].any() and not padded[3].any()
    sequences, last = running.last_rows()
    assert sequences.tolist() == [0, 1, 2] and rows[last, 0].tolist() == [4, 7, 12]
    assert running.previous(torch.cat([-torch.ones(4, 1), rows]))[:, 0].tolist() == [-1, -1, -1, 0, 5, 10, 1, 6, 11, 2, 3]


@pytest.mark.parametrize(
    "lengths, message",
    [([2, 3], "longest first"), ([4, 3], "0..3"), ([3.0, 2.0], "integers"), ([3], "2 integers")],
)
def test_running_rows_refuse_lengths_they_cannot_run(lengths, message):
    with pytest.raises(ValueError, match=message):
        RunningRows(2, 3, torch.tensor(lengths))


def test_running_rows_read_backwards_keep_padding_in_place():
    running = RunningRows(2, 4, torch.tensor([4, 2]), reverse=True)
    x = torch.arange(8.0).view(2, 4, 1)  # sequence 0: 0 1 2 3; sequence 1: 4 5 (then padding 6 7)
    rows = running.rows(x)
    assert rows[:, 0].tolist() == [3, 5, 2, 4, 1, 0]  # each sequence from its own last step
    assert torch.equal(running.padded(rows), x * torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0.0]]).unsqueeze(2))
    full = RunningRows(2, 4, reverse=True)
    assert full.rows(x)[:, 0].tolist() == [3, 7, 2, 6, 1, 5, 0, 4] and torch.equal(full.padded(full.rows(x)), x)


@pytest.mark.parametrize("readout, shape", [("every_step", (2, 5, 3)), ("last_step", (2, 3)), ("final_state", (2, 3)), ("mean_max", (2, 3))])
def test_sequence_model_readouts(readout, shape):
    net = SequenceModel(HandLSTM(4, 6, bidirectional=True, batch_first=True), output_size=3, readout=readout)
    assert net(torch.randn(2, 5, 4)).shape == shape


def test_sequence_model_reads_last_real_step_of_padded_sequences():
    torch.manual_seed(0)
    net = SequenceModel(HandLSTM(2, 4, batch_first=True), output_size=1, readout="last_step").double()
    x, lengths = padded_batch([3, 5], features=2)
    batched = net(x, lengths)
    for b, n in enumerate(lengths.tolist()):
        torch.testing.assert_close(batched[b], net(x[b : b + 1, :n])[0], **TOL)


def test_sequence_model_handles_sequence_first_rnn():
    torch.manual_seed(0)
    rnn = nn.LSTM(2, 4, batch_first=False)
    net = SequenceModel(rnn, output_size=1)
    x = torch.randn(3, 6, 2)  # batch-first, as tasks give it
    expected = net.head(rnn(x.transpose(0, 1))[0].transpose(0, 1))
    torch.testing.assert_close(net(x), expected)


def test_bad_constructor_values_are_rejected():
    with pytest.raises(ValueError, match="^backward: expected 'autograd' or 'manual', got 'magic'$"):
        HandLSTM(2, 4, backward="magic")
    with pytest.raises(ValueError, match="readout"):
        SequenceModel(HandLSTM(2, 4), output_size=1, readout="middle")


@pytest.mark.parametrize("bidirectional", [False, True])
def test_manual_backward_matches_torch_through_stacked_layers_and_packed_input(bidirectional, loops):
    reference, manual = twin_lstms(num_layers=2, bidirectional=bidirectional, batch_first=True, backward="manual")
    x = torch.randn(4, 6, 3, dtype=torch.float64)
    expected, got = run_and_backprop(reference, x), run_and_backprop(manual, x)
    assert_same_results(got, expected)
    x, lengths = padded_batch([5, 2, 7, 1])
    packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
    torch.testing.assert_close(manual(packed)[1][0], reference(packed)[1][0], **TOL)


def on_cpu(result):
    """A run_and_backprop result, checked to be on the GPU, moved to the CPU."""
    tensors = [*result[:3], *result[3].values()]
    assert all(t.is_cuda for t in tensors)
    return *(t.cpu() for t in result[:3]), {name: g.cpu() for name, g in result[3].items()}


@needs_cuda
@pytest.mark.parametrize("backward", ["autograd", "manual"])
def test_on_cuda_stacked_bidirectional_with_initial_state_matches_torch_on_the_cpu(backward):
    reference, hand = twin_lstms(num_layers=2, bidirectional=True, batch_first=True, backward=backward)
    x = torch.randn(4, 7, 3, dtype=torch.float64)
    hx = (torch.randn(4, 4, 5, dtype=torch.float64), torch.randn(4, 4, 5, dtype=torch.float64))
    expected = run_and_backprop(reference, x, hx)
    got = run_and_backprop(hand.cuda(), x.cuda(), tuple(s.cuda() for s in hx))
    assert_same_results(on_cpu(got), expected)


@needs_cuda
@pytest.mark.parametrize("backward", ["autograd", "manual"])
def test_on_cuda_packed_input_and_lengths_give_torch_outputs_and_final_states(backward):
    reference, hand = twin_lstms(num_layers=2, bidirectional=True, batch_first=True, backward=backward)
    hand = hand.cuda()
    x, lengths = padded_batch([5, 2, 7, 1])
    expected_out, (expected_h, expected_c) = reference(pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False))
    expected_padded, _ = pad_packed_sequence(expected_out, batch_first=True)
    got_out, (got_h, got_c) = hand(pack_padded_sequence(x.cuda(), lengths, batch_first=True, enforce_sorted=False))
    padded, (padded_h, padded_c) = hand(x.cuda(), lengths=lengths.cuda())  # as the trainer passes them
    for got, expected in [(got_out.data, expected_out.data), (got_h, expected_h), (got_c, expected_c),
                          (padded, expected_padded), (padded_h, expected_h), (padded_c, expected_c)]:
        assert got.is_cuda
        torch.testing.assert_close(got.cpu(), expected, **TOL)


@needs_cuda
@pytest.mark.parametrize("layer", [HandRNN, LayerNormLSTM])
def test_other_cells_on_cuda_give_what_they_give_on_the_cpu(layer):
    def outputs_and_grads(model, x):
        x = x.clone().requires_grad_(True)
        output, state = model(x)
        final = torch.cat(state if isinstance(state, tuple) else [state])  # h_n (and c_n)
        torch.manual_seed(1)
        weights = [torch.randn(t.shape, dtype=t.dtype).to(t.device) for t in (output, final)]
        ((output * weights[0]).sum() + (final * weights[1]).sum()).backward()
        results = (output, final, x.grad, *(p.grad for p in model.parameters()))
        assert all(t.device == x.device for t in results)
        return [t.detach().cpu() for t in results]

    torch.manual_seed(0)
    on_the_cpu = layer(3, 5, num_layers=2, bidirectional=True, batch_first=True, dtype=torch.float64)
    on_the_gpu = layer(3, 5, num_layers=2, bidirectional=True, batch_first=True, dtype=torch.float64).cuda()
    on_the_gpu.load_state_dict(on_the_cpu.state_dict())
    x = torch.randn(4, 7, 3, dtype=torch.float64)
    for got, expected in zip(outputs_and_grads(on_the_gpu, x.cuda()), outputs_and_grads(on_the_cpu, x), strict=True):
        torch.testing.assert_close(got, expected, **TOL)


@pytest.mark.parametrize("layer", ["hand_lstm autograd", "hand_lstm manual", "hand_rnn", "layernorm_lstm"])
def test_running_under_inference_mode_first_leaves_training_unharmed(layer):
    """Evaluating under torch.inference_mode, as one may with nn.LSTM, before any training step:
    what the layers keep from call to call (reused buffers, constants) must not become inference
    tensors, which a training step could then neither write to nor save for its backward pass."""
    with ThreadPoolExecutor(max_workers=1) as pool:  # reused buffers are kept per thread: none yet
        pool.submit(_infer_then_train, layer).result()


def _infer_then_train(layer):
    # sizes that take the CPU's reused buffers and oneDNN's products; hidden 200: no other test's
    torch.manual_seed(0)
    make = {"hand_lstm autograd": HandLSTM, "hand_lstm manual": functools.partial(HandLSTM, backward="manual"),
            "hand_rnn": HandRNN, "layernorm_lstm": LayerNormLSTM}[layer]
    model, x = make(60, 200, batch_first=True), torch.randn(8, 40, 60)
    state = [torch.randn(1, 8, 200) for _ in range(model.state_size)]
    with torch.inference_mode():
        expected = model(x, state[0] if len(state) == 1 else tuple(state))[0].clone()
    for t in (x, *state):
        t.requires_grad_(True)
    output = model(x, state[0] if len(state) == 1 else tuple(state))[0]
    output.sum().backward()
    torch.testing.assert_close(output.detach(), expected)
    grads = [p.grad for p in model.parameters()] + [t.grad for t in (x, *state)]
    assert all(g is not None and not g.is_inference() for g in grads)  # an optimizer may update them in place


def test_training_with_manual_backward_reaches_the_same_adder_accuracy():
    from lstmlab.tasks.adder import AdderTask
    from lstmlab.trainer import Trainer

    task = AdderTask(train_size=3000, test_size=500, eval_bits=[16], eval_size=500)
    fits = {}
    for backward in ("autograd", "manual"):
        torch.manual_seed(0)
        net = SequenceModel(HandLSTM(2, 8, batch_first=True, backward=backward), **task.network_options()).double()
        trainer = Trainer(functools.partial(torch.optim.Adam, lr=0.03), device="cpu", max_epochs=3, batch_size=32,
                          progress=False)
        fits[backward] = trainer.fit(_DoubleNet(net), task)
    assert fits["manual"].metrics["exhaustive_acc"] == fits["autograd"].metrics["exhaustive_acc"] == 1.0
    assert fits["manual"].metrics["test_loss"] == pytest.approx(fits["autograd"].metrics["test_loss"], rel=1e-6)


class _DoubleNet(torch.nn.Module):
    """Runs a float64 network on the task's float32 batches (so both backward passes agree to 1e-6)."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, inputs, lengths=None):
        return self.net(inputs.double(), lengths).float()


@pytest.mark.skipif(not HAS_CPP_COMPILER, reason="torch.compile needs a C++ compiler on the CPU")
def test_hand_lstm_under_torch_compile_matches_torch_in_one_graph():
    """torch.compile traces the autograd loop into one graph (no graph break) and fuses it; the
    outputs, final states and gradients stay nn.LSTM's."""
    reference, hand = twin_lstms(num_layers=2, bidirectional=True, batch_first=True)
    compiled = torch.compile(hand, fullgraph=True)  # fullgraph: a graph break is an error
    x = torch.randn(4, 3, 3, dtype=torch.float64)
    expected, got = run_and_backprop(reference, x), run_and_backprop(compiled, x)
    assert_same_results(got, expected)


def test_manual_backward_under_torch_compile_runs_uncompiled_and_matches_torch():
    """trainer.compile=true with model.backward=manual: the compiler leaves the hand-written
    Function alone (a graph break) instead of failing on it. "aot_eager" runs what the compiler
    traced without generating code, so no C++ compiler is needed."""
    reference, manual = twin_lstms(num_layers=2, bidirectional=True, batch_first=True, backward="manual")
    compiled = torch.compile(manual, backend="aot_eager")
    x = torch.randn(4, 3, 3, dtype=torch.float64)
    expected, got = run_and_backprop(reference, x), run_and_backprop(compiled, x)
    assert_same_results(got, expected)
