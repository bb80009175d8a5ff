"""Where the time of a small LSTM goes: a fixed cost per call and a cost per step.

Times one forward+backward pass (as lstmlab.bench does) of nn.LSTM and HandLSTM (both
backward passes) at the adder's width (batch 64, 2 → 16) for 1, 8 and 32 steps, and fits
time = per_call + steps × per_step by least squares. At this size a pass is overhead, not
arithmetic, and the split says which overhead: what each call costs once, and what each step adds.

    .venv/bin/python benchmarks/fixed_and_step_cost.py [--threads 2] [--repeat 7]
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

from lstmlab.bench import best_ms, hand_lstms, train_step

BATCH, INPUTS, HIDDEN = 64, 2, 16
STEPS = (1, 8, 32)


def fit_line(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """(intercept, slope) of the least-squares line through the points."""
    mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys)) / sum((x - mean_x) ** 2 for x in xs)
    return mean_y - slope * mean_x, slope


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    reference = nn.LSTM(INPUTS, HIDDEN, batch_first=True)
    models = {"nn.LSTM": reference, **hand_lstms(reference, torch.device("cpu"))}
    micro = {name: [] for name in models}
    for steps in STEPS:
        x = torch.randn(BATCH, steps, INPUTS, requires_grad=True)
        times = best_ms({name: train_step(m, x) for name, m in models.items()}, args.repeat, 3, torch.device("cpu"))
        for name, ms in times.items():
            micro[name].append(ms * 1e3)
    print(f"forward+backward, batch {BATCH}, {INPUTS} → {HIDDEN}, {args.threads} threads, best of {args.repeat}\n")
    print("| model | " + " | ".join(f"{s} steps (µs)" for s in STEPS) + " | per call (µs) | per step (µs) |")
    print("|---" * (len(STEPS) + 3) + "|")
    for name, ys in micro.items():
        per_call, per_step = fit_line(list(STEPS), ys)
        print(f"| {name} | " + " | ".join(f"{y:.0f}" for y in ys) + f" | {per_call:.0f} | {per_step:.1f} |")


if __name__ == "__main__":
    main()
