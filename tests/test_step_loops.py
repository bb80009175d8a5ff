"""The manual backward's loops in C++: where they run, and what happens where they cannot be built.
Their results are checked against autograd, nn.LSTM and gradcheck with the Python loops'
(test_lstm_function.py and test_models.py run those tests down both)."""

import os
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch.utils import cpp_extension

from lstmlab.models import matmul, step_loops
from lstmlab.models.lstm_function import loops_in_cpp, lstm_direction_manual
from lstmlab.models.variable_length import RunningRows


def where_loops_run(batch, steps, hidden, dtype=torch.float32, lengths=None):
    x = torch.zeros(batch, steps, 2, dtype=dtype)
    running = RunningRows(batch, steps, lengths)
    return loops_in_cpp(running.rows(x), torch.zeros(batch, hidden, dtype=dtype), running)


@pytest.fixture
def built(monkeypatch):
    """The compiled loops, with LSTMLAB_STEP_LOOPS unset (the suite may run with it set)."""
    monkeypatch.delenv(step_loops.ENV, raising=False)
    if step_loops.compiled() is None:
        pytest.skip("the C++ step loops cannot be built here (see the warning)")
    return step_loops.compiled()


def test_the_cpp_loops_run_on_the_cpu_when_every_row_runs_every_step(built):
    assert where_loops_run(64, 8, 16) is step_loops.compiled()  # the adder's size
    assert where_loops_run(64, 8, 256) is step_loops.compiled()  # the IMDB size: products through oneDNN
    assert where_loops_run(64, 8, 16, torch.float64) is step_loops.compiled()
    assert where_loops_run(3, 4, 16, lengths=torch.tensor([4, 4, 4])) is step_loops.compiled()
    assert where_loops_run(3, 4, 16, lengths=torch.tensor([4, 2, 1])) is None  # lengths differ
    assert where_loops_run(64, 8, 16, torch.bfloat16) is None
    assert where_loops_run(0, 8, 16) is None


@pytest.mark.skipif(not matmul.ONEDNN, reason="needs torch built with oneDNN")
@pytest.mark.parametrize(
    "features, hidden, min_macs, bias",
    [(48, 4, 2000, True), (1, 12, 2000, True), (48, 12, 0, True), (48, 12, 0, False)],
    ids=["projection_in_onednn", "recurrent_product_in_onednn", "both_in_onednn", "both_in_onednn_no_bias"],
)
def test_the_cpp_loops_give_what_the_python_loops_give_whichever_products_go_through_onednn(
    built, monkeypatch, features, hidden, min_macs, bias
):
    """In float32 each product goes through oneDNN or ATen by its size, the same in both loops."""
    monkeypatch.setattr(matmul, "ONEDNN_MIN_MACS", min_macs)
    monkeypatch.setattr(matmul, "PROJECTION_BLOCK_BYTES", 512)  # the projection 1 or 2 steps at a time (9 steps: 2, 2, 2, 2, 1)
    recurrent = matmul.StepWeight(torch.zeros(4 * hidden, hidden), 4, steps=9)
    _, projection = matmul.ProjectionAhead.blocks_of(torch.zeros(36, features), torch.zeros(4 * hidden, features), [4] * 9)
    assert (projection.onednn, recurrent.onednn) == (features == 48, hidden == 12)
    torch.manual_seed(0)
    inputs = [torch.randn(shape, requires_grad=True) for shape in
              [(4, 9, features), (4, hidden), (4, hidden), (4 * hidden, features), (4 * hidden, hidden), (4 * hidden,), (4 * hidden,)]]
    if not bias:
        inputs[5:] = [None, None]
    upstream = [torch.randn(4, 9, hidden), torch.randn(4, hidden), torch.randn(4, hidden)]

    def pass_with(loops):
        monkeypatch.setenv(step_loops.ENV, loops)
        outputs = lstm_direction_manual(*inputs)
        return list(outputs) + list(torch.autograd.grad(outputs, [t for t in inputs if t is not None], upstream))

    for got, want in zip(pass_with("cpp"), pass_with("python"), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_a_pass_goes_through_the_cpp_loops_forward_and_back_where_they_apply(built, monkeypatch):
    calls = []

    def spy(name):
        real = getattr(built, name)
        monkeypatch.setattr(built, name, lambda *args: calls.append(name) or real(*args))

    spy("run_forward")
    spy("run_backward")
    x, h0, c0 = torch.randn(4, 3, 2, requires_grad=True), torch.zeros(4, 5), torch.zeros(4, 5)
    w_ih, w_hh = torch.randn(20, 2, requires_grad=True), torch.randn(20, 5, requires_grad=True)
    out, _, _ = lstm_direction_manual(x, h0, c0, w_ih, w_hh, None, None)
    out.sum().backward()
    assert calls == ["run_forward", "run_backward"]
    out, _, _ = lstm_direction_manual(x, h0, c0, w_ih, w_hh, None, None, lengths=torch.tensor([3, 3, 2, 1]))
    out.sum().backward()
    assert calls == ["run_forward", "run_backward"]  # with lengths that differ: the Python loops


def test_the_cpp_loops_leave_fake_tensors_to_the_python_loops(built):
    """Tracing (torch.compile's fake tensors) has no data for the C++ loops to read."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode(allow_non_fake_inputs=True):  # the g-row scales are real tensors, kept across calls
        assert where_loops_run(64, 8, 16) is None
        out, h, c = lstm_direction_manual(torch.randn(4, 3, 2), torch.zeros(4, 5), torch.zeros(4, 5),
                                          torch.randn(20, 2), torch.randn(20, 5), None, None)
    assert out.shape == (4, 3, 5) and h.shape == c.shape == (4, 5)


def test_the_environment_turns_them_off_and_a_wrong_value_is_refused(monkeypatch):
    monkeypatch.setenv(step_loops.ENV, "python")
    assert where_loops_run(64, 8, 16) is None
    monkeypatch.setenv(step_loops.ENV, "fortran")
    with pytest.raises(ValueError, match=r"^LSTMLAB_STEP_LOOPS='fortran': expected one of python, cpp, or unset$"):
        where_loops_run(64, 8, 16)


def no_compiler(*args, **kwargs):
    raise RuntimeError("Ninja is required to load C++ extensions")


def test_a_failed_build_warns_once_and_the_python_loops_run(monkeypatch):
    monkeypatch.setattr(step_loops, "_built", {})
    monkeypatch.setattr(cpp_extension, "load", no_compiler)
    monkeypatch.delenv(step_loops.ENV, raising=False)
    x, h0, c0 = torch.randn(4, 3, 2, requires_grad=True), torch.zeros(4, 5), torch.zeros(4, 5)
    w_ih, w_hh = torch.randn(20, 2, requires_grad=True), torch.randn(20, 5, requires_grad=True)
    with pytest.warns(UserWarning, match="C\\+\\+ step loops could not be built, the Python loops run instead: Ninja is required"):
        out, _, _ = lstm_direction_manual(x, h0, c0, w_ih, w_hh, None, None)
    out.sum().backward()
    assert x.grad is not None and w_hh.grad is not None
    with warnings.catch_warnings(record=True) as again:  # the next layer or batch says nothing more
        warnings.simplefilter("always")
        lstm_direction_manual(x, h0, c0, w_ih, w_hh, None, None)
    assert again == []


def test_a_failed_build_is_an_error_when_the_cpp_loops_are_asked_for(monkeypatch):
    monkeypatch.setattr(step_loops, "_built", {})
    monkeypatch.setattr(cpp_extension, "load", no_compiler)
    monkeypatch.setenv(step_loops.ENV, "cpp")
    with pytest.warns(UserWarning), pytest.raises(RuntimeError, match="^LSTMLAB_STEP_LOOPS=cpp, but the C\\+\\+ step loops"):
        where_loops_run(64, 8, 16)


def test_a_build_killed_midway_does_not_keep_the_next_one_waiting(monkeypatch, tmp_path):
    """torch waits for its file "lock" in the build directory to go; a killed build leaves it."""
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    monkeypatch.delenv(step_loops.ENV, raising=False)
    monkeypatch.setattr(step_loops, "_built", {})
    directory = tmp_path / step_loops._module_name()
    directory.mkdir()
    (directory / "lock").touch()
    path_before, seen = os.environ["PATH"], []

    module = SimpleNamespace(onednn_linear_found=lambda: True)

    def load(name, sources, build_directory, **kwargs):
        seen.append((Path(build_directory) / "lock").exists())
        return module

    monkeypatch.setattr(cpp_extension, "load", load)
    assert step_loops.compiled() is module
    assert seen == [False]
    assert os.environ["PATH"] == path_before


@pytest.mark.skipif(not matmul.ONEDNN, reason="needs torch built with oneDNN")
def test_loops_that_cannot_call_this_torchs_onednn_are_not_used(monkeypatch):
    """A torch whose oneDNN linear has another signature: a warning, and the Python loops."""
    monkeypatch.setattr(step_loops, "_built", {})
    monkeypatch.delenv(step_loops.ENV, raising=False)
    monkeypatch.setattr(cpp_extension, "load", lambda *args, **kwargs: SimpleNamespace(onednn_linear_found=lambda: False))
    with pytest.warns(UserWarning, match="Python loops run instead: this torch's oneDNN linear .* has a signature"):
        assert where_loops_run(64, 8, 16) is None
