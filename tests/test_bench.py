"""`python -m lstmlab.bench --quick` prints every row of its table (no timing assertions)."""

import pytest
import torch

from lstmlab import bench
from lstmlab.models import step_loops


def test_quick_bench_prints_every_row_and_the_check(capsys):
    threads = torch.get_num_threads()
    try:
        bench.main(["--quick", "--threads", "1", "--no-compile"])
    finally:
        torch.set_num_threads(threads)
    printed = capsys.readouterr().out
    assert "square fp32 matmul" in printed
    rows = [line for line in printed.splitlines() if line.startswith("| ") and not line.startswith("| case")]
    python_loops = [bench.PYTHON_LOOPS] if step_loops.wanted() and step_loops.compiled() else []  # the quick sizes are small
    for size in ("adder", "imdb", "large"):
        models = [r.split(" | ")[1] for r in rows if r.startswith(f"| {size} ")]
        assert models == ["nn.LSTM", "hand_lstm (autograd)", "hand_lstm (manual)", *python_loops, "hand_rnn"]
    variable = [r.split(" | ")[1] for r in rows if r.startswith("| variable")]
    assert variable[:3] == ["nn.LSTM, PackedSequence", "nn.LSTM, padded (wrong final states)", "hand_lstm (autograd), lengths"]
    check = next(line for line in printed.splitlines() if line.startswith("hand_lstm (autograd), lengths: max"))
    assert float(check.rsplit("= ", 1)[1]) < 1e-5  # same outputs and final states as the packed run


def test_short_cases_also_time_the_compiled_hand_lstm(capsys):
    threads = torch.get_num_threads()
    try:
        bench.main(["--quick", "--threads", "1", "--sizes", "adder"])
    finally:
        torch.set_num_threads(threads)
    printed = capsys.readouterr().out
    compiled = [line for line in printed.splitlines() if f", {bench.COMPILED}: " in line]
    assert len(compiled) == 1, printed  # its compile time, or why it could not compile
    assert compiled[0].startswith("adder ("), compiled[0]  # naming the case it was compiled for
    if "torch.compile failed" not in compiled[0]:
        rows = [line.split(" | ")[1] for line in printed.splitlines() if line.startswith("| adder ")]
        assert rows[-1] == bench.COMPILED


def test_the_python_loops_row_turns_the_cpp_loops_off_for_its_own_calls_only(monkeypatch):
    monkeypatch.delenv(step_loops.ENV, raising=False)
    if step_loops.compiled() is None:
        pytest.skip("the C++ step loops cannot be built here (see the warning)")
    x = torch.randn(4, 3, 2)
    inside = []
    bench.with_python_loops(lambda: inside.append(bench.cpp_loops_apply(x, 4)))()
    assert inside == [False]
    assert bench.cpp_loops_apply(x, 4)


def test_unknown_size_is_refused():
    with pytest.raises(SystemExit, match="--sizes huge"):
        bench.main(["--quick", "--sizes", "huge"])


@pytest.mark.parametrize("option, value, expected", [
    ("--threads", "0", ">= 1"), ("--threads", "two", ">= 1"), ("--repeat", "0", ">= 1"), ("--warmup", "-1", ">= 0"),
])
def test_a_count_out_of_range_is_a_usage_error_naming_the_option(option, value, expected, capsys):
    with pytest.raises(SystemExit) as exit_:
        bench.main([option, value, "--quick", "--sizes", "adder", "--no-compile"])  # quick, were it accepted
    err = capsys.readouterr().err
    assert exit_.value.code == 2
    assert err.splitlines()[-1] == (f"python -m lstmlab.bench: error: argument {option}: "
                                    f"expected a whole number {expected}, got '{value}'")
    assert "Traceback" not in err
