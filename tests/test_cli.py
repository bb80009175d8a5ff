"""The real `lstmlab` command, end to end: what a user types and what a run leaves behind."""

import sys

import pandas as pd
import pytest
import torch

from conftest import HAS_CPP_COMPILER, TINY_ADDER, evaluate_saved_model, needs_cuda, run_lab
from lstmlab.trainer import resolve_device


def test_adder_run_writes_metrics_result_and_model(lab):
    proc = lab("task=adder", "model=hand_lstm", *TINY_ADDER, "trainer.target_metric=null")
    assert proc.returncode == 0, proc.stderr
    assert f"results in {lab.run_dir}" in proc.stdout
    metrics = pd.read_csv(lab.run_dir / "metrics.csv")
    assert metrics["epoch"].tolist() == [1, 2]
    assert {"train_loss", "test_loss", "test_acc", "exhaustive_acc", "acc_16bit", "acc_32bit"} <= set(metrics.columns)
    result = pd.read_csv(lab.run_dir / "result.csv").iloc[0]
    assert result["model.hidden_size"] == 8 and result["model._target_"] == "lstmlab.models.HandLSTM"
    assert result["status"] == "finished" and result["epochs"] == 2 and result["stop_reason"] == "max_epochs"
    assert result["device"] == str(resolve_device("auto")) and result["params"] > 0 and result["train_seconds"] > 0
    assert result["threads"] == 1  # trainer.num_threads=1, as the run used it
    assert result["test_acc"] == metrics["test_acc"].iloc[-1]
    state = torch.load(lab.run_dir / "model.pt", weights_only=True)
    assert sum(v.numel() for v in state.values()) == result["params"]
    assert "rnn.weight_ih_l0" in state


@pytest.mark.skipif(not HAS_CPP_COMPILER, reason="torch.compile needs a C++ compiler")
def test_compiled_run_trains_and_saves_the_plain_model(lab):
    proc = lab("task=adder", "model=hand_lstm", *TINY_ADDER, "trainer.max_epochs=1", "task.eval_bits=[16]",
               "trainer.compile=true", "trainer.device=cpu")  # the device evaluate_saved_model uses
    assert proc.returncode == 0, proc.stderr
    result = pd.read_csv(lab.run_dir / "result.csv").iloc[0]
    assert result["trainer.compile"] and result["status"] == "finished"
    state = torch.load(lab.run_dir / "model.pt", weights_only=True)
    assert "rnn.weight_ih_l0" in state  # the network's own names, not the compiled wrapper's
    # the compiled run's accuracies are those of the plain model it saved, run uncompiled
    again = evaluate_saved_model(lab.run_dir)
    assert result["exhaustive_acc"] == pytest.approx(again["exhaustive_acc"], abs=1e-3)
    assert result["acc_16bit"] == pytest.approx(again["acc_16bit"], abs=1e-3)


@needs_cuda
def test_manual_backward_trains_on_cuda(lab):
    proc = lab("task=adder", "model=hand_lstm", "model.backward=manual", *TINY_ADDER, "trainer.device=cuda",
               "trainer.target_metric=null")
    assert proc.returncode == 0, proc.stderr
    result = pd.read_csv(lab.run_dir / "result.csv").iloc[0]
    assert result["device"].startswith("cuda") and result["status"] == "finished" and result["epochs"] == 2
    state = torch.load(lab.run_dir / "model.pt", weights_only=True)
    assert all(t.device.type == "cpu" for t in state.values())  # loads on a machine without a GPU
    without_max_epochs = [a for a in TINY_ADDER if not a.startswith("trainer.max_epochs=")]
    resumed = lab("task=adder", "model=hand_lstm", "model.backward=manual", *without_max_epochs, "trainer.max_epochs=3",
                  "trainer.device=cuda", "trainer.target_metric=null", f"trainer.resume={lab.run_dir}")
    assert resumed.returncode == 0, resumed.stderr
    assert pd.read_csv(lab.run_dir / "metrics.csv")["epoch"].tolist() == [1, 2, 3]


def test_torch_lstm_with_overrides_and_reference_experiment(lab):
    proc = lab("experiment=adder_reference", "task.train_size=640", "task.test_size=64", "trainer.max_epochs=1",
               "trainer.progress=false")
    assert proc.returncode == 0, proc.stderr
    result = pd.read_csv(lab.run_dir / "result.csv").iloc[0]
    assert result["model._target_"] == "torch.nn.LSTM"
    assert (result["model.hidden_size"], result["model.num_layers"], result["task.encoding"]) == (32, 2, "parallel")
    assert (result["task.loss"], result["trainer.optimizer.lr"], result["trainer.shuffle"]) == ("mse", 0.001, False)


def test_help_lists_config_groups_and_cfg_prints_resolved_config(tmp_path):
    help_text = run_lab("--help", cwd=tmp_path).stdout
    listed = dict(line.split(": ", 1) for line in help_text.splitlines() if line.split(": ")[0] in
                  ("task", "model", "trainer", "experiment"))
    assert {"adder", "sin_cos", "imdb"} <= set(listed["task"].split(", "))
    assert {"hand_lstm", "torch_lstm", "hand_rnn", "layernorm_lstm"} <= set(listed["model"].split(", "))
    assert {"adder_reference", "imdb_cpu", "imdb_reference"} <= set(listed["experiment"].split(", "))
    assert not any(line.startswith("schema") for line in help_text.splitlines())  # schemas stay internal
    cfg = run_lab("--cfg", "job", "model.hidden_size=64", cwd=tmp_path)
    assert cfg.returncode == 0 and "hidden_size: 64" in cfg.stdout


def test_ctrl_c_while_the_command_loads_is_one_line(monkeypatch, capsys):
    """torch and Hydra take a while to import; a Ctrl-C then gets no traceback."""
    import types

    from lstmlab import console

    class Loading(types.ModuleType):
        def __getattr__(self, name):
            raise KeyboardInterrupt

    monkeypatch.setitem(sys.modules, "lstmlab.cli", Loading("lstmlab.cli"))
    with pytest.raises(SystemExit) as exited:
        console.main()
    assert exited.value.code == 130
    assert capsys.readouterr().err == "lstmlab: interrupted while starting\n"
