"""A config's keys as the command line and ``result.csv`` name them (``model.hidden_size``).

Plain dicts only, no Hydra: the checkpoint, the results writer and the sweep tables use it.
"""

from __future__ import annotations

from typing import Any, Mapping


def flatten_config(config: Mapping, prefix: str = "") -> dict[str, Any]:
    """{"model": {"hidden_size": 16}} -> {"model.hidden_size": 16}; lists become strings."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_config(value, prefix=f"{name}."))
        elif isinstance(value, (list, tuple)):
            flat[name] = str(list(value))
        else:
            flat[name] = value
    return flat
