"""The config tree's keys as dotted names."""

from lstmlab.config_keys import flatten_config


def test_flatten_config_gives_dotted_columns():
    flat = flatten_config({"model": {"hidden_size": 16, "opt": {"lr": 0.1}}, "task": {"bits": [16, 32]}, "seed": 0})
    assert flat == {"model.hidden_size": 16, "model.opt.lr": 0.1, "task.bits": "[16, 32]", "seed": 0}
