"""LayerNormLSTM against a scalar-loop reference written from the equations, lengths, the CLI."""

import math

import pytest
import torch

from conftest import TINY_ADDER, read_result
from lstmlab.models import HandLSTM, LayerNormLSTM
from lstmlab.models.layernorm_lstm import layernorm_lstm_direction

TOL = 1e-10


def layer_norm(values, gain, shift, eps=1e-5):
    """values: a list of floats (one gate's H pre-activations); the textbook formula."""
    mean = sum(values) / len(values)
    var = sum((v - mean) ** 2 for v in values) / len(values)
    return [g * (v - mean) / math.sqrt(var + eps) + s for v, g, s in zip(values, gain, shift)]


def sigmoid(v):
    return 1.0 / (1.0 + math.exp(-v))


def reference_direction(xs, h, c, p):
    """One sequence, one direction, in plain Python floats. xs: list of input vectors."""
    hidden = len(h)
    w_ih, w_hh = p["w_ih"].tolist(), p["w_hh"].tolist()
    bias = (p["b_ih"] + p["b_hh"]).tolist()
    gate_gain, gate_shift = p["gate_w"].tolist(), p["gate_b"].tolist()
    outs = []
    for x in xs:
        pre = [
            sum(w * v for w, v in zip(w_ih[r], x)) + sum(w * v for w, v in zip(w_hh[r], h)) + bias[r]
            for r in range(4 * hidden)
        ]
        normed = []
        for k in range(4):  # i, f, g, o: each gate normalised on its own
            block = slice(k * hidden, (k + 1) * hidden)
            normed.append(layer_norm(pre[block], gate_gain[block], gate_shift[block]))
        i = [sigmoid(v) for v in normed[0]]
        f = [sigmoid(v) for v in normed[1]]
        g = [math.tanh(v) for v in normed[2]]
        o = [sigmoid(v) for v in normed[3]]
        c = [f[j] * c[j] + i[j] * g[j] for j in range(hidden)]
        c_norm = layer_norm(c, p["cell_w"].tolist(), p["cell_b"].tolist())
        h = [o[j] * math.tanh(c_norm[j]) for j in range(hidden)]
        outs.append(h)
    return outs, h, c


def direction_params(model, suffix):
    get = lambda name: getattr(model, name + suffix).detach()  # noqa: E731
    return {
        "w_ih": get("weight_ih"),
        "w_hh": get("weight_hh"),
        "b_ih": get("bias_ih"),
        "b_hh": get("bias_hh"),
        "gate_w": get("ln_gates_weight"),
        "gate_b": get("ln_gates_bias"),
        "cell_w": get("ln_cell_weight"),
        "cell_b": get("ln_cell_bias"),
    }


def randomised_model(**kwargs):
    torch.manual_seed(0)
    model = LayerNormLSTM(3, 4, batch_first=True, **kwargs).double()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.startswith("ln_"):  # gains and shifts away from 1 and 0, so they are tested
                param.add_(0.3 * torch.randn_like(param))
    return model


@pytest.mark.parametrize("bidirectional", [False, True])
def test_equals_scalar_reference_with_variable_lengths(bidirectional):
    model = randomised_model(bidirectional=bidirectional)
    lengths = torch.tensor([5, 2, 4])
    x = torch.randn(3, 5, 3, dtype=torch.float64)
    out, (h_n, c_n) = model(x, lengths=lengths)
    hidden = 4
    for b, n in enumerate(lengths.tolist()):
        seq = x[b, :n].tolist()
        zeros = [0.0] * hidden
        fwd, h_f, c_f = reference_direction(seq, zeros, zeros, direction_params(model, "_l0"))
        expected = torch.tensor(fwd, dtype=torch.float64)
        finals = [(h_f, c_f)]
        if bidirectional:
            bwd, h_b, c_b = reference_direction(seq[::-1], zeros, zeros, direction_params(model, "_l0_reverse"))
            expected = torch.cat([expected, torch.tensor(bwd[::-1], dtype=torch.float64)], dim=1)
            finals.append((h_b, c_b))
        assert torch.allclose(out[b, :n], expected, atol=TOL, rtol=0)
        assert torch.all(out[b, n:] == 0)
        for k, (h, c) in enumerate(finals):
            assert torch.allclose(h_n[k, b], torch.tensor(h, dtype=torch.float64), atol=TOL, rtol=0)
            assert torch.allclose(c_n[k, b], torch.tensor(c, dtype=torch.float64), atol=TOL, rtol=0)


def test_gradients_pass_gradcheck():
    model = randomised_model()
    x = torch.randn(2, 3, 3, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    c0 = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    params = [p.detach().requires_grad_() for p in model._weights(0, 0)]
    lengths = torch.tensor([3, 2])  # the second sequence ends a step early
    assert torch.autograd.gradcheck(lambda *a: layernorm_lstm_direction(*a, lengths=lengths), (x, h0, c0, *params))


def test_every_parameter_gets_a_gradient():
    model = randomised_model(bidirectional=True, num_layers=2)
    out, (h_n, c_n) = model(torch.randn(2, 4, 3, dtype=torch.float64))
    (out.sum() + h_n.sum() + c_n.sum()).backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_normalisation_changes_the_lstm():
    torch.manual_seed(0)
    model = LayerNormLSTM(3, 4, batch_first=True).double()
    norms = {name: p for name, p in model.named_parameters() if name.startswith("ln_")}
    assert len(norms) == 4 and all(torch.all(p == (1 if "_weight" in name else 0)) for name, p in norms.items())
    hand = HandLSTM(3, 4, batch_first=True).double()
    hand.load_state_dict(model.state_dict(), strict=False)
    assert set(hand.state_dict()) < set(model.state_dict())  # the LSTM weights have the same names
    x = torch.randn(2, 5, 3, dtype=torch.float64)
    assert not torch.allclose(model(x)[0], hand(x)[0], atol=1e-3)


def test_cli_trains_layernorm_lstm_on_the_adder(lab):
    done = lab("model=layernorm_lstm", *TINY_ADDER)
    assert done.returncode == 0, done.stderr
    result = read_result(lab.run_dir)
    assert result["model._target_"] == "lstmlab.models.LayerNormLSTM"
    assert result["status"] == "finished"
