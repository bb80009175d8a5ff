"""Page faults per forward+backward pass of nn.LSTM and the hand LSTM, at lstmlab.bench's sizes.

A new CPU tensor of 32 MB or more is memory glibc maps afresh on every call, touched a page
(4 KB) at a time; the hand layers reuse their large buffers (lstmlab/models/scratch.py), and
nn.LSTM maps its workspaces anew on each call. This counts the minor page faults (getrusage)
of each model's pass, after warm-up, with the bench's pass (loss = sum of outputs and states).

    .venv/bin/python benchmarks/page_faults.py [--sizes adder,imdb,large] [--passes 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import resource

import torch
from torch import nn

from lstmlab.bench import SIZES, hand_lstms, train_step, whole_number_at_least


def minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def faults_per_pass(step, passes: int) -> float:
    for _ in range(3):  # warm-up: buffers, oneDNN's weight layouts, the allocator's pools
        step()
    before = minor_faults()
    for _ in range(passes):
        step()
    return (minor_faults() - before) / passes


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="adder,imdb,large", help=f"any of {','.join(SIZES)}")
    parser.add_argument("--passes", type=whole_number_at_least(1), default=5)
    parser.add_argument("--threads", type=whole_number_at_least(1), default=2)
    args = parser.parse_args(argv)
    names = args.sizes.split(",")
    unknown = [name for name in names if name not in SIZES]
    if unknown:
        parser.error(f"--sizes: unknown size(s) {', '.join(unknown)}; expected any of {', '.join(SIZES)}")
    torch.set_num_threads(args.threads)
    print(f"minor page faults per forward+backward pass, {args.threads} thread(s), mean of {args.passes} passes\n")
    print("| size | model | faults | MB touched afresh |")
    print("|---|---|---|---|")
    for name in names:
        batch, steps, inputs, hidden = SIZES[name]
        torch.manual_seed(0)
        reference = nn.LSTM(inputs, hidden, batch_first=True)
        x = torch.randn(batch, steps, inputs, requires_grad=True)
        for label, model in {"nn.LSTM": reference, **hand_lstms(reference, "cpu")}.items():
            faults = faults_per_pass(train_step(model, x), args.passes)
            print(f"| {name} | {label} | {faults:.0f} | {faults * 4096 / 2**20:.1f} |")


if __name__ == "__main__":
    main()
