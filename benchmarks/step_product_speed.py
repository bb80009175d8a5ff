"""Microseconds for one step's product h @ Wᵀ (+ W x_t + b) of a recurrent loop, by route.

The hand-built layers send float32 CPU products to oneDNN, with the weight used at every step
reordered once into oneDNN's blocked layout (lstmlab/models/matmul.py); torch.mm would send them
to MKL. This prints both, for the step products of lstmlab.bench's IMDB and large sizes.

    .venv/bin/python benchmarks/step_product_speed.py [--threads 2] [--calls 200]
"""

from __future__ import annotations

import argparse
import time

import torch

from lstmlab.bench import whole_number_at_least
from lstmlab.models.matmul import ONEDNN, StepWeight

# (rows, inner, cols): the forward step product (h @ Uᵀ) and the backward one (∂L/∂a U)
SHAPES = [(64, 256, 1024), (64, 1024, 256), (32, 512, 2048), (32, 2048, 512)]


def microseconds(fn, calls: int) -> float:
    for _ in range(20):
        fn()
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - start) / calls)
    return best * 1e6


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=whole_number_at_least(1), default=2)
    parser.add_argument("--calls", type=whole_number_at_least(1), default=200)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"{args.threads} thread(s), best of 5 loops of {args.calls} calls; oneDNN available: {ONEDNN}")
    print(f"{'rows×inner×cols':>18}  {'torch.addmm (MKL)':>18}  {'oneDNN, reordered':>18}  ratio")
    for rows, inner, cols in SHAPES:
        h, w, other = torch.randn(rows, inner), torch.randn(cols, inner), torch.randn(rows, cols)
        w_t = w.t()
        step = StepWeight(w, rows, steps=100)
        mkl = microseconds(lambda: torch.addmm(other, h, w_t), args.calls)
        dnn = microseconds(lambda: step.step(h, other), args.calls)
        print(f"{f'{rows}×{inner}×{cols}':>18}  {mkl:15.1f} µs  {dnn:15.1f} µs  {mkl / dnn:.2f}×")


if __name__ == "__main__":
    main()
