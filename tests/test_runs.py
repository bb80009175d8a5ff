"""The table of a directory's runs (lstmlab/runs.py): reading overrides back."""

from lstmlab.runs import parse_overrides


def test_parse_overrides():
    assert parse_overrides("model=torch_lstm model.hidden_size=8 +x=1 'task.eval_bits=[16, 32]'") == {
        "model": "torch_lstm", "model.hidden_size": "8", "x": "1", "task.eval_bits": "[16, 32]"}
    assert parse_overrides(float("nan")) == {}
