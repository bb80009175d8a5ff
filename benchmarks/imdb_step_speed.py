"""Seconds per training step of a bidirectional LSTM (100 -> 128, batch 64) on IMDB-like batches.

Compares torch.nn.LSTM and the hand LSTM on (a) a padded batch of one length (no padding),
(b) a variable-length batch (lengths spread over [T - spread, T]): nn.LSTM on a PackedSequence,
the hand LSTM with lengths (only the rows still running at each step). Also the forward
pass alone (evaluation, no grad).

    .venv/bin/python benchmarks/imdb_step_speed.py [--steps 400] [--spread 200] [--repeat 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from lstmlab.bench import whole_number_at_least
from lstmlab.models import HandLSTM, SequenceModel


def network(kind: str) -> SequenceModel:
    torch.manual_seed(0)
    rnn_class = nn.LSTM if kind == "torch_lstm" else HandLSTM
    rnn = rnn_class(100, 128, batch_first=True, bidirectional=True)
    return SequenceModel(rnn, output_size=1, readout="mean_max", vocab_size=25_002)


def batch(size: int, steps: int, spread: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    lengths = torch.randint(steps - spread, steps + 1, (size,), generator=generator) if spread else torch.full((size,), steps)
    lengths[0] = steps
    ids = torch.randint(2, 25_002, (size, steps), generator=generator)
    ids[torch.arange(steps) >= lengths.unsqueeze(1)] = 0
    return ids, lengths


def train_step(net, ids, lengths) -> None:
    loss = net(ids, lengths).sum()
    loss.backward()


def seconds(fn, repeat: int, clock=time.process_time) -> float:
    """Best of ``repeat`` runs after a warm-up, in CPU seconds of this process (default).

    CPU time, not wall time: on a shared machine it hardly depends on the other processes;
    with one thread it is what the step costs on a quiet machine.
    """
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeat):
        start = clock()
        fn()
        best = min(best, clock() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=whole_number_at_least(1), default=400)
    parser.add_argument("--spread", type=whole_number_at_least(0), default=200, help="lengths drawn in [steps - spread, steps]")
    parser.add_argument("--batch", type=whole_number_at_least(1), default=64)
    parser.add_argument("--repeat", type=whole_number_at_least(1), default=3)
    parser.add_argument("--threads", type=whole_number_at_least(1), default=1)
    parser.add_argument("--models", default="torch_lstm,hand_lstm")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    padded = batch(args.batch, args.steps, 0)
    varied = batch(args.batch, args.steps, args.spread)
    print(f"batch {args.batch}, T={args.steps}, variable lengths in [{args.steps - args.spread}, {args.steps}], "
          f"{args.threads} thread(s); best of {args.repeat}, CPU seconds")
    print(f"{'model':<11} {'train padded':>13} {'train varlen':>13} {'eval padded':>12} {'eval varlen':>12}")
    for kind in args.models.split(","):
        net = network(kind)
        row = [seconds(lambda: train_step(net, *padded), args.repeat),
               seconds(lambda: train_step(net, *varied), args.repeat)]
        with torch.no_grad():
            row += [seconds(lambda: net(*padded), args.repeat), seconds(lambda: net(*varied), args.repeat)]
        print(f"{kind:<11} " + " ".join(f"{v:>12.3f}" for v in row))


if __name__ == "__main__":
    main()
