"""Bad input, over every config group: one line naming the key or path, exit 2, no result.csv.

The matrix is ``CASES``: one ``Case`` per row. A new task adds its rows there (unknown key,
wrong type, out of range, and for tasks that read files: a missing and an empty data file,
e.g. ``Case("imdb-missing-data", ["task=imdb", "task.data_path={missing}"], "{missing}")``).
The rows run the real entry point in-process (``lstmlab.cli.main``, the console script's
function) to stay fast; one test runs the installed ``lstmlab`` to show it is the same.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from conftest import LAB, SMALL, TINY_ADDER
from test_imdb import write_acl_imdb
from lstmlab import checkpoint, cli

# one epoch: a row which wrongly passes trains in a second or two (and then fails the test)
TINY = ["trainer.max_epochs=1", "trainer.progress=false", "trainer.device=cpu", "trainer.target_metric=null"]
SMALL_IMDB = [f"task.data_path={SMALL}", "task.cache_dir={cache}", "task.download=false", "task.progress=false",
              "task.train_size=64", "task.test_size=16"]


def merged(*overrides: str) -> list[str]:
    """``key=value`` overrides, a later value of a key replacing an earlier one."""
    args = {}
    for item in overrides:
        key, _, value = item.partition("=")
        args[key] = value
    return [f"{k}={v}" for k, v in args.items()]


def adder(*overrides: str) -> list[str]:
    """The tiny adder run (conftest's, for one epoch), with ``overrides`` replacing or adding keys."""
    return merged(*TINY_ADDER, *TINY, *overrides)


def imdb(*overrides: str) -> list[str]:
    """A tiny IMDB run on the real small archive (never downloading), with ``overrides``."""
    return merged(*TINY, "task=imdb", *SMALL_IMDB, *overrides)


@dataclass
class Case:
    id: str
    args: list[str]
    names: str  # what the one line must name: the key, or the path ({placeholders} allowed)


CASES = {
    "task": [
        Case("unknown-option", adder("task=nope"), "task=nope"),
        Case("unknown-key", adder("task.nope=1"), "task.nope"),
        Case("experiment-for-another-task", ["experiment=imdb_cpu", "task=adder"], "Key 'vocab_size' not in 'AdderConf'"),
        Case("wrong-type", adder("task.train_size=many"), "task.train_size"),
        Case("wrong-type-float", adder("task.train_size=1.5"), "task.train_size"),
        Case("zero-size", adder("task.train_size=0"), "task.train_size"),
        Case("bad-choice", adder("task.encoding=hex"), "task.encoding"),
        Case("too-few-bits", adder("task.eval_bits=[1]"), "task.eval_bits"),
        Case("not-a-list", adder("task.eval_bits=16"), "task.eval_bits=16: expected a list"),
        Case("bad-loss", adder("task.loss=hinge"), "task.loss"),
        Case("imdb-missing-archive", imdb("task.data_path={missing}"), "{missing}"),
        Case("imdb-empty-archive", imdb("task.data_path={empty}"), "{empty}"),
        Case("imdb-not-an-archive", imdb("task.data_path={garbage}"), "{garbage}"),
        Case("imdb-missing-glove", imdb("task.glove_path={missing}"), "{missing}"),
        Case("imdb-empty-glove", imdb("task.glove_path={empty}"), "{empty}"),
        Case("imdb-bad-tokenizer", imdb("task.tokenizer=words"), "task.tokenizer"),
        Case("imdb-bad-readout", imdb("task.readout=middle"), "task.readout"),
        Case("imdb-review-without-tokens", imdb("task.data_path={review_without_tokens}"),
             "{review_without_tokens}: review 'test/pos/123_9.txt' has no tokens"),
    ],
    "model": [
        Case("unknown-option", adder("model=gru9"), "model=gru9"),
        Case("unknown-key", adder("model.nope=1"), "model.nope"),
        Case("wrong-type", adder("model.hidden_size=big"), "model.hidden_size=big: expected an integer"),
        Case("zero-hidden", adder("model.hidden_size=0"), "model.hidden_size"),
        Case("zero-layers", adder("model.num_layers=0"), "model.num_layers"),
        Case("dropout-one", adder("model.dropout=1.0"), "model.dropout"),
        Case("bad-backward", adder("model.backward=magic"), "model.backward"),
        Case("torch-unknown-key", adder("model=torch_lstm", "model.backward=manual"), "model.backward"),
        Case("added-unknown-key", adder("+model.hiden_size=8"), "model.hiden_size: no such key"),
    ],
    "trainer": [
        Case("unknown-option", adder("trainer=fast"), "trainer=fast"),
        Case("unknown-key", adder("trainer.nope=1"), "trainer.nope"),
        Case("unknown-optimizer-key", adder("trainer.optimizer.nope=1"), "trainer.optimizer.nope"),
        Case("argument-the-optimizer-lacks", adder("+trainer.optimizer.momentum=0.9"), "trainer.optimizer: "),
        Case("wrong-type", adder("trainer.max_epochs=ten"), "trainer.max_epochs"),
        Case("wrong-type-bool", adder("trainer.shuffle=maybe"), "trainer.shuffle=maybe: expected true or false"),
        Case("not-a-number", adder("trainer.optimizer.lr=fast"), "trainer.optimizer.lr=fast: expected a number"),
        Case("no-such-optimizer", adder("trainer.optimizer._target_=torch.optim.SGDX"),
             "trainer.optimizer._target_=torch.optim.SGDX: no such class or function"),
        Case("zero-epochs", adder("trainer.max_epochs=0"), "trainer.max_epochs"),
        Case("zero-batch", adder("trainer.batch_size=0"), "trainer.batch_size"),
        Case("negative-lr", adder("trainer.optimizer.lr=-1"), "trainer.optimizer.lr"),
        Case("lr-beyond-float32", adder("trainer.optimizer.lr=1e39"), "trainer.optimizer.lr=1e+39: expected"),
        Case("negative-clip", adder("trainer.grad_clip=-1"), "trainer.grad_clip"),
        Case("bad-mode", adder("trainer.mode=up"), "trainer.mode"),
        Case("unknown-monitor", adder("trainer.monitor=test_accuracy"), "trainer.monitor=test_accuracy"),
        Case("bad-device", adder("trainer.device=tpu"), "trainer.device"),
        *([] if torch.cuda.is_available() else [Case("no-gpu", adder("trainer.device=cuda"), "trainer.device=cuda")]),
        Case("resume-missing", adder("trainer.resume={missing}"), "{missing}"),
        Case("resume-empty-file", adder("trainer.resume={empty}"), "{empty}"),
        Case("resume-dir-without-checkpoint", adder("trainer.resume={emptydir}"), "{emptydir}"),
        Case("resume-not-torch", adder("trainer.resume={garbage}"), "{garbage}"),
        Case("resume-truncated", adder("trainer.resume={truncated}"), "{truncated}"),
        Case("resume-newer-format", adder("trainer.resume={newer}"), "{newer}"),
        Case("resume-no-version", adder("trainer.resume={unversioned}"), "{unversioned}"),
        Case("resume-incomplete", adder("trainer.resume={incomplete}"), "{incomplete}"),
        Case("resume-model-pt", adder("trainer.resume={model}"), "{model}"),
        Case("resume-not-weights-only", adder("trainer.resume={unsafe}"), "{unsafe}"),
    ],
    "experiment": [
        Case("unknown-option", adder("experiment=nope"), "experiment=nope"),
    ],
    "top-level": [
        Case("unknown-key", adder("nope=1"), "nope"),
        Case("added-unknown-key", adder("+nope=1"), "nope: no such key"),
        Case("wrong-type-seed", adder("seed=abc"), "seed"),
    ],
    "hydra": [
        Case("unwritable-run-dir", adder("hydra.run.dir={file}/run"), "{file}/run"),
    ],
}

ROWS = [pytest.param(group, case, id=f"{group}-{case.id}") for group, cases in CASES.items() for case in cases]


@pytest.fixture
def files(tmp_path: Path) -> dict[str, str]:
    """Bad files for the {placeholders} of the rows."""
    (tmp_path / "empty.pt").write_bytes(b"")
    (tmp_path / "emptydir").mkdir()
    (tmp_path / "garbage.pt").write_text("not a checkpoint\n")
    (tmp_path / "file").write_text("a file, not a directory\n")
    torch.save({"format": checkpoint.FORMAT, "version": checkpoint.FORMAT_VERSION + 1}, tmp_path / "newer.pt")
    torch.save({"format": checkpoint.FORMAT, "epoch": 3}, tmp_path / "unversioned.pt")
    torch.save({"format": checkpoint.FORMAT, "version": checkpoint.FORMAT_VERSION, "epoch": 3}, tmp_path / "incomplete.pt")
    torch.save({"head.weight": torch.zeros(2, 2)}, tmp_path / "model.pt")
    torch.save({"where": Path("x")}, tmp_path / "unsafe.pt")
    torch.save({"format": checkpoint.FORMAT, "weights": torch.zeros(1000)}, tmp_path / "whole.pt")
    whole = (tmp_path / "whole.pt").read_bytes()
    (tmp_path / "truncated.pt").write_bytes(whole[: len(whole) // 2])
    names = ["empty.pt", "emptydir", "garbage.pt", "file", "newer.pt", "unversioned.pt", "incomplete.pt", "model.pt",
             "unsafe.pt", "truncated.pt"]
    paths = {name.split(".")[0]: str(tmp_path / name) for name in names}
    return paths | {"missing": str(tmp_path / "missing.pt"), "cache": str(tmp_path / "cache"),
                    "review_without_tokens": str(write_acl_imdb(tmp_path / "imdb", {"test/pos/123_9.txt": ""}))}


@pytest.fixture
def in_process(monkeypatch, capfd):
    """Runs ``lstmlab.cli.main`` with argv; returns (exit code, stdout, stderr)."""
    monkeypatch.setenv("HYDRA_FULL_ERROR", "0")  # restored afterwards (main() sets it to 1)
    handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}

    def call(args: list[str]) -> tuple[int, str, str]:
        monkeypatch.setattr(sys, "argv", ["lstmlab", *args])
        try:
            cli.main()
            code = 0
        except SystemExit as exc:
            code = exc.code
        out, err = capfd.readouterr()
        return code, out, err

    yield call
    for signum, handler in handlers.items():
        signal.signal(signum, handler)


@pytest.mark.parametrize("group, case", ROWS)
def test_bad_input_is_one_line_naming_the_key(group, case, tmp_path, files, in_process):
    if f"task.data_path={SMALL}" in case.args and not SMALL.is_file():
        pytest.skip(f"small IMDB subset not found at {SMALL}")
    run_dir = tmp_path / "run"
    args = [arg.format(**files) for arg in case.args]
    if not any(arg.startswith("hydra.run.dir=") for arg in args):
        args.append(f"hydra.run.dir={run_dir}")
    code, out, err = in_process(args)
    lines = err.strip().splitlines()
    assert code == 2, (out, err)
    assert len(lines) == 1 and lines[0].startswith("lstmlab: error: "), err
    assert case.names.format(**files) in lines[0]
    assert "Traceback" not in out + err
    assert not (run_dir / "result.csv").exists()


def test_the_installed_command_reports_the_same_line(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    done = subprocess.run([str(LAB), *adder("model.hidden_size=0"), f"hydra.run.dir={tmp_path}"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 2
    assert done.stderr.strip() == "lstmlab: error: model.hidden_size=0: expected a number >= 1"
    assert not (tmp_path / "result.csv").exists()
    # the run's log says why it stopped (a directory without result.csv could also be a killed run)
    assert (tmp_path / "cli.log").read_text().rstrip().endswith("error: model.hidden_size=0: expected a number >= 1")


def test_hydra_full_error_shows_the_traceback(tmp_path, in_process, monkeypatch):
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    with pytest.raises(Exception, match="model.hidden_size=0"):
        in_process(adder("model.hidden_size=0", f"hydra.run.dir={tmp_path}"))


def test_a_class_whose_module_lacks_a_dependency_names_the_dependency(tmp_path, in_process, monkeypatch):
    (tmp_path / "my_cell.py").write_text("import a_package_nobody_installed\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    code, _, err = in_process(adder("model._target_=my_cell.MyCell", f"hydra.run.dir={tmp_path / 'run'}"))
    assert code == 2
    assert err.strip() == ("lstmlab: error: model._target_=my_cell.MyCell: it imports "
                           "a_package_nobody_installed, which is not installed")
