"""Forward+backward time per batch of the hand-built layers against torch.nn.LSTM.

    python -m lstmlab.bench [--device cpu|cuda] [--threads 2] [--repeat 5] [--sizes adder,imdb,large,variable] [--quick] [--no-compile]

Every model gets the same input and, for the LSTMs, the same weights (nn.LSTM's state_dict
loaded into HandLSTM). Each row is the best of ``--repeat`` timed rounds after warm-up, the
models of a case timed in turn in every round. Where the manual backward runs its loops in C++
(:mod:`lstmlab.models.step_loops`: on the CPU), a row times it with its Python loops too. Cases
of at most COMPILE_MAX_STEPS steps also
time HandLSTM (autograd) under ``torch.compile``, which fuses each step's elementwise gate math
and its derivative into a few C++ kernels (its compile time is printed below the table).
GFLOP/s counts the matmuls only: 2·B·T·G·H·(I+H) forward (G = 4 gates for an LSTM, 1 for
the RNN), ×3 for forward and backward, ×2 when bidirectional. Prints markdown tables.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from .models import HandLSTM, HandRNN, step_loops
from .models.lstm_function import loops_in_cpp
from .models.variable_length import RunningRows

# name: (batch, steps, input, hidden)
SIZES = {"adder": (64, 8, 2, 16), "imdb": (64, 200, 100, 256), "large": (32, 100, 512, 512)}
QUICK_SIZES = {"adder": (4, 3, 2, 4), "imdb": (4, 5, 6, 8), "large": (2, 4, 8, 8)}
# batch, input, hidden, shortest, longest (bidirectional)
VARIABLE = (64, 100, 128, 200, 400)
QUICK_VARIABLE = (4, 6, 8, 3, 7)


@dataclass
class Row:
    case: str
    model: str
    ms: float  # per batch, forward + backward
    steps: int
    flops: float  # forward + backward matmul FLOPs of one batch
    base_ms: float  # the case's first row (nn.LSTM), which this one is compared with

    def cells(self) -> list[str]:
        ratio = f"{self.ms / self.base_ms:.2f}×"
        gflops = self.flops / (self.ms / 1e3) / 1e9
        return [self.case, self.model, f"{self.ms:.2f}", f"{self.ms / self.steps:.3f}", ratio, f"{gflops:.1f}"]


def matmul_flops(batch, steps, inputs, hidden, gates=4, directions=1) -> float:
    return 3 * directions * 2 * batch * steps * gates * hidden * (inputs + hidden)


MIN_SAMPLE_S = 0.02  # calls shorter than this are timed as a loop of calls lasting about this long


def best_ms(fns: dict[str, Callable[[], None]], repeat: int, warmup: int, device) -> dict[str, float]:
    """Each function's fastest time per call in milliseconds.

    The functions are timed in turn, round after round (``repeat`` rounds after ``warmup``
    untimed calls each), so a slow spell of a shared machine falls on all of them alike rather
    than on whichever was running. A call shorter than MIN_SAMPLE_S is timed as a loop of calls.
    """
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def seconds(fn, calls: int) -> float:
        sync()
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        sync()
        return (time.perf_counter() - start) / calls

    calls = {}
    for name, fn in fns.items():
        for _ in range(max(warmup - 1, 0)):
            fn()
        calls[name] = max(1, round(MIN_SAMPLE_S / max(seconds(fn, 1), 1e-6)))
    best = {name: float("inf") for name in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            best[name] = min(best[name], seconds(fn, calls[name]))
    return {name: seconds * 1e3 for name, seconds in best.items()}


def train_step(model: nn.Module, x, **kwargs) -> Callable[[], None]:
    """One forward and backward pass: loss = sum of the outputs and of the final states."""

    def step() -> None:
        model.zero_grad(set_to_none=True)
        output, state = model(x, **kwargs)
        if isinstance(output, PackedSequence):
            output = output.data
        states = state if isinstance(state, tuple) else (state,)
        sum(s.sum() for s in states).add(output.sum()).backward()

    return step


def hand_lstms(reference: nn.LSTM, device) -> dict[str, HandLSTM]:
    """HandLSTM with each backward, carrying the reference's weights."""
    models = {}
    for backward in ("autograd", "manual"):
        hand = HandLSTM(
            reference.input_size,
            reference.hidden_size,
            batch_first=True,
            bidirectional=reference.bidirectional,
            backward=backward,
        )
        hand.load_state_dict(reference.state_dict())
        models[f"hand_lstm ({backward})"] = hand.to(device)
    return models


PYTHON_LOOPS = "hand_lstm (manual), Python loops"


def cpp_loops_apply(x, hidden: int) -> bool:
    """Whether the manual backward runs its loops in C++ for input x (B, T, I) and this hidden size."""
    batch, steps, _ = x.shape
    return loops_in_cpp(x[:, 0], x.new_zeros(batch, hidden), RunningRows(batch, steps)) is not None


def with_python_loops(step: Callable[[], None]) -> Callable[[], None]:
    def run() -> None:
        with step_loops.python_only():
            step()

    return run


COMPILED = "hand_lstm (autograd), torch.compile"
COMPILE_MAX_STEPS = 16  # torch.compile unrolls the loop: longer sequences take minutes to compile


def compiled_hand_lstm(reference: nn.LSTM, device, x, checks: list[str], case: str) -> nn.Module | None:
    """HandLSTM (autograd) with the reference's weights under torch.compile, compiled here by a
    first forward and backward pass, or None if it cannot be compiled (a line in ``checks``,
    naming the case, says why)."""
    hand = hand_lstms(reference, device)["hand_lstm (autograd)"]
    compiled = torch.compile(hand, fullgraph=True)
    start = time.perf_counter()
    try:
        train_step(compiled, x)()
    except Exception as exc:  # no C++ compiler, an unsupported platform
        checks.append(f"{case}, {COMPILED}: not run, torch.compile failed: {str(exc).strip().splitlines()[0]}")
        return None
    checks.append(f"{case}, {COMPILED}: {time.perf_counter() - start:.1f} s to compile (once per shape; cached on disk)")
    return compiled


def fixed_length_rows(name, size, args, device, checks: list[str]) -> Iterator[Row]:
    batch, steps, inputs, hidden = size
    torch.manual_seed(0)
    x = torch.randn(batch, steps, inputs, device=device, requires_grad=True)
    reference = nn.LSTM(inputs, hidden, batch_first=True).to(device)
    lstm_flops = matmul_flops(batch, steps, inputs, hidden)
    models: dict[str, tuple[nn.Module, float]] = {"nn.LSTM": (reference, lstm_flops)}
    models |= {label: (m, lstm_flops) for label, m in hand_lstms(reference, device).items()}
    python_loops_too = cpp_loops_apply(x, hidden)
    if python_loops_too:
        models[PYTHON_LOOPS] = models["hand_lstm (manual)"]
    models["hand_rnn"] = (HandRNN(inputs, hidden, batch_first=True).to(device), lstm_flops / 4)
    case = f"{name} ({batch}×{steps}, {inputs}→{hidden})"
    if args.compile and steps <= COMPILE_MAX_STEPS:
        compiled = compiled_hand_lstm(reference, device, x, checks, case)
        if compiled is not None:
            models[COMPILED] = (compiled, lstm_flops)
    steps_of = {label: train_step(model, x) for label, (model, _) in models.items()}
    if python_loops_too:
        steps_of[PYTHON_LOOPS] = with_python_loops(steps_of[PYTHON_LOOPS])
    times = best_ms(steps_of, args.repeat, args.warmup, device)
    base = times["nn.LSTM"]
    for label, (_, flops) in models.items():
        yield Row(case, label, times[label], steps, flops, base)


def variable_length_rows(size, args, device, checks: list[str]) -> Iterator[Row]:
    """nn.LSTM on a PackedSequence, nn.LSTM on the padded batch, HandLSTM with lengths.

    Appends to ``checks`` how far each HandLSTM's outputs and final states are from the packed run.
    """
    batch, inputs, hidden, shortest, longest = size
    generator = torch.Generator().manual_seed(0)
    lengths = torch.randint(shortest, longest + 1, (batch,), generator=generator)
    lengths[0] = longest
    steps = longest
    x = torch.randn(batch, steps, inputs, generator=generator).to(device).requires_grad_()
    mask = (torch.arange(steps).unsqueeze(0) < lengths.unsqueeze(1)).to(device)
    x_padded = (x * mask.unsqueeze(2)).detach().requires_grad_()
    packed = pack_padded_sequence(x_padded.detach(), lengths, batch_first=True, enforce_sorted=False)
    packed = PackedSequence(packed.data.requires_grad_(), *packed[1:])  # a leaf, as x_padded is
    torch.manual_seed(0)
    reference = nn.LSTM(inputs, hidden, batch_first=True, bidirectional=True).to(device)
    flops = matmul_flops(1, int(lengths.sum()), inputs, hidden, directions=2)  # the useful work
    case = f"variable ({batch}×{shortest}–{longest}, bi {inputs}→{hidden})"

    candidates = [
        ("nn.LSTM, PackedSequence", reference, packed, {}),
        ("nn.LSTM, padded (wrong final states)", reference, x_padded, {}),
    ]
    candidates += [(f"{label}, lengths", m, x_padded, {"lengths": lengths.to(device)}) for label, m in hand_lstms(reference, device).items()]
    fns = {label: train_step(model, data, **kwargs) for label, model, data, kwargs in candidates}
    times = best_ms(fns, args.repeat, args.warmup, device)
    base = times[candidates[0][0]]
    for label, *_ in candidates:
        yield Row(case, label, times[label], steps, flops, base)
    for label, *_ in candidates[2:]:
        checks.append(f"{label}: {base / times[label]:.1f}× as fast as nn.LSTM on the PackedSequence")

    with torch.no_grad():
        out_ref, (h_ref, c_ref) = reference(packed)
        out_ref, _ = pad_packed_sequence(out_ref, batch_first=True, total_length=steps)
        for label, model, _, kwargs in candidates[2:]:
            out, (h_n, c_n) = model(x_padded, **kwargs)
            diff = max((a - b).abs().max().item() for a, b in ((out, out_ref), (h_n, h_ref), (c_n, c_ref)))
            checks.append(f"{label}: max |difference| from nn.LSTM on the PackedSequence (outputs, h_n, c_n) = {diff:.2e}")
        _, (h_pad, _) = reference(x_padded)
        checks.append(f"nn.LSTM padded: max |difference| of h_n from the packed run = {(h_pad - h_ref).abs().max().item():.2e}")


def square_matmul_gflops(device, n: int, repeat: int) -> float:
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    ms = best_ms({"matmul": lambda: a @ b}, max(repeat, 3), 1, device)["matmul"]
    return 2 * n**3 / (ms / 1e3) / 1e9


HEADER = ["case", "model", "ms/batch (fwd+bwd)", "ms/step", "× nn.LSTM", "GFLOP/s"]


def markdown_line(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def whole_number_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse ``type``: the text as an int >= ``minimum``, else a one-line usage error."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise argparse.ArgumentTypeError(f"expected a whole number >= {minimum}, got {text!r}")
        return value

    return parse


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m lstmlab.bench", description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--threads", type=whole_number_at_least(1), default=2, help="torch threads on the CPU")
    parser.add_argument("--repeat", type=whole_number_at_least(1), default=5,
                        help="timed rounds per case (the best is shown)")
    parser.add_argument("--warmup", type=whole_number_at_least(0), default=2, help="untimed batches before timing")
    parser.add_argument("--sizes", default="adder,imdb,large,variable", help="comma-separated: adder, imdb, large, variable")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one repeat: a smoke test")
    parser.add_argument("--no-compile", dest="compile", action="store_false",
                        help=f"skip the torch.compile row (made for cases of at most {COMPILE_MAX_STEPS} steps)")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeat, args.warmup = 1, 1  # two passes: a graph reused across passes would fail
    return args


def full_float32_in_cudnn_rnns() -> None:
    """cuDNN runs nn.LSTM's float32 products in TF32 by default (10-bit mantissas), while plain
    matmuls, and so the hand layers, stay in float32: compare the same arithmetic."""
    if hasattr(torch.backends.cudnn, "rnn"):  # torch >= 2.9
        torch.backends.cudnn.rnn.fp32_precision = "ieee"
    else:
        torch.backends.cudnn.allow_tf32 = False


def main(argv=None) -> None:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("lstmlab.bench: error: --device cuda: no CUDA device is available")
    names = [s.strip() for s in args.sizes.split(",") if s.strip()]
    unknown = [s for s in names if s not in SIZES and s != "variable"]
    if unknown:
        raise SystemExit(f"lstmlab.bench: error: --sizes {','.join(unknown)}: expected adder, imdb, large, variable")
    torch.set_num_threads(args.threads)
    if device.type == "cuda":
        full_float32_in_cudnn_rnns()
    sizes = QUICK_SIZES if args.quick else SIZES

    gflops = square_matmul_gflops(device, 256 if args.quick else 2048, args.repeat)
    where = f"{torch.get_num_threads()} threads" if device.type == "cpu" else f"{torch.cuda.get_device_name(device)}, TF32 off"
    print(f"# lstmlab.bench: torch {torch.__version__}, {device.type} ({where}), best of {args.repeat}")
    print(f"machine: square fp32 matmul {gflops:.1f} GFLOP/s\n")
    print(markdown_line(HEADER))
    print("|" + "---|" * len(HEADER))
    checks: list[str] = []
    for name in names:
        if name == "variable":
            rows = variable_length_rows(QUICK_VARIABLE if args.quick else VARIABLE, args, device, checks)
        else:
            rows = fixed_length_rows(name, sizes[name], args, device, checks)
        for row in rows:
            print(markdown_line(row.cells()), flush=True)
    if checks:
        print("\n" + "\n".join(checks))

if __name__ == "__main__":
    main()
