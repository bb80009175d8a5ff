"""The config schemas (lstmlab/schema.py) accept exactly what the constructors they describe accept."""

from __future__ import annotations

import pytest

from lstmlab import schema
from lstmlab.errors import LabError
from lstmlab.models import hand_lstm, hand_rnn
from lstmlab.tasks import adder, imdb, text

# (schema, config key, the constructor's module, that module's choices for the key)
CHOICES = [
    (schema.HandLSTMConf, "model.backward", hand_lstm, "BACKWARDS"),
    (schema.HandRNNConf, "model.nonlinearity", hand_rnn, "NONLINEARITIES"),
    (schema.AdderConf, "task.encoding", adder, "ENCODINGS"),
    (schema.AdderConf, "task.loss", adder, "LOSSES"),
    (schema.ImdbConf, "task.tokenizer", text, "TOKENIZERS"),
    (schema.ImdbConf, "task.truncate", text, "TRUNCATIONS"),
    (schema.ImdbConf, "task.readout", imdb, "READOUTS"),
]
choices = pytest.mark.parametrize("conf, key, module, name", CHOICES, ids=[key for _, key, *_ in CHOICES])


def field(key: str) -> str:
    return key.split(".")[1]


@choices
def test_a_choice_added_to_the_constructor_is_accepted_by_the_schema(conf, key, module, name, monkeypatch):
    monkeypatch.setattr(module, name, (*getattr(module, name), "added"))
    conf(**{field(key): "added"})  # no LabError: the schema reads the constructor's list


@choices
def test_a_choice_the_constructor_lacks_is_refused_listing_the_constructors_choices(conf, key, module, name):
    expected = ", ".join(getattr(module, name))
    with pytest.raises(LabError, match=f"^{key}=nope: expected one of {expected}$"):
        conf(**{field(key): "nope"})
