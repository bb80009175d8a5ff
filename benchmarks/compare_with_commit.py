"""Time this checkout's hand LSTM against the same model at an earlier commit, in one process.

    .venv/bin/python benchmarks/compare_with_commit.py REV [--sizes imdb,large] [--backward manual,autograd] [--repeat 7]

Takes ``lstmlab/models`` at REV out of git into a temporary directory, imports it under another
name (the package imports its own modules relatively), and times ``nn.LSTM`` and both versions
of HandLSTM with the same weights and input, in turn round after round (``lstmlab.bench.best_ms``):
a slow spell of a shared machine then falls on old and new alike, so a change of a few percent,
which separate runs of ``make bench`` cannot tell from noise, shows.
"""

from __future__ import annotations

import argparse
import importlib
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from torch import nn

from lstmlab import models
from lstmlab.bench import SIZES, best_ms, train_step, whole_number_at_least


def models_at(rev: str, into: Path):
    """The lstmlab.models package as it was at git revision ``rev``, imported as ``models_at_rev``."""
    archive = subprocess.run(["git", "archive", rev, "lstmlab/models"], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    (into / "lstmlab" / "models").rename(into / "models_at_rev")
    sys.path.insert(0, str(into))
    return importlib.import_module("models_at_rev")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("rev")
    parser.add_argument("--sizes", default="imdb,large")
    parser.add_argument("--backward", default="manual,autograd")
    parser.add_argument("--threads", type=whole_number_at_least(1), default=2)
    parser.add_argument("--repeat", type=whole_number_at_least(1), default=7)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        old = models_at(args.rev, Path(tmp))
        print(f"forward+backward ms, best of {args.repeat}, {args.threads} threads; {args.rev} against this checkout\n")
        print("| size | nn.LSTM | backward | at " + args.rev + " | now | now ÷ then |")
        print("|---|---|---|---|---|---|")
        for size in args.sizes.split(","):
            batch, steps, inputs, hidden = SIZES[size]
            torch.manual_seed(0)
            x = torch.randn(batch, steps, inputs, requires_grad=True)
            reference = nn.LSTM(inputs, hidden, batch_first=True)
            fns = {"nn.LSTM": train_step(reference, x)}
            for backward in args.backward.split(","):
                for tag, package in (("then", old), ("now", models)):
                    hand = package.HandLSTM(inputs, hidden, batch_first=True, backward=backward)
                    hand.load_state_dict(reference.state_dict())
                    fns[f"{tag} {backward}"] = train_step(hand, x)
            ms = best_ms(fns, args.repeat, 3, torch.device("cpu"))
            for backward in args.backward.split(","):
                then, now = ms[f"then {backward}"], ms[f"now {backward}"]
                print(f"| {size} | {ms['nn.LSTM']:.2f} | {backward} | {then:.2f} | {now:.2f} | {now / then:.3f} |")


if __name__ == "__main__":
    main()
