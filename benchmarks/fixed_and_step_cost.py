"""Where the time of a small LSTM goes: a fixed cost per call and a cost per step.

Times one forward+backward pass (as lstmlab.bench does) of nn.LSTM and HandLSTM (both
backward passes) at the adder's width (batch 64, 2 → 16) for 1, 8 and 32 steps, and fits
time = per_call + steps × per_step by least squares. At this size a pass is overhead, not
arithmetic, and the split says which overhead: what each call costs once, and what each step adds.
A last row, "fewest calls", is a bound: one layer making only the ATen calls a step of the
manual backward makes, with nothing else (:class:`FewestCalls`), checked against nn.LSTM first.

    .venv/bin/python benchmarks/fixed_and_step_cost.py [--threads 2] [--repeat 7]
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

from lstmlab.bench import best_ms, hand_lstms, train_step, whole_number_at_least
from lstmlab.models.lstm_function import _local_derivatives, forward_weights

BATCH, INPUTS, HIDDEN = 64, 2, 16
STEPS = (1, 8, 32)
FEWEST = "fewest calls (bound)"


class FewestCalls(torch.autograd.Function):
    """One LSTM layer making only the ATen calls a step of ``hand_lstm (manual)`` makes (seven
    forward: the product, σ over the four gates, three for −2c_t, σ(−2c_t), h_t; five backward:
    four elementwise and the product), with nothing around them: a batch-first x of fixed length,
    zero initial states, fresh buffers, no checks, no oneDNN routing, no layer loop. It bounds
    what any eager loop of these calls can cost; ``main`` checks it against nn.LSTM first."""

    @staticmethod
    def forward(ctx, x, w_ih, w_hh, b_ih, b_hh):
        batch, steps, _ = x.shape
        hidden = w_hh.shape[1]
        w_ih2, w_hh2, bias = forward_weights(w_ih, w_hh, b_ih, b_hh)  # g rows doubled
        x_rows = x.transpose(0, 1).reshape(steps * batch, -1)
        pre = torch.addmm(bias, x_rows, w_ih2.t()).view(steps, batch, 4 * hidden).unbind(0)  # W x_t + b
        gates = x.new_empty(steps * batch, 4 * hidden)
        h_all, m_all, sig_all = x.new_zeros(3, (steps + 1) * batch, hidden)  # h_t, −2c_t, σ(−2c_t) after t = 0
        a = gates.view(steps, batch, 4 * hidden).unbind(0)
        i, f, s, o = (g.unbind(0) for g in gates.view(steps, batch, 4, hidden).unbind(2))
        h, m, sig = (b.view(steps + 1, batch, hidden).unbind(0) for b in (h_all, m_all, sig_all))
        u = w_hh2.t()
        for t in range(steps):
            torch.sigmoid(pre[t].addmm_(h[t], u), out=a[t])  # i_t, f_t, σ(2a_g), o_t from a_t = W x_t + b + U h_{t-1}
            torch.mul(f[t], m[t], out=m[t + 1]).addcmul_(i[t], s[t], value=-4).add_(i[t], alpha=2)  # −2c_t
            torch.addcmul(o[t], o[t], torch.sigmoid(m[t + 1], out=sig[t + 1]), value=-2, out=h[t + 1])  # h_t
        ctx.save_for_backward(x_rows, w_ih, w_hh, gates, m_all, sig_all, h_all)
        return h_all[batch:].view(steps, batch, hidden).transpose(0, 1), h[steps].clone(), m[steps] * -0.5

    @staticmethod
    def backward(ctx, d_out, d_h_last, d_c_last):
        x_rows, w_ih, w_hh, gates, m_all, sig_all, h_all = ctx.saved_tensors
        rows, batch = gates.shape[0], d_h_last.shape[0]
        steps, hidden = rows // batch, w_hh.shape[1]
        local, dh_dc = torch.empty_like(gates), gates.new_empty(rows, hidden)
        _local_derivatives(gates, m_all[:rows], sig_all[batch:], local, dh_dc)  # ∂c_t/∂a_ifg, ∂h_t/∂a_o, ∂h_t/∂c_t
        d_a = local.view(steps, batch, 4 * hidden).unbind(0)
        d_ifg = local.view(steps, batch, 4, hidden)[:, :, :3].unbind(0)
        d_o, forget = (b.view(steps, batch, 4, hidden)[:, :, k].unbind(0) for b, k in ((local, 3), (gates, 1)))
        dh_dc, d_out = dh_dc.view(steps, batch, hidden).unbind(0), d_out.transpose(0, 1).unbind(0)
        d_h, d_c = d_out[-1] + d_h_last, d_c_last.clone(memory_format=torch.contiguous_format)
        d_c_each_gate = d_c.unsqueeze(1)
        for t in reversed(range(steps)):
            d_o[t].mul_(d_h)  # ∂L/∂a_o
            d_c.addcmul_(d_h, dh_dc[t])  # ∂L/∂c_t
            d_ifg[t].mul_(d_c_each_gate)  # ∂L/∂a_i, ∂L/∂a_f, ∂L/∂a_g
            d_c.mul_(forget[t])  # ∂L/∂c_{t-1} through c_t
            if t:
                d_h = torch.addmm(d_out[t - 1], d_a[t], w_hh)  # ∂L/∂h_{t-1}
        d_x = local.mm(w_ih).view(steps, batch, -1).transpose(0, 1)
        d_bias = local.sum(0)
        return d_x, x_rows.t().mm(local).t(), h_all[:rows].t().mm(local).t(), d_bias, d_bias


class FewestCallsLSTM(nn.Module):
    """nn.LSTM's parameters and return value around :class:`FewestCalls` (one layer, batch-first)."""

    def __init__(self, reference: nn.LSTM) -> None:
        super().__init__()
        self.weights = nn.ParameterList(nn.Parameter(p.detach().clone()) for p in reference.parameters())

    def forward(self, x):
        out, h, c = FewestCalls.apply(x, *self.weights)
        return out, (h.unsqueeze(0), c.unsqueeze(0))


def largest_relative_difference(model: nn.Module, reference: nn.LSTM, x) -> float:
    """The largest difference between the two models' outputs, final states and input and
    parameter gradients: max |difference| / max(1, max |reference value|), relative for the
    tensors that reach hundreds here (the bias gradients), absolute for the others."""
    results = []
    for m in (model, reference):
        x.grad = None
        m.zero_grad(set_to_none=True)
        out, (h, c) = m(x)
        (out.sum() + h.sum() + c.sum()).backward()
        results.append([out, h, c, x.grad, *(p.grad for p in m.parameters())])
    return max(((a - b).abs().max() / b.abs().max().clamp_min(1)).item() for a, b in zip(*results))


def fit_line(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """(intercept, slope) of the least-squares line through the points."""
    mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys)) / sum((x - mean_x) ** 2 for x in xs)
    return mean_y - slope * mean_x, slope


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=whole_number_at_least(1), default=2)
    parser.add_argument("--repeat", type=whole_number_at_least(1), default=7)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    reference = nn.LSTM(INPUTS, HIDDEN, batch_first=True)
    models = {"nn.LSTM": reference, **hand_lstms(reference, torch.device("cpu")), FEWEST: FewestCallsLSTM(reference)}
    micro = {name: [] for name in models}
    for steps in STEPS:
        x = torch.randn(BATCH, steps, INPUTS, requires_grad=True)
        difference = largest_relative_difference(models[FEWEST], reference, x)
        if difference > 1e-5:
            raise SystemExit(f"{FEWEST}: differs from nn.LSTM by {difference:.1e} at {steps} steps, expected at most 1e-5")
        times = best_ms({name: train_step(m, x) for name, m in models.items()}, args.repeat, 3, torch.device("cpu"))
        for name, ms in times.items():
            micro[name].append(ms * 1e3)
    print(f"forward+backward, batch {BATCH}, {INPUTS} → {HIDDEN}, {args.threads} threads, best of {args.repeat}\n")
    adder = STEPS.index(8)  # the adder's length: lstmlab.bench's adder size
    print("| model | " + " | ".join(f"{s} steps (µs)" for s in STEPS) + " | per call (µs) | per step (µs) | 8 steps, × nn.LSTM |")
    print("|---" * (len(STEPS) + 4) + "|")
    for name, ys in micro.items():
        per_call, per_step = fit_line(list(STEPS), ys)
        ratio = ys[adder] / micro["nn.LSTM"][adder]
        print(f"| {name} | " + " | ".join(f"{y:.0f}" for y in ys) + f" | {per_call:.0f} | {per_step:.1f} | {ratio:.2f}× |")


if __name__ == "__main__":
    main()
