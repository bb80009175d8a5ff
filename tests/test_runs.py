"""The table of a directory's runs (lstmlab/runs.py): reading overrides back."""

from conftest import TINY_ADDER, run_lab
from lstmlab.runs import collect, parse_overrides


def test_parse_overrides():
    assert parse_overrides("model=torch_lstm model.hidden_size=8 +x=1 'task.eval_bits=[16, 32]'") == {
        "model": "torch_lstm", "model.hidden_size": "8", "x": "1", "task.eval_bits": "[16, 32]"}
    assert parse_overrides(float("nan")) == {}


def test_a_runs_row_keeps_its_own_command_after_a_later_one_fails_in_its_directory(tmp_path):
    """Hydra rewrites .hydra/ as each command starts; bad input then stops the later command
    before it writes anything, and the directory's result is still the earlier run's."""
    first = run_lab("model=hand_lstm", *TINY_ADDER, "hydra.run.dir=r1", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    refused = run_lab("model=torch_lstm", "trainer.monitor=bogus", *TINY_ADDER, "hydra.run.dir=r1", cwd=tmp_path)
    assert refused.returncode == 2 and "trainer.monitor" in refused.stderr
    assert "model=torch_lstm" in (tmp_path / "r1" / ".hydra" / "overrides.yaml").read_text()
    (row,) = collect(tmp_path).to_dict("records")
    assert row["status"] == "finished" and row["model._target_"] == "lstmlab.models.HandLSTM"
    assert row["overrides"].startswith("model=hand_lstm task.train_size=600") and "bogus" not in row["overrides"]
    assert "model=hand_lstm" in row["choices"].split()
